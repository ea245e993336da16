"""Interpolation targets for narrow members (wsl.hyper.interp) and the fit's interp_weight term."""

from __future__ import annotations

import pytest
import torch

from wsl.archs import mlp, small_cnn
from wsl.errors import ConfigError
from wsl.hyper.coords import network_coords, target_rows
from wsl.hyper.interp import interpolation_target
from wsl.hyper.neumeta import NeuMeta, NeuMetaConfig
from wsl.hyper.train import HyperTrainConfig, train_neumeta
from wsl.space import WeightSpace


def _reference(space: WeightSpace, state: dict[str, torch.Tensor], narrow: WeightSpace) -> dict[str, torch.Tensor]:
    """Separable linear interpolation along every unit axis (align-corners), one axis at a time."""
    out = {}
    for t in space.spec.tensors:
        w = state[t.name].float()
        for a, ax in enumerate(t.axes):
            if len(ax) == 1 and len(ax[0]) == 1 and ax[0][0][0] is not None:
                g = ax[0][0][0]
                n0, n = space.spec.groups[g].size, narrow.spec.groups[g].size
                if n == n0:
                    continue
                pos = torch.arange(n, dtype=torch.float32) / max(1, n - 1) * (n0 - 1) if n > 1 \
                    else torch.full((1,), 0.5 * (n0 - 1))
                lo = pos.floor().long().clamp(max=n0 - 2)
                fr = pos - lo
                shape = [1] * w.dim()
                shape[a] = n
                w = w.index_select(a, lo) * (1 - fr).view(shape) + w.index_select(a, lo + 1) * fr.view(shape)
        out[t.name] = w
    return out


@pytest.mark.parametrize("seed", range(3))
def test_interpolation_target_is_the_base_read_between_its_units(seed):
    """Random nets and ratios: the bilinear row target equals separable interpolation; the base at full width."""
    from wsl.archs.width import WidthFamily

    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    nets = [small_cnn(channels=[9, 7, 11]), mlp([5, 13, 6, 3])]
    net = nets[seed % 2]
    fam = WidthFamily(net.wsl_arch)
    base = fam.space(1.0)
    state = {k: torch.randn(v.shape, generator=gen) for k, v in net.state_dict().items()}
    full = network_coords(base, base)
    rows, _ = target_rows(state, full, 9)
    torch.testing.assert_close(interpolation_target(full, full.cont, full, rows), rows)
    ratio = 0.3 + 0.6 * float(torch.rand((), generator=gen))
    narrow = fam.space(ratio)
    c = network_coords(narrow, base)
    got = c.split(interpolation_target(c, c.cont, full, rows))
    want = _reference(base, state, narrow)
    for name, w in want.items():
        torch.testing.assert_close(got[name], w, atol=1e-5, rtol=1e-5)


def _narrow_error(hyper: NeuMeta, state: dict[str, torch.Tensor], ratio: float) -> float:
    full = hyper.coords(1.0)
    rows, _ = target_rows(state, full, hyper.taps_max)
    with torch.no_grad():
        c, cont, values = hyper.generate_rows(ratio)
    goal = interpolation_target(c, cont, full, rows)
    w_in = cont[:, 3:4]
    goal = torch.where(hyper.is_weight[c.tensor].unsqueeze(1), goal / w_in, goal)
    err = ((values - goal) ** 2 / hyper.sigma[c.tensor].unsqueeze(1) ** 2).mean()
    return float(err)


def test_interp_weight_pulls_narrow_members_to_the_interpolated_base():
    """With interp_weight the narrow members' weights approach the base read between its units (seeded,
    random base); without it only the full width is fitted and the narrow error stays much larger."""
    gen = torch.Generator().manual_seed(int(torch.randint(0, 1000, (1,))))
    torch.manual_seed(int(torch.randint(0, 1000, (1,), generator=gen)))
    base = mlp([4, 12, 10, 3])
    state = {k: v.detach().clone() for k, v in base.state_dict().items()}
    x = torch.randn(64, 4, generator=gen)
    y = base(x).argmax(1)
    errors = {}
    for weight in (0.0, 100.0):
        torch.manual_seed(0)
        hyper = NeuMeta(NeuMetaConfig(arch=base.wsl_arch, hidden=32, blocks=1, frequencies=3), state)
        cfg = HyperTrainConfig(steps=300, batch=32, task_weight=0.0, rec_weight=100.0, interp_weight=weight,
                               p_full=0.0, min_ratio=0.4, coord_noise=0.0, weight_decay=0.0)
        out = train_neumeta(hyper, state, x, y, cfg)
        assert ("interp" in out["history"][-1]) and (weight == 0) == (out["history"][-1]["interp"] == 0.0)
        errors[weight] = _narrow_error(hyper.eval(), state, 0.5)
    assert errors[100.0] < 0.5 * errors[0.0], errors


def test_interp_weight_must_be_non_negative():
    with pytest.raises(ConfigError, match="interp_weight"):
        HyperTrainConfig(interp_weight=-1.0)
