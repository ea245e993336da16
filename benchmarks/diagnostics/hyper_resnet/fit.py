from common import *
import argparse
ap = argparse.ArgumentParser()
ap.add_argument("--arch", default="digits_resnet")
ap.add_argument("--steps", type=int, default=500)
ap.add_argument("--model", default="{}")
ap.add_argument("--train", default="{}")
ap.add_argument("--tag", default="x")
a = ap.parse_args()
cfg, data, base, state, hyper = setup(a.arch, json.loads(a.model))
tc = dict(cfg["train"]); tc.update(json.loads(a.train)); tc["steps"] = a.steps
t0 = time.time()
fit = train_neumeta(hyper, state, data.x_train, data.y_train, HyperTrainConfig(**tc))
print("fit s", round(time.time()-t0,1))
H = fit["history"]
# per-width-bin loss in the last third
import collections
bins = collections.defaultdict(list)
for h in H[len(H)*2//3:]:
    w = hyper.family.widths(h["ratio"])
    bins[w].append((h["task"], h["kd"]))
print("late task/kd per width:", {k: (round(sum(t for t,_ in v)/len(v),3), round(sum(d for _,d in v)/len(v),3), len(v)) for k,v in sorted(bins.items())})
torch.save(hyper.state_dict(), f"{DIAG}/hyper_{a.tag}.pt")
calib = data.x_train[:1024]
res = {}
for r in [0.25,0.5,0.75,0.875,1.0]:
    acc_re = accuracy(hyper.sample(r, calib), data.x_test, data.y_test)
    # batch statistics on the test set itself (what training saw: train-mode BN)
    with torch.no_grad():
        st = hyper.generate(r)
        m = hyper.family.build(r); m.train()
        st = {k: v for k, v in st.items() if "running" not in k and "num_batches" not in k}
        lg = functional_call(m, st, (data.x_test,))
        acc_bs = float((lg.argmax(1) == data.y_test).float().mean())
        lgt = functional_call(m, st, (data.x_train[:512],))
        ce_tr = float(F.cross_entropy(lgt, data.y_train[:512]))
    res[r] = (round(acc_re,3), round(acc_bs,3), round(ce_tr,3))
print("ratio: (acc recalibrated, acc train-mode batch stats on test, train CE batch stats)")
for k,v in res.items(): print(k, v)
