from common import *
import sys
tag = sys.argv[1] if len(sys.argv) > 1 else None
cfg, data, base, state, hyper = setup()
if tag: hyper.load_state_dict(torch.load(f"{DIAG}/hyper_{tag}.pt"))
hyper.eval()
space = WeightSpace.from_module(base)
def erank(w):
    m = w.reshape(w.shape[0], -1).double(); m = m - m.mean(0, keepdim=True)
    s = torch.linalg.svdvals(m); p = s / s.sum(); return float(torch.exp(-(p * (p + 1e-12).log()).sum()))
def interp_state(width_ratio):
    """Linear interpolation of the smoothed base at u = j/(n-1) along every unit axis."""
    fam = hyper.family; tgt = fam.space(width_ratio)
    out = {}
    for t in space.spec.tensors:
        w = state[t.name].float()
        for a, ax in enumerate(t.axes):
            if len(ax)==1 and len(ax[0])==1 and ax[0][0][0] is not None:
                g = ax[0][0][0]; n0 = space.spec.groups[g].size; n = tgt.spec.groups[g].size
                if n == n0: continue
                pos = torch.arange(n)/(n-1)*(n0-1); lo = pos.floor().long().clamp(max=n0-2); fr = pos-lo
                shp = [1]*w.dim(); shp[a] = n
                w = w.index_select(a, lo)*(1-fr).view(shp) + w.index_select(a, lo+1)*fr.view(shp)
        out[t.name] = w
    return out
calib = data.x_train[:1024]
for r in [0.5, 0.75, 0.875]:
    m = hyper.family.build(r); st = interp_state(r)
    m.load_state_dict(st); recalibrate_batchnorm(m, calib)
    print("interpolated smoothed base", r, round(accuracy(m, data.x_test, data.y_test),3))
with torch.no_grad():
    for r in [1.0, 0.875]:
        g = hyper.generate(r); ref = interp_state(r) if r < 1 else state
        print(f"--- ratio {r}: tensor  erank(gen) erank(ref) corr(gen,ref) std(gen)/std(ref)")
        for t in space.spec.tensors:
            if t.buffer or g[t.name].dim() < 2: continue
            a, b = g[t.name].flatten(), ref[t.name].flatten()
            c = float(torch.corrcoef(torch.stack([a,b]))[0,1])
            print(f"  {t.name:28s} {erank(g[t.name]):5.1f} {erank(ref[t.name]):5.1f} {c:+.2f} {float(a.std()/b.std()):.2f}")
        # activation scales in train mode (batch statistics), after each block
        m = hyper.family.build(r); m.load_state_dict({k: v for k, v in g.items()}, strict=False); m.train()
        acts = {}
        hooks = [getattr(m, n).register_forward_hook(lambda mod, i, o, n=n: acts.__setitem__(n, (float(o.std()), float(o.flatten(1).std(0).mean()))))
                 for n in ["maxpool", "layer1", "layer2", "layer3", "layer4", "fc"]]
        m(data.x_train[:256])
        print("  activation std (all, across-batch per feature):", {k: (round(v[0],3), round(v[1],3)) for k, v in acts.items()})
