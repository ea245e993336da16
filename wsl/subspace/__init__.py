"""Universal subspace analysis: spectra of a zoo's tensors beside honest nulls, bases, compression.

The Python API mirrors ``wsl subspace`` / ``wsl zoo compress``:

* :func:`analyze` -- per-tensor and per-layer spectra beside the init, Marchenko-Pastur and shuffled
  nulls, split-half sharedness, the mode-wise view, with and without alignment (a report dict;
  :func:`write_report` writes ``report.json``, ``summary.md`` and plots);
* :func:`fit` -- a :class:`Basis` (mean + top-k directions per tensor) of a :class:`Stack`;
  :func:`load_basis`; :func:`project` -- a model's coefficients and its reconstruction;
* :func:`compress` -- a zoo stored as basis + coefficients (``wsl.load_zoo`` reads it);
* :func:`open_source` -- a zoo, checkpoints or LoRA adapters as a stack with its nulls.

(``analyze``, ``compress`` and ``write_report`` are imported here eagerly on purpose: they share their
names with their submodules, and a lazy import would leave the submodule, not the function, bound.)
"""

from __future__ import annotations

from collections.abc import Mapping
import torch

from wsl.subspace.analyze import analyze
from wsl.subspace.basis import Basis, fit, load_basis
from wsl.subspace.compress import compress
from wsl.subspace.report import write_report
from wsl.subspace.sources import Source, open_source
from wsl.subspace.stacks import FileStack, ShuffledStack, Stack, TensorStack

__all__ = ["Basis", "FileStack", "ShuffledStack", "Source", "Stack", "TensorStack", "analyze", "compress", "fit",
           "load_basis", "open_source", "project", "write_report"]


def project(state_dict: Mapping[str, torch.Tensor], basis: Basis | str,
            where: str = "model") -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``(coefficients, reconstruction)`` of one model in ``basis`` (a :class:`Basis` or a basis folder).

    The reconstruction carries the model's tensors that the basis does not cover unchanged.
    """
    b = load_basis(basis) if not isinstance(basis, Basis) else basis
    coeffs = b.project(state_dict, where)
    return coeffs, {**dict(state_dict), **b.reconstruct(coeffs)}
