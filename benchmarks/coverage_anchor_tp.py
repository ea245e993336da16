"""One coverage family through Torch-Pruning's DepGraph, run as a child process of ``coverage_anchor.py``.

Never imported by ``wsl``: this file imports ``torch_pruning`` (found on ``PYTHONPATH``, installed with
``pip install --target DIR torch-pruning``) and prints one JSON line with the result of one family:

* **prune**: ``tp.pruner.MetaPruner`` with ``MagnitudeImportance(p=2)``, ``pruning_ratio=0.25``, local
  ranking, the layer whose output *is* the network's output ignored (classifier, LM head, output
  projection), attention projections registered in ``num_heads`` with ``prune_num_heads=True,
  prune_head_dims=False, head_pruning_ratio=0.25`` (the setting of TP's own LLM example, which keeps
  the head dimension and therefore RoPE intact), then the head counts stored on the attention module
  updated as TP's examples do after pruning; the pruned network is run on the example input.
* **permute**: TP's groups (``DG.get_all_groups`` with the same ignored layers, attention groups re-rooted
  as the pruner does) are permuted instead of pruned. Each group's root index space is permuted by a
  random permutation that respects what TP prunes together (channel groups: one permutation of the
  positions, the same in every channel group; attention groups: whole heads, within a key/value group
  under GQA). Each coupled item ``(dep, idxs)`` maps root indices to target indices
  (``item.root_idxs`` -> ``item.idxs``); the target permutation ``tau`` sends the k-th target index of root
  index ``r`` to the k-th target index of ``p(r)``, and is applied to exactly the tensor slices that TP's
  pruning function for that layer kind would cut. Each group alone is checked first: if it only permutes
  the network's output channels it is set aside (an output axis, not a hidden symmetry); then every other
  group is permuted at once, with two seeds, and the max relative output error is reported (float64).
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time
import traceback
from typing import Any

import torch
from torch import nn

import coverage_anchor_common as common  # noqa: E402 (this directory)

HEAD_ATTRS = ("num_heads", "num_attention_heads", "n_heads", "n_head")
Q, K, V = ("q_proj", "query", "q", "q_lin"), ("k_proj", "key", "k", "k_lin"), ("v_proj", "value", "v", "v_lin")
FUSED = ("qkv", "qkv_proj")


class Impractical(Exception):
    """A layer kind or index mapping that this permutation check does not know how to permute."""


# ------------------------------------------------------------------------------------------- configuration
def output_layers(model: nn.Module, x: Any) -> list[nn.Module]:
    """Linear/conv layers whose output tensor is the network's (first) output: classifier or LM head."""
    seen: list[tuple[nn.Module, torch.Tensor]] = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append((m, o)) if isinstance(o, torch.Tensor) else None)
             for m in model.modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))]
    try:
        out = common.call(model, x)
    finally:
        for h in hooks:
            h.remove()
    return [m for m, o in seen if o.data_ptr() == out.data_ptr() and o.shape == out.shape]


def _child(m: nn.Module, names: tuple[str, ...]) -> nn.Linear | None:
    for n in names:
        c = getattr(m, n, None)
        if isinstance(c, nn.Linear):
            return c
    return None


def attention_heads(model: nn.Module) -> list[dict[str, Any]]:
    """Attention modules with q/k/v (or fused qkv) ``nn.Linear`` children and a known head size."""
    found = []
    for m in model.modules():
        q, k, v, fused = _child(m, Q), _child(m, K), _child(m, V), _child(m, FUSED)
        heads = next((getattr(m, a) for a in HEAD_ATTRS if isinstance(getattr(m, a, None), int)), None)
        hd = next((getattr(m, a) for a in ("head_dim", "attention_head_size", "key_value_proj_dim", "d_head")
                   if isinstance(getattr(m, a, None), int)), None)
        if q is not None and k is not None and v is not None:
            hd = hd or (q.out_features // heads if heads else None)
            if hd:
                found.append(dict(module=m, q=q, projs={q: q.out_features // hd, k: k.out_features // hd,
                                                        v: v.out_features // hd}, head_dim=hd))
        elif fused is not None and heads:
            found.append(dict(module=m, q=fused, projs={fused: heads}, head_dim=fused.out_features // (3 * heads)))
    return found


def update_heads(attn: list[dict[str, Any]], pruner: Any) -> None:
    """After head pruning, store the new head counts on the attention modules (as TP's examples do)."""
    for a in attn:
        m, old = a["module"], a["projs"][a["q"]]
        new = pruner.num_heads[a["q"]]
        for name in HEAD_ATTRS:
            if getattr(m, name, None) == old:
                setattr(m, name, new)
        for name in ("all_head_size", "inner_dim"):
            if getattr(m, name, None) == old * a["head_dim"]:
                setattr(m, name, new * a["head_dim"])
        kv = [pruner.num_heads[p] for p in a["projs"] if p is not a["q"]]
        if isinstance(getattr(m, "num_key_value_groups", None), int) and kv and kv[0]:
            m.num_key_value_groups = new // kv[0]


def make_pruner(tp: Any, model: nn.Module, x: Any, ignored: list[nn.Module], attn: list[dict[str, Any]]) -> Any:
    num_heads = {p: h for a in attn for p, h in a["projs"].items()}
    return tp.pruner.MetaPruner(
        model, list(x) if isinstance(x, tuple) else x, importance=tp.importance.MagnitudeImportance(p=2),
        pruning_ratio=0.25, ignored_layers=ignored, num_heads=num_heads, prune_num_heads=bool(num_heads),
        prune_head_dims=not num_heads, head_pruning_ratio=0.25 if num_heads else 0.0,
        output_transform=common.all_tensors)


# ------------------------------------------------------------------------------------------- permutation
def root_permutation(pruner: Any, group: Any, n: int, gen: torch.Generator) -> torch.Tensor:
    """A random permutation of the group's root indices that keeps what TP prunes together together."""
    is_attn, qkv = pruner._is_atten_group(group)
    if is_attn and pruner.num_heads:
        heads = max(pruner.num_heads[m] for m in qkv)
        kv = min(pruner.num_heads[m] for m in qkv)
        hd, per = n // heads, heads // kv
        order = torch.cat([torch.randperm(per, generator=gen) + g * per for g in range(kv)])
        return (order[:, None] * hd + torch.arange(hd)).reshape(-1)
    c = pruner._get_channel_groups(group)
    s = n // c
    sigma = torch.randperm(s, generator=gen)
    return (torch.arange(c)[:, None] * s + sigma).reshape(-1)


def target_permutation(idxs: list[int], roots: list[int], p: torch.Tensor, size: int) -> torch.Tensor:
    if idxs and max(idxs) >= size:
        raise Impractical(f"TP maps {len(idxs)} indices (up to {max(idxs)}) onto an axis of {size} entries")
    by_root: dict[int, list[int]] = {}
    for t, r in zip(idxs, roots):
        by_root.setdefault(int(r), []).append(int(t))
    tau = torch.arange(size)
    for r, ts in by_root.items():
        src = by_root.get(int(p[r]))
        if src is None or len(src) != len(ts):
            raise Impractical(f"root index {r} maps to {len(ts)} target indices, its image to "
                              f"{0 if src is None else len(src)}")
        for a, b in zip(sorted(ts), sorted(src)):
            tau[a] = b
    return tau


_DONE: set[tuple[int, int]] = set()  # (tensor, dim) already permuted in the current group: tied weights once


def _perm_(t: torch.Tensor | None, dim: int, tau: torch.Tensor, blocks: int = 1) -> None:
    if t is None or (id(t), dim % t.dim()) in _DONE:
        return
    _DONE.add((id(t), dim % t.dim()))
    n = tau.numel()
    full = torch.cat([tau + b * n for b in range(blocks)]) if blocks > 1 else tau
    if t.shape[dim] != full.numel():
        raise Impractical(f"tensor of shape {tuple(t.shape)} has {t.shape[dim]} entries along dim {dim}, "
                          f"the permutation {full.numel()}")
    t.data = t.data.index_select(dim, full)


def apply(dep: Any, is_out: bool, tau: torch.Tensor) -> None:
    """Permute the slices that TP's pruning function for ``dep`` would cut (torch_pruning/pruner/function.py)."""
    m, kind = dep.target.module, type(dep.handler.__self__).__name__
    if isinstance(m, nn.Parameter):
        return _perm_(m, dep.target.pruning_dim, tau)
    if kind == "LinearPruner" and not is_out:
        return _perm_(m.weight, 1, tau)
    if kind in ("LinearPruner", "DepthwiseConvPruner") or (kind == "ConvPruner" and is_out):
        _perm_(m.weight, 1 if getattr(m, "transposed", False) and kind == "ConvPruner" else 0, tau)
        return _perm_(m.bias, 0, tau)
    if kind == "ConvPruner":
        if m.groups > 1:  # the weight holds in/groups input channels, shared by every group
            blocks = tau.reshape(m.groups, -1)
            s = blocks.shape[1]
            offsets = torch.arange(m.groups)[:, None] * s
            if not ((blocks // s) * s == offsets).all() or not (blocks - offsets == blocks[:1]).all():
                raise Impractical("grouped conv input permutation that moves channels across its groups or "
                                  "differently within them")
            tau = blocks[0]
        return _perm_(m.weight, 0 if m.transposed else 1, tau)
    if kind in ("BatchnormPruner", "GroupNormPruner", "InstanceNormPruner"):
        for name in ("weight", "bias", "running_mean", "running_var"):
            _perm_(getattr(m, name, None), 0, tau)
        return None
    if kind == "LayernormPruner":
        _perm_(m.weight, dep.target.pruning_dim, tau)
        return _perm_(m.bias, dep.target.pruning_dim, tau)
    if kind == "PReLUPruner":
        return None if m.num_parameters == 1 else _perm_(m.weight, 0, tau)
    if kind == "EmbeddingPruner":
        return _perm_(m.weight, 1, tau)
    if kind == "MultiheadAttentionPruner":
        for name in ("q_proj_weight", "k_proj_weight", "v_proj_weight"):
            _perm_(getattr(m, name), 0, tau)
        _perm_(m.in_proj_weight, 0, tau, blocks=3)
        _perm_(m.in_proj_weight, 1, tau)
        _perm_(m.in_proj_bias, 0, tau, blocks=3)
        _perm_(m.bias_k, 2, tau)
        _perm_(m.bias_v, 2, tau)
        for d in (0, 1):
            _perm_(m.out_proj.weight, d, tau)
        return _perm_(m.out_proj.bias, 0, tau)
    raise Impractical(f"no permutation rule for TP's {kind} on {type(m).__name__}")


def _size(pruner: Any, dep: Any, is_out: bool) -> int:
    m = dep.target.module
    if isinstance(m, nn.Parameter):
        return m.shape[dep.target.pruning_dim]
    return pruner.DG.get_out_channels(m) if is_out else pruner.DG.get_in_channels(m)


def permute_group(pruner: Any, group: Any, gen: torch.Generator) -> None:
    n = len(group[0].root_idxs)
    p = root_permutation(pruner, group, n, gen)
    plans = []
    dummy = sys.modules["torch_pruning.ops"].DummyPruner  # functional ops (add, cat, reshape...): no tensor
    for item in group:
        if isinstance(item.dep.handler.__self__, dummy):
            continue
        is_out = pruner.DG.is_out_channel_pruning_fn(item.dep.handler)
        size = _size(pruner, item.dep, is_out)
        if size is None:
            raise Impractical(f"TP reports no channel count for {type(item.dep.target.module).__name__}")
        plans.append((item.dep, is_out, target_permutation(item.idxs, item.root_idxs, p, size)))
    _DONE.clear()
    for dep, is_out, tau in plans:  # all permutations computed before any tensor moves
        apply(dep, is_out, tau)


def tp_groups(pruner: Any) -> list[Any]:
    out = []
    for g in pruner.DG.get_all_groups(ignored_layers=pruner.ignored_layers, root_module_types=pruner.root_module_types):
        if pruner._is_atten_group(g)[0]:
            g = pruner._downstream_node_as_root_if_attention(g)
            if g is None:
                continue
        out.append(g)
    return out


def _fresh(tp: Any, model: nn.Module, x: Any, attn_of: Any) -> tuple[nn.Module, Any, list[Any]]:
    m = copy.deepcopy(model)
    pruner = make_pruner(tp, m, x, output_layers(m, x), attn_of(m))
    return m, pruner, tp_groups(pruner)


def permutation_check(tp: Any, model: nn.Module, x: Any) -> dict[str, Any]:
    ref = common.call(model, x)
    _, _, groups = _fresh(tp, model, x, attention_heads)
    hidden, outputs, broken, skipped = [], 0, 0, []
    for i in range(len(groups)):  # each group alone, on a fresh copy (the groups hold that copy's modules)
        m, pruner, gs = _fresh(tp, model, x, attention_heads)
        try:
            permute_group(pruner, gs[i], torch.Generator().manual_seed(100 + i))
        except Impractical as e:
            skipped.append(common.one_line(e))
            continue
        out = common.call(m, x)
        if out.shape == ref.shape and common.rel_err(out, ref) < 1e-9:
            hidden.append(i)
        elif common.permutes_output(out, ref):
            outputs += 1
        else:
            hidden.append(i)
            broken += 1
    errs = []
    for seed in (1, 2):
        m, pruner, gs = _fresh(tp, model, x, attention_heads)
        gen = torch.Generator().manual_seed(seed)
        for i in hidden:
            permute_group(pruner, gs[i], gen)
        errs.append(common.rel_err(common.call(m, x), ref))
    worst = max(errs) if hidden else math.nan
    return dict(perm_groups=len(groups), perm_output=outputs, perm_broken=broken, perm_skipped=skipped,
                perm_err=worst)


# ------------------------------------------------------------------------------------------- one family
def run(name: str) -> dict[str, Any]:
    import torch_pruning as tp

    fam = common.family(name)
    model, x = common.build(fam)
    row: dict[str, Any] = {"family": name, "tp_version": getattr(tp, "__version__", "?")}
    pruned = copy.deepcopy(model)
    t0 = time.perf_counter()
    try:
        attn = attention_heads(pruned)
        pruner = make_pruner(tp, pruned, x, output_layers(pruned, x), attn)
        row["groups"] = len(tp_groups(pruner))
        row["heads_knob"] = len(attn)
    except Exception as e:  # noqa: BLE001 - TP refusing a model is a result, not a crash
        return {**row, "tp": "refused at build", "why": common.one_line(e), "tp_s": time.perf_counter() - t0}
    try:
        before = sum(p.numel() for p in pruned.parameters())
        pruner.step()
        update_heads(attn, pruner)
        row["params_kept"] = sum(p.numel() for p in pruned.parameters()) / before
        row["tp_s"] = time.perf_counter() - t0
        try:
            common.call(pruned, x)
            row["tp"] = "pruned, runs"
        except Exception as e:  # noqa: BLE001
            row.update(tp="pruned, fails to run", why=common.one_line(e))
    except Exception as e:  # noqa: BLE001 - the groups exist, so the permutation check still runs
        row.update(tp="refused at prune", why=common.one_line(e), tp_s=time.perf_counter() - t0)
    try:
        row.update(permutation_check(tp, model, x))
    except Exception as e:  # noqa: BLE001
        row["perm_error"] = common.one_line(e)
        row["perm_trace"] = traceback.format_exc().strip().splitlines()[-3:]
    return row


if __name__ == "__main__":
    print(json.dumps(run(sys.argv[1]), default=str))
