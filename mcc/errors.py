"""The errors mcc raises for anything a user can get wrong.

Every user-facing failure is an :class:`MccError`; the CLI prints its message as one line on
stderr and exits with status 2. Any other exception escaping mcc is a bug. Messages say what
was wrong and what to do about it.
"""

from __future__ import annotations


class MccError(Exception):
    """Base class of every error mcc reports to a user."""


class ModelError(MccError):
    """The model is not something mcc can work on (not an nn.Module, bad example inputs)."""


class TraceError(MccError):
    """Neither torch.fx nor torch.export could capture the model as a graph."""


class OnnxImportError(MccError):
    """An ONNX file is missing, unreadable, invalid, or uses operators mcc cannot import."""


class ExportError(MccError):
    """A graph could not be written out (ONNX export, bad output path)."""


class PipelineError(MccError):
    """A pipeline spec is malformed, names an unknown pass or option, or has a bad value."""


class PipelineSyntaxError(PipelineError):
    """The pipeline text does not parse; the message points at the offending character."""

    def __init__(self, text: str, position: int, expected: str):
        self.text, self.position, self.expected = text, position, expected
        found = repr(text[position]) if position < len(text) else "end of text"
        super().__init__(
            f"pipeline syntax error at character {position + 1}: expected {expected}, found {found}"
            f" in {text!r} (here: {text[:position]!r} <-- {text[position:]!r})"
        )


class PassError(MccError):
    """A pass could not be applied; the message names the pass and, where there is one, the node."""

    def __init__(self, pass_name: str, message: str, node: str | None = None):
        self.pass_name, self.node = pass_name, node
        where = f" at node {node!r}" if node else ""
        super().__init__(f"pass {pass_name!r}{where}: {message}")


class QuantizationError(MccError):
    """A quantized graph cannot run or be calibrated: quantizers not calibrated yet, calibration
    data of the wrong shape or empty, NaN/Inf in an activation (the message names the node)."""


class ReportError(MccError):
    """A report could not be produced (an evaluation function failed or returned a non-number)."""


class AssetError(MccError):
    """A reference model or evaluation data set is missing: the message names the package that
    provides it and the exact command that installs it."""


class BackendError(MccError):
    """A graph cannot be compiled, tuned or run by a backend: an op the backend cannot lower
    (named, with the pass that produced it), a tuning database or an artifact made for another
    target, or an artifact this runtime cannot load."""


class TargetError(BackendError):
    """An unknown compilation target, or one whose instructions this CPU lacks."""
