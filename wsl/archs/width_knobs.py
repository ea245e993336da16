"""The knobs of every width family: which constructor arguments set hidden widths.

A :class:`Knob` is a named path into a builtin description's ``kwargs`` (for
example ``("sizes", 1)`` or ``("config", "intermediate_size")``), its size in
the base, and the smallest size a member may have.

* ``mlp``: every hidden entry of ``sizes``; ``small_cnn``: every entry of
  ``channels``; ``resnet``: ``width`` (stage ``i`` has ``width * 2**i`` planes).
* Transformer ports (``vit_tiny``, ``vit``, ``vit_classifier``, ``bert_layer``,
  ``bert``, ``bert_classifier``): knob ``mlp`` is the feed-forward hidden size
  (one knob per model: the Hugging Face config has one ``intermediate_size``
  shared by every layer, so every member stays a valid HF-shaped config), and
  the attention is resized, as configured by ``heads``:

  - ``"count"`` -- knob ``heads``: whole heads (``H' = max(1, floor(r H + 1/2))``),
    each keeping the base's ``head_dim`` units;
  - ``"dim"`` -- knob ``head_dim``: units inside every head
    (``d' = max(2, floor(r d + 1/2))``; one unit per head would merge the
    within-head groups into the head group, a different symmetry), heads kept;
  - ``"both"`` -- both knobs.

  The residual width (``hidden``/``hidden_size``) is **fixed**: it is one
  group tied through every block, the embeddings (patch projection output,
  ``cls_token``, position embeddings), every LayerNorm (which normalises over
  it) and the classifier input, so it is the network's interface rather than
  a hidden width; only ``heads * head_dim`` (query/key/value outputs and the
  attention output projection's input) and the MLP hidden size change. The
  ports' ``head_dim`` (a wsl extension; HF derives it as ``hidden // heads``)
  is written explicitly into every member.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from wsl.errors import ArchitectureError

HEAD_MODES = ("count", "dim", "both")
"""Values of the ``heads`` option of a transformer width family."""

Path = tuple[str | int, ...]


@dataclass(frozen=True)
class Knob:
    """A hidden width of a family: its name, where it lives in ``kwargs``, base size and minimum."""

    name: str
    path: Path
    base: int
    minimum: int = 1


def get_path(kw: Any, path: Path) -> Any:
    """``kw[path[0]][path[1]]...``."""
    for p in path:
        kw = kw[p]
    return kw


def set_path(kw: dict[str, Any], path: Path, value: Any) -> None:
    """Set ``kw[path...] = value`` (lists are copied, so a shared base description is never edited)."""
    node: Any = kw
    for p in path[:-1]:
        child = node[p]
        child = list(child) if isinstance(child, (list, tuple)) else dict(child)
        node[p] = child
        node = child
    node[path[-1]] = value


def _list_knobs(key: str, start: int, stop_from_end: int, kw: dict[str, Any]) -> list[Knob]:
    vals = list(kw[key])
    return [Knob(f"{key}[{i}]", (key, i), int(vals[i])) for i in range(start, len(vals) - stop_from_end)]


# builtin name -> (prefix of the config in kwargs, kwarg names of (residual, heads, head_dim, mlp))
_TRANSFORMERS: dict[str, tuple[Path, tuple[str, str, str, str]]] = {
    "vit_tiny": ((), ("hidden", "heads", "head_dim", "mlp")),
    "bert_layer": ((), ("hidden", "heads", "head_dim", "intermediate")),
    **{n: (("config",), ("hidden_size", "num_attention_heads", "head_dim", "intermediate_size"))
       for n in ("vit", "vit_classifier", "bert", "bert_classifier")},
}


def _config_defaults(name: str) -> dict[str, Any]:
    """Constructor defaults of the port's kwargs (config dataclass fields, or the factory's arguments)."""
    import dataclasses
    import inspect

    from wsl.archs.bert import BertConfig, bert_layer
    from wsl.archs.vit import ViTConfig, vit_tiny

    if name in ("vit_tiny", "bert_layer"):
        fn = vit_tiny if name == "vit_tiny" else bert_layer
        return {k: p.default for k, p in inspect.signature(fn).parameters.items()}
    cls = ViTConfig if name.startswith("vit") else BertConfig
    return {f.name: f.default for f in dataclasses.fields(cls)}


def transformer_knobs(name: str, kw: dict[str, Any], heads: str) -> tuple[list[Knob], dict[str, Any]]:
    """Knobs of a transformer port and the kwargs with ``head_dim`` written explicitly."""
    if heads not in HEAD_MODES:
        raise ArchitectureError(f"WidthFamily({name}): heads must be one of {', '.join(HEAD_MODES)}, got {heads!r}")
    prefix, (k_res, k_heads, k_dim, k_mlp) = _TRANSFORMERS[name]
    kw = dict(kw)
    cfg = dict(kw.get(prefix[0]) or {}) if prefix else kw
    defaults = _config_defaults(name)
    val = {k: cfg.get(k, defaults.get(k)) for k in (k_res, k_heads, k_dim, k_mlp)}
    for k in (k_res, k_heads, k_mlp):
        if not isinstance(val[k], int) or isinstance(val[k], bool) or val[k] < 1:
            raise ArchitectureError(f"WidthFamily({name}): {k} must be a positive int, got {val[k]!r}")
    if val[k_dim] is None:
        if val[k_res] % val[k_heads]:
            raise ArchitectureError(f"WidthFamily({name}): {k_res} {val[k_res]} is not a multiple of "
                                    f"{k_heads} {val[k_heads]}; give head_dim")
        val[k_dim] = val[k_res] // val[k_heads]
    cfg[k_dim] = int(val[k_dim])
    if prefix:
        kw[prefix[0]] = cfg
    knobs = [Knob("mlp", (*prefix, k_mlp), val[k_mlp])]
    if heads in ("count", "both"):
        knobs.append(Knob("heads", (*prefix, k_heads), val[k_heads]))
    if heads in ("dim", "both"):
        if val[k_dim] < 2:
            raise ArchitectureError(f"WidthFamily({name}): heads='{heads}' needs head_dim >= 2, got {val[k_dim]}; "
                                    "use heads='count'")
        knobs.append(Knob("head_dim", (*prefix, k_dim), val[k_dim], minimum=2))
    return knobs, kw


def family_knobs(name: str, kw: dict[str, Any], heads: str = "count") -> tuple[list[Knob], dict[str, Any]]:
    """``(knobs, kwargs)`` of builtin ``name`` (kwargs normalised: explicit ``head_dim`` for transformers)."""
    if name == "mlp":
        return _list_knobs("sizes", 1, 1, kw), kw
    if name == "small_cnn":
        return _list_knobs("channels", 0, 0, kw), kw
    if name == "resnet":
        return [Knob("width", ("width",), int(kw["width"]))], kw
    if name in _TRANSFORMERS:
        return transformer_knobs(name, kw, heads)
    raise ArchitectureError(f"WidthFamily: architecture {name!r} has no width family; supported: {', '.join(supported())}")


def supported() -> tuple[str, ...]:
    """Builtin architecture names that have a width family."""
    return ("mlp", "small_cnn", "resnet", *_TRANSFORMERS)
