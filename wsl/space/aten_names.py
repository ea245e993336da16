"""ATen operators (from ``torch.export``) -> the names of the symmetry rules in :mod:`wsl.space.ops`.

A program captured by ``torch.export`` calls ATen operators (``aten.add.Tensor``,
``aten.view.default``, ``aten._to_copy.default``); the rules are keyed by the
names that ``torch.fx`` sees (``add``, ``view``, ``to``). An operator is
named by its schema name without namespace or overload (``aten::add.Tensor``
-> ``add``; in-place ``add_`` -> ``add``), then :data:`RENAME` maps the
ATen spellings that differ. The argument order of ATen schemas is the one the
rules read (``select(x, dim, index)``, ``slice(x, dim, start, end, step)``,
``mean(x, dims, keepdim)``, ``split(x, size, dim)``, ``linear(x, W, b)``,
``layer_norm(x, shape, W, b)``, ``embedding(W, ids)``, ``addmm(b, x, W)``).
"""

from __future__ import annotations

from typing import Any

#: ATen name -> rule name, where they differ.
RENAME: dict[str, str] = {
    "_to_copy": "to", "to_copy": "to", "alias": "contiguous", "lift_fresh_copy": "clone",
    "_softmax": "softmax", "_log_softmax": "log_softmax", "split_with_sizes": "split",
    "constant_pad_nd": "pad", "min.other": "minimum", "max.other": "maximum",
    "_unsafe_view": "view", "expand_copy": "expand", "view_copy": "view", "permute_copy": "permute",
    "transpose_copy": "transpose", "unsqueeze_copy": "unsqueeze", "squeeze_copy": "squeeze",
    "slice_copy": "slice", "select_copy": "select", "native_dropout": "dropout", "feature_dropout": "dropout",
    "logical_and": "and", "bitwise_and": "and", "logical_or": "or", "bitwise_or": "or", "_weight_norm_interface":
    "_weight_norm", "_native_batch_norm_legit_no_training": "batch_norm",
}

#: ATen operators whose output is a fresh constant, whatever their tensor operands carry.
CONSTANTS = frozenset({"full_like", "zeros_like", "ones_like", "empty_like", "rand_like", "randn_like", "new_ones",
                       "new_zeros", "new_full", "new_empty", "scalar_tensor", "arange", "zeros", "ones", "full"})

#: Of those, the ones whose every element is the same value (constant along every dim).
FILLS = frozenset({"full_like", "zeros_like", "ones_like", "new_ones", "new_zeros", "new_full", "scalar_tensor",
                   "zeros", "ones", "full"})

#: ATen operators that only assert or read metadata (no tensor result to follow).
METADATA = frozenset({"_assert_tensor_metadata", "_assert_scalar", "sym_size", "sym_numel", "sym_stride",
                      "sym_constrain_range", "sym_constrain_range_for_size", "_assert_async"})


def aten_name(target: Any) -> str | None:
    """The rule name of an ATen operator (``None`` if ``target`` is not one)."""
    schema = getattr(target, "_schema", None)
    if schema is None or not str(getattr(schema, "name", "")).startswith("aten::"):
        return None
    base = schema.name.split("::", 1)[1]
    overload = getattr(schema, "overload_name", "")
    if f"{base}.{overload}" in RENAME:
        return RENAME[f"{base}.{overload}"]
    if base.endswith("_") and not base.startswith("_"):
        base = base[:-1]  # in-place variant
    return RENAME.get(base, base)
