"""Why task/distillation alone cannot train a generated narrow ResNet: the step, not the gradient.

A fresh prune-anchored NeuMeta (zero heads) generates exactly the L1-pruned smoothed base. On one fixed
batch of 512 training digits, with BatchNorm in train mode (the training loss itself), take 40 full-batch
steps on the task loss of the 7/8-width member only and print the loss every 5 steps:

    PYTHONPATH=. python benchmarks/diagnostics/hyper_resnet/conditioning.py 0.875 1e-4 adam
    PYTHONPATH=. python benchmarks/diagnostics/hyper_resnet/conditioning.py 0.875 1e-3 sgd
    ... [FREEZE]  comma-separated parameter-name fragments kept fixed (e.g. "inp,body")
    PYTHONPATH=. python benchmarks/diagnostics/hyper_resnet/conditioning.py 0.875 1e-3 direct-adam
        (reference: the same member's weights, the pruned base, optimised directly, i.e. a fine-tune)

Uses the base and smoothed state cached by common.py ($WSL_DIAG_DIR, default runs/diag_hyper_resnet).
"""
import sys

import torch
import torch.nn.functional as F
from torch.func import functional_call

from common import setup

torch.set_num_threads(1)
ratio, lr, kind = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
freeze = sys.argv[4].split(",") if len(sys.argv) > 4 else []
cfg, data, base, state, hyper = setup(model_over={"anchor": "prune"})
stats = {t.name for t in hyper.base_space.spec.tensors if t.buffer}
member = hyper.family.build(ratio).train()
xb, yb = data.x_train[:512], data.y_train[:512]
direct = kind.startswith("direct-")
if direct:  # the generated (= pruned) weights themselves as the parameters
    weights = {k: v.detach().clone().requires_grad_() for k, v in hyper.generate(ratio).items() if k not in stats}
    params = list(weights.values())
else:
    params = [p for n, p in hyper.named_parameters() if not any(f in n for f in freeze)]
opt = torch.optim.Adam(params, lr=lr) if kind.endswith("adam") else torch.optim.SGD(params, lr=lr)


def loss() -> torch.Tensor:
    st = weights if direct else {k: v for k, v in hyper.generate(ratio).items() if k not in stats}
    return F.cross_entropy(functional_call(member, st, (xb,)), yb)


trace = []
for step in range(40):
    value = loss()
    opt.zero_grad()
    value.backward()
    opt.step()
    if step % 5 == 0:
        trace.append(round(float(value.detach()), 4))
print(f"ratio {ratio} {kind} lr {lr} frozen {freeze or '-'}: loss every 5 steps {trace}, "
      f"end {float(loss().detach()):.4f}")
