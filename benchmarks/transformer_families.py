"""More ``transformers`` families than the tests cover: traced or refused, and function preserved.

For each tiny configuration below (one layer, hidden 32, built with
``transformers`` on the CPU in float64, every weight, norm and bias random),
``WeightSpace.from_module`` traces it (inputs read from the config) and two
random permutations are applied; the table gives the permutable groups and
units and the largest output change relative to the output's scale, or the
one-line refusal. Families whose norms compute in float32 agree to ~1e-7.

Usage: ``python benchmarks/transformer_families.py [--out FILE.md] [NAME ...]``
"""

from __future__ import annotations

import argparse
import copy
import logging
import warnings
from typing import Any

import torch

V = 64
TEXT: dict[str, Any] = {"vocab_size": V, "pad_token_id": 0}


def _configs() -> dict[str, tuple[str, dict[str, Any]]]:
    dec = {**TEXT, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 1, "num_attention_heads": 4,
           "num_key_value_heads": 2}
    return {
        "GPTNeoXModel": ("gpt_neox", {**TEXT, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4,
                                      "intermediate_size": 48, "rotary_pct": 0.25}),
        "OPTModel": ("opt", {**TEXT, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4,
                             "ffn_dim": 48, "word_embed_proj_dim": 32}),
        "Gemma2Model": ("gemma2", {**dec, "head_dim": 8}),
        "Qwen3Model": ("qwen3", {**dec, "head_dim": 8}),
        "GPTBigCodeModel": ("gpt_bigcode", {**TEXT, "n_embd": 32, "n_layer": 1, "n_head": 4, "multi_query": True}),
        "GPTJModel": ("gptj", {**TEXT, "n_embd": 32, "n_layer": 1, "n_head": 4, "rotary_dim": 4}),
        "AlbertModel": ("albert", {**TEXT, "embedding_size": 16, "hidden_size": 32, "num_hidden_layers": 2,
                                   "num_attention_heads": 4, "intermediate_size": 48}),
        "DebertaV2Model": ("deberta-v2", {**TEXT, "hidden_size": 32, "num_hidden_layers": 1,
                                          "num_attention_heads": 4, "intermediate_size": 48}),
        "BartModel": ("bart", {**TEXT, "d_model": 32, "encoder_layers": 1, "decoder_layers": 1,
                               "encoder_attention_heads": 4, "decoder_attention_heads": 4, "encoder_ffn_dim": 48,
                               "decoder_ffn_dim": 48}),
        "BloomModel": ("bloom", {**TEXT, "hidden_size": 32, "n_layer": 1, "n_head": 4}),
        "FalconModel": ("falcon", {**TEXT, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4}),
        "MixtralModel": ("mixtral", {**dec, "num_local_experts": 4, "num_experts_per_tok": 2}),
        "SwinModel": ("swin", {"image_size": 32, "patch_size": 4, "embed_dim": 16, "depths": [1, 1],
                               "num_heads": [2, 4], "window_size": 4}),
    }


def _tensors(x: Any) -> list[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, dict):
        return [t for v in x.values() for t in _tensors(v)]
    if isinstance(x, (list, tuple)):
        return [t for v in x for t in _tensors(v)]
    return []


def measure(name: str, model_type: str, fields: dict[str, Any]) -> dict[str, str]:
    import transformers

    from wsl.archs.hf_inputs import hf_example_inputs
    from wsl.space import WeightSpace, random_permutation

    config = transformers.AutoConfig.for_model(model_type, **fields)
    model = getattr(transformers, name)(config).double().eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for t in model.state_dict(keep_vars=True).values():
            if t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=g, dtype=t.dtype) * 0.5)
    kw = {k: v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v
          for k, v in (hf_example_inputs(model) or {}).items()}
    try:
        space = WeightSpace.from_module(model, kw)
    except Exception as e:  # noqa: BLE001 -- a refusal is a row
        return {"model": name, "result": f"refused: {type(e).__name__}: {' '.join(str(e).split())[:200]}"}
    sd = model.state_dict()
    with torch.no_grad():
        ref = _tensors(model(**kw))
    scale = max(float(t.abs().max()) for t in ref if t.is_floating_point())
    worst = 0.0
    for seed in (1, 2):
        other = copy.deepcopy(model)
        other.load_state_dict(space.permute(sd, random_permutation(space, torch.Generator().manual_seed(seed))))
        with torch.no_grad():
            got = _tensors(other(**kw))
        worst = max([worst] + [float((a - b).abs().max()) for a, b in zip(ref, got) if a.is_floating_point()])
    perm = space.permutable_groups()
    return {"model": name, "result": f"traced: {len(perm)} groups, {sum(p.size for p in perm)} units, "
                                     f"max output change {worst / scale:.1e} of the output scale"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*")
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    rows = []
    for name, (model_type, fields) in _configs().items():
        if args.names and name not in args.names:
            continue
        rows.append(measure(name, model_type, fields))
        print(f"{rows[-1]['model']}: {rows[-1]['result']}", flush=True)
    text = "| model | result |\n|---|---|\n" + "".join(f"| {r['model']} | {r['result']} |\n" for r in rows)
    print(text)
    if args.out:
        from wsl.io import atomic_write

        with atomic_write(args.out) as tmp:
            tmp.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
