"""Inverted probes: probe inputs synthesized from a zoo's training networks, with no data set.

Probe features (:mod:`wsl.tasks.probes`) read what a network outputs on fixed
inputs. Noise and random pen strokes are far from the data a network was
trained on, so its outputs on them say little about how well it classifies
real inputs. *Model inversion* makes inputs the networks themselves call a
class: for ``num`` probes with target classes ``c_i = i mod C``,

.. math::

    x^\\ast = \\tanh(r^\\ast), \\qquad
    r^\\ast = \\arg\\min_r\\; \\mathbb{E}_{B}\\Big[\\tfrac{1}{|B|\\,\\mathrm{num}}
        \\sum_{f \\in B} \\sum_i \\mathrm{CE}\\big(f(\\tanh r_i),\\, c_i\\big)\\Big]
        + \\lambda\\, \\mathrm{TV}(\\tanh r),

where ``B`` is a random batch of ``batch`` networks drawn at every step from
the *training split* of the zoo (every network's final checkpoint, whatever
its accuracy: no meta-model target is read), ``TV`` the mean squared
difference of neighbouring input entries along every spatial axis, and ``r``
starts at random pen strokes (:func:`~wsl.tasks.probes.probe_inputs`). Adam,
``steps`` steps, from a seeded generator on one CPU thread, so the same zoo
and settings give the same probes in every run.

The result looks like the data the zoo was trained on (digits, for the
bundled zoos) without any image of that data set. A network's accuracy on
these probes against the target classes ranks its test accuracy well; the
probe features of a meta-model use its full output on them. The val and test
splits never enter the inversion, so they stay held out.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F

from wsl.tasks.probes import ProbeError, ProbeNets, probe_inputs

__all__ = ["invert_probes", "probe_set", "total_variation"]


def total_variation(x: torch.Tensor, spatial: int) -> torch.Tensor:
    """Mean squared difference of neighbours along the last ``spatial`` axes of ``x`` (0 if none)."""
    tv = x.new_zeros(())
    for ax in range(x.dim() - spatial, x.dim()):
        if x.shape[ax] > 1:
            tv = tv + (x.diff(dim=ax) ** 2).mean()
    return tv


def invert_probes(nets: ProbeNets, num: int, shape: Sequence[int], *, seed: int = 0, steps: int = 300,
                  lr: float = 0.05, tv: float = 0.5, batch: int = 32, progress: bool = False) -> torch.Tensor:
    """``(num, *shape)`` probes in ``[-1, 1]`` that the networks of ``nets`` classify as ``i mod C`` (module docstring).

    ``nets`` are the networks to invert (for training: the train split's
    final checkpoints, :meth:`ProbeNets.from_view`); their outputs must be
    ``C >= 2`` class logits. Seeded: the same inputs and torch thread count
    give the same bits. The thread count is the caller's to choose (``wsl
    train`` applies ``train.threads``; DDP ranks and the single-process run
    agree when it is the same).
    """
    if num < 1 or steps < 0 or batch < 1 or lr <= 0 or tv < 0:
        raise ProbeError(f"inverted probes: need num >= 1, steps >= 0, batch >= 1, lr > 0, tv >= 0; got num={num}, "
                         f"steps={steps}, batch={batch}, lr={lr}, tv={tv}")
    if len(nets) == 0:
        raise ProbeError("inverted probes: no networks to invert (empty training split)")
    shape = [int(s) for s in shape]
    spatial = max(0, len(shape) - 1) if len(shape) >= 2 else 0
    init = probe_inputs(shape, num, seed, "strokes")
    with torch.no_grad():
        classes = int(nets[torch.arange(1)](init[:1]).shape[-1])
    if classes < 2:
        raise ProbeError(f"inverted probes need classifiers (>= 2 outputs); these networks have {classes} output")
    labels = torch.arange(num) % classes
    raw = torch.atanh(init.clamp(-0.95, 0.95)).requires_grad_(True)
    opt = torch.optim.Adam([raw], lr=lr)
    gen = torch.Generator().manual_seed(int(seed) + 7919)
    from tqdm.auto import tqdm

    bar = tqdm(range(steps), desc="inverting probes", unit="step", disable=not progress, leave=False)
    for _ in bar:
        x = torch.tanh(raw)
        pick = torch.randperm(len(nets), generator=gen)[:batch]
        logits = nets[pick](x)
        if not torch.isfinite(logits).all():
            raise ProbeError("inverted probes: a network gives non-finite outputs while inverting")
        ce = F.cross_entropy(logits.reshape(-1, classes), labels.repeat(len(pick)).to(logits.device))
        loss = ce + tv * total_variation(x.reshape(num, *shape), spatial)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.set_postfix(ce=f"{float(ce.detach()):.3f}")
    return torch.tanh(raw).detach()


def probe_set(zoo: Any, *, num: int = 0, seed: int = 0, kind: str = "mixed", invert: int = 0,
              invert_steps: int = 300, invert_tv: float = 0.5, split: str = "train", target: str = "test_accuracy",
              arch: str | None = None, shape: Sequence[int] | None = None,
              progress: bool = False) -> torch.Tensor | None:
    """The probe inputs of a probe configuration: ``num`` synthetic probes of ``kind``, then ``invert``
    inverted probes of the ``split`` networks (final checkpoints); None when both are 0.

    ``shape`` defaults to the zoo's canonical probe shape over all its architectures.
    """
    from wsl.tasks.generalization import select_rows
    from wsl.tasks.probes import view_probe_shape

    if num < 0 or invert < 0:
        raise ProbeError(f"probe counts must be >= 0, got num={num}, invert={invert}")
    if num + invert == 0:
        return None
    if shape is None:
        shape = view_probe_shape(zoo.filter(arch=arch) if arch is not None else zoo)
    parts = [probe_inputs(shape, num, seed, kind)] if num else []
    if invert:
        train = select_rows(zoo, split, "last", target, arch)
        nets = ProbeNets.from_view(train, shape=shape)
        parts.append(invert_probes(nets, invert, shape, seed=seed, steps=invert_steps, tv=invert_tv,
                                   progress=progress))
    return torch.cat(parts)
