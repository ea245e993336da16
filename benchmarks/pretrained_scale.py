"""``wsl inspect hf://ORG/NAME`` at scale: a 1B-parameter Llama and a MiniLM-sized BERT, weights never read.

Builds a temporary offline Hugging Face cache holding, per model, the real
``config.json`` shape (Llama-3.2-1B: 16 layers, hidden 2048, 32 heads / 8
key-value heads, vocabulary 128,256, tied embeddings; MiniLM-L6: BERT,
hidden 384, 6 layers, 12 heads) and a *header-only* ``model.safetensors``
(the tensor names and shapes, no data), then runs ``wsl inspect hf://... --json``
in a fresh process per model (``HF_HUB_OFFLINE=1``, one thread) and reports
the wall time of the whole command (Python start-up and imports included),
the time inside ``main`` and the process's peak resident memory.
Targets (issue 21): the 1B Llama under 30 s and 1 GB, the MiniLM under 2 s of tracing.

Usage: ``python benchmarks/pretrained_scale.py [--out benchmarks/results/pretrained_scale.md]``;
``--in-process`` times only ``WeightSpace.from_module`` of the two configurations built on the meta device
with ``transformers``, in one process that has imported everything (the first trace pays torch.export's
warm-up).
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHA = "0" * 40
CONFIGS = {
    "llama-3.2-1b-shape": {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 128256,
                           "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
                           "num_attention_heads": 32, "num_key_value_heads": 8, "max_position_embeddings": 131072,
                           "tie_word_embeddings": True, "rope_theta": 500000.0, "rms_norm_eps": 1e-5},
    "minilm-l6-shape": {"model_type": "bert", "architectures": ["BertModel"], "vocab_size": 30522,
                        "hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12,
                        "intermediate_size": 1536, "max_position_embeddings": 512, "type_vocab_size": 2},
}
DRIVER = """
import json, resource, sys, time
t = time.time()
from wsl.cli import main
rc = main(["inspect", sys.argv[1], "--json"])
sys.stderr.write(json.dumps({"rc": rc, "main_s": time.time() - t,
                             "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}) + "\\n")
"""


def header_only(config: dict) -> bytes:
    import torch
    from wsl.archs.hf import build_hf_model

    with torch.device("meta"):
        model = build_hf_model(config, prefer_local=False)
    header, offset = {}, 0
    for name, t in model.state_dict().items():
        size = 4 * t.numel()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw


def in_process() -> None:
    """Time ``WeightSpace.from_module`` on the meta device in this process (torch and transformers imported)."""
    import resource

    import torch
    from wsl.archs.hf import build_hf_model
    from wsl.archs.hf_inputs import hf_example_inputs
    from wsl.space import WeightSpace

    torch.set_num_threads(1)
    for name, cfg in CONFIGS.items():
        with torch.device("meta"):
            model = build_hf_model(cfg, prefer_local=False)
        t = time.perf_counter()
        space = WeightSpace.from_module(model, hf_example_inputs(model))
        print(f"{name}: {type(model).__name__} traced on meta in {time.perf_counter() - t:.2f} s, "
              f"{space.num_parameters:,} parameters, peak RSS "
              f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="also write the Markdown table here")
    ap.add_argument("--in-process", action="store_true", help="only time the traces inside this process")
    args = ap.parse_args()
    if args.in_process:
        in_process()
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, cfg in CONFIGS.items():
            snap = Path(tmp, f"models--org--{name}", "snapshots", SHA)
            snap.mkdir(parents=True)
            Path(tmp, f"models--org--{name}", "refs").mkdir()
            Path(tmp, f"models--org--{name}", "refs", "main").write_text(SHA)
            (snap / "config.json").write_text(json.dumps(cfg))
            (snap / "model.safetensors").write_bytes(header_only(cfg))
        env = {**os.environ, "HF_HUB_CACHE": tmp, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
               "TRANSFORMERS_VERBOSITY": "error"}
        for name in CONFIGS:
            t = time.perf_counter()
            proc = subprocess.run([sys.executable, "-c", DRIVER, f"hf://org/{name}"], env=env, capture_output=True,
                                  text=True, check=False)
            wall = time.perf_counter() - t
            stats = json.loads(proc.stderr.strip().splitlines()[-1])
            desc = json.loads(proc.stdout) if stats["rc"] == 0 else {}
            rows.append((name, f"{desc.get('num_parameters', 0):,}", len(desc.get("groups", [])),
                         f"{wall:.1f}", f"{stats['main_s']:.1f}", f"{stats['peak_mb']:.0f}",
                         str(desc.get("checkpoint", {}).get("weights_read", "?")).lower()))
            print(rows[-1], flush=True)
    head = ("config", "parameters", "groups", "command wall s", "inside main s", "peak RSS MB", "weights read")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        from wsl.io import atomic_write

        with atomic_write(args.out) as tmp_path:
            tmp_path.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
