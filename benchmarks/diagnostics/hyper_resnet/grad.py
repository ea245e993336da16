from common import *
import sys
cfg, data, base, state, hyper = setup(model_over=json.loads(sys.argv[1]) if len(sys.argv)>1 else None)
x, y = data.x_train[:256], data.y_train[:256]
def grads(m, st):
    st = {k: v.detach().clone().requires_grad_(True) for k, v in st.items() if "running" not in k and "num_b" not in k}
    m.train(); loss = F.cross_entropy(functional_call(m, st, (x,)), y); loss.backward()
    return {k: float(v.grad.norm()/v.norm().clamp_min(1e-12)) for k, v in st.items() if k.endswith("conv1.weight") or k=="fc.weight" or k=="conv1.weight"}, float(loss)
for r in [1.0, 0.875]:
    m = hyper.family.build(r)
    g, l = grads(m, hyper.generate(r)); print("generated", r, round(l,3), {k: f"{v:.1e}" for k, v in g.items()})
    torch.manual_seed(0); m2 = hyper.family.build(r)
    g, l = grads(m2, dict(m2.state_dict())); print("fresh init", r, round(l,3), {k: f"{v:.1e}" for k, v in g.items()})
