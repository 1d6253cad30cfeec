"""all-MiniLM-L6-v2 loads offline, reproduces its Lee-corpus correlation, and traces."""

import copy
from collections import Counter

import pytest
import torch

import mcc
from mcc.zoo import evaluate_minilm, lee_corpus, minilm, resolve_evaluator
from mcc.zoo.evaluators import lee_pearson, lee_tokens, sentence_embeddings
from mcc.zoo.minilm import max_seq_length, tokenize

PUBLISHED_PEARSON = 0.656  # the float model on the Lee corpus (issue 3)


@pytest.fixture(scope="module")
def bundle():
    return minilm()


@pytest.fixture(scope="module")
def embeddings(bundle):
    return sentence_embeddings(bundle.model)


def test_float_model_matches_the_published_correlation(bundle, embeddings):
    assert sum(p.numel() for p in bundle.model.parameters()) == 22_565_376  # without the pooler
    assert embeddings.shape == (50, 384)
    assert torch.allclose(embeddings.norm(dim=1), torch.ones(50), atol=1e-5)
    assert lee_pearson(embeddings) == pytest.approx(PUBLISHED_PEARSON, abs=0.01)
    result = evaluate_minilm(bundle.model, reference=embeddings)
    assert result["pearson"] == pytest.approx(lee_pearson(embeddings), abs=1e-12)
    assert result["cosine"] == pytest.approx(1.0, abs=1e-6)


def test_documents_fit_the_padded_length_and_padding_is_masked(bundle):
    ids, mask = lee_tokens()
    assert ids.shape == mask.shape == (50, 160)
    assert max_seq_length() == 256
    assert mask.sum(1).max().item() == 154  # the longest document: nothing is truncated
    assert (mask[:, -1] == 0).all()
    document = lee_corpus().documents[0]
    short = tokenize(bundle.tokenizer, [document], int(mask[0].sum()))
    with torch.no_grad():
        padded = bundle.model(ids[:1], mask[:1])
        unpadded = bundle.model(*short)
    assert torch.allclose(padded, unpadded, atol=1e-5)


def test_torch_export_captures_it_and_the_evaluator_scores_the_graph(embeddings):
    evaluator = resolve_evaluator("minilm")
    assert evaluator.metric_name == "Lee Pearson r"
    inputs = evaluator.example_inputs()
    assert [tuple(t.shape) for t in inputs] == [(1, 160), (1, 160)]
    graph = mcc.trace(evaluator.model(), inputs)
    assert graph.source == "torch.export"  # torch.fx cannot trace transformers' BERT
    linears = Counter(type(m).__name__ for _, m in graph.call_modules())["Linear"]
    assert linears == 36  # 6 layers × (query, key, value, output, 2 feed-forward)
    assert evaluator(graph) == pytest.approx(lee_pearson(embeddings), abs=1e-5)


def test_a_worse_encoder_scores_lower(bundle, embeddings):
    """Zeroing the last layer's feed-forward output must lower both numbers."""
    model = copy.deepcopy(bundle.model)
    with torch.no_grad():
        model.bert.encoder.layer[-1].output.dense.weight.zero_()
    result = evaluate_minilm(model, reference=embeddings)
    assert result["cosine"] < 0.99
    assert result["pearson"] < lee_pearson(embeddings)
