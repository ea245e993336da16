from common import *
import sys
cfg, data, base, state, hyper = setup()
hyper.load_state_dict(torch.load(f"{DIAG}/hyper_{sys.argv[1]}.pt")); hyper.eval()
with torch.no_grad():
  for r in [0.875, 1.0]:
    g = hyper.generate(r)
    for k, v in g.items():
        if "running" in k: continue
        print(r, f"{k:30s} mean {float(v.mean()):+.3f} std {float(v.std()) if v.numel()>1 else 0:.3f} absmax {float(v.abs().max()):.3f}")
    m = hyper.family.build(r); m.load_state_dict(g, strict=False); m.train()
    acts = {}
    for n in ["bn1","maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool", "fc"]:
        getattr(m, n).register_forward_hook(lambda mod, i, o, n=n: acts.__setitem__(n, (float(o.std()), float(o.flatten(1).std(0).mean()), float((o>0).float().mean()))))
    m(data.x_train[:256])
    print({k: tuple(round(x,3) for x in v) for k, v in acts.items()})
