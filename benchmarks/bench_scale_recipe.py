"""One random request at full scale against the retraining a practitioner would run: resnet18 BN + head on all
60,000 Fashion-MNIST training images.

Fine-tuning and retraining follow the same recipe: Adam on the BN affine parameters and the head, until a held-out
validation split (10 % of the 60k, stratified) stops improving (patience 3, at most ``--epochs``); the weights of the
best epoch are kept.  The request forgets a uniform 10 % of the fine-tuning set; the unlearning runs with the library's
defaults (``trained_with="ce"``: one tilted Newton step, the gated sketch, the check's retain sample).  Reported: the
seconds and epochs of both trainings, the unlearning's seconds and gradient passes, and UA / RA / TA (accuracy on the
forgotten, retained and test images) of the original, the unlearned and the retrained model.  The backbone is
timm's random initialization (BN + head fine-tuned on top of it, as in bench_scaling): what is compared is
unlearning against retraining on the same model, not the model's accuracy.

    OMP_NUM_THREADS=2 python benchmarks/bench_scale_recipe.py --threads 2 [--n 60000] [--epochs 30]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def _accuracy(peft, w, data, batch: int = 1024) -> float:
    import torch

    f = peft.functional()
    hits = 0
    with torch.no_grad():
        for s in range(0, len(data), batch):
            hits += int((f(w, data.X[s:s + batch]).argmax(-1) == data.y[s:s + batch]).sum())
    return hits / max(len(data), 1)


def run(args) -> dict:
    import numpy as np
    import timm
    import torch

    from fastntk.data import load_digits, load_fashion_mnist, train_test_split
    from fastntk.peft import BatchNormPeft
    from fastntk.train import finetune_peft
    from fastntk.unlearn import unlearn
    from fastntk.update.objective import NetworkObjective

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = timm.create_model("resnet18", num_classes=10, in_chans=1, zero_init_last=False).eval()
    peft = BatchNormPeft(model, include_head=True)
    w0 = peft.vector().clone()
    if args.dataset == "digits":  # bundled with scikit-learn (the --quick run: no download, no system package)
        full, test = train_test_split(load_digits(size=28, channels=1), 0.2, seed=args.seed)
        full = full.subset(np.arange(min(args.n, len(full))))
    else:
        full = load_fashion_mnist("train", size=28, channels=1, limit=args.n)
        test = load_fashion_mnist("test", size=28, channels=1)
    D, val = train_test_split(full, 0.1, seed=args.seed + 7)
    rng = np.random.default_rng(args.seed)
    f_idx = np.sort(rng.choice(len(D), len(D) // 10, replace=False))
    r_idx = np.setdiff1d(np.arange(len(D)), f_idx)
    D_f, D_r = D.subset(f_idx), D.subset(r_idx)
    recipe = dict(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, loss="ce", val=val, patience=args.patience,
                  progress=True)
    out = {"dataset": args.dataset, "n_images": len(full), "n_train": len(D), "n_val": len(val), "n_forget": len(D_f), "p": peft.p, "recipe":
           {k: v for k, v in recipe.items() if k != "val"}}

    def train(key: str, data, desc: str) -> torch.Tensor:
        """The recipe from the current weights on ``data``: its figures in ``out[key]``, the weights it returns."""
        t = time.perf_counter()
        lg = finetune_peft(peft, data, desc=desc, **recipe)
        out[key] = {"seconds": time.perf_counter() - t, "epochs_run": lg.epochs_run, "best_epoch": lg.best_epoch,
                    "val_acc": lg.val_acc}
        model.eval()
        print(f"{desc}: {lg.epochs_run} epochs (best {lg.best_epoch}), {out[key]['seconds']:.0f} s", flush=True)
        return peft.vector().clone()

    w_t = train("finetune", D, "fine-tune")

    t = time.perf_counter()
    NetworkObjective(peft, D_r.X, D_r.y, loss="ce").value_and_grad(w_t)
    out["gradient_pass_seconds"] = time.perf_counter() - t  # over D_r

    t = time.perf_counter()
    res = unlearn(model, peft, (D_r.X, D_r.y), (D_f.X, D_f.y), trained_with="ce", w0=w0, check_overlap=False, progress=True)
    sec = time.perf_counter() - t
    w_u = res.w_new.clone()
    out["unlearn"] = {"seconds": sec, "gradient_passes": sec / out["gradient_pass_seconds"], "timings": dict(res.timings),
                      "plan": {k: str(v) for k, v in res.plan.items()}, "sketch": res.info.get("sketch"),
                      "harm_check": res.info["harm_check"]}
    print(f"unlearned: {sec:.0f} s ({out['unlearn']['gradient_passes']:.2f} gradient passes over D_r)", flush=True)

    peft.write(w0)
    w_r = train("retrain", D_r, "retrain")
    peft.write(w_t)
    out["unlearn"]["x_retrain"] = sec / out["retrain"]["seconds"]

    sub = np.sort(rng.choice(len(D_r), min(len(D_r), 10000), replace=False))  # RA on a 10k sample of D_r
    D_r_s = D_r.subset(sub)
    out["metrics"] = {name: {"UA": _accuracy(peft, w, D_f), "RA": _accuracy(peft, w, D_r_s), "TA": _accuracy(peft, w, test)}
                      for name, w in (("original", w_t), ("Fast-NTK (default)", w_u), ("retrain", w_r))}
    return out


def markdown(o: dict) -> str:
    m = o["metrics"]
    rows = ["| model | UA (%) | RA (%) | TA (%) | |UA − retrain| + |RA − retrain| + |TA − retrain| (pp) |", "|---|---:|---:|---:|---:|"]
    for name, v in m.items():
        gap = sum(abs(v[k] - m["retrain"][k]) for k in ("UA", "RA", "TA")) * 100
        rows.append(f"| {name} | {100 * v['UA']:.2f} | {100 * v['RA']:.2f} | {100 * v['TA']:.2f} | {gap:.2f} |")
    u, ft, rt = o["unlearn"], o["finetune"], o["retrain"]
    sk = u.get("sketch") or {}
    data = "Fashion-MNIST" if o.get("dataset", "fashion_mnist") == "fashion_mnist" else "scikit-learn digits"
    return (f"resnet18 BN + head (p = {o['p']:,}), {data} {o['n_images']:,} images at 28 px: fine-tuning set "
            f"{o['n_train']:,}, validation {o['n_val']:,}, forgotten {o['n_forget']:,} (random 10 %). Recipe: Adam lr "
            f"{o['recipe']['lr']}, batch {o['recipe']['batch_size']}, until validation accuracy stops improving (patience "
            f"{o['recipe']['patience']}, at most {o['recipe']['epochs']} epochs).\n\n"
            f"- fine-tuning: {ft['epochs_run']} epochs (best {ft['best_epoch']}), {ft['seconds']:.0f} s\n"
            f"- **unlearning (defaults): {u['seconds']:.0f} s = {u['gradient_passes']:.2f} gradient passes over D_r = "
            f"{u['x_retrain']:.3f}× the retraining**; sketch estimate {sk.get('estimated_relative_error')}\n"
            f"- retraining on D_r (same recipe): {rt['epochs_run']} epochs (best {rt['best_epoch']}), {rt['seconds']:.0f} s\n\n"
            "The last column is the avg gap without the MIA term (three accuracies, in pp); RA on a 10k sample of D_r.\n\n"
            + "\n".join(rows))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="scikit-learn digits, n = 1200, at most 2 epochs (≤ 1 min); writes "
                    "<name>_quick.*")
    ap.add_argument("--dataset", choices=["fashion_mnist", "digits"], default="fashion_mnist")
    ap.add_argument("--n", type=int, default=60000)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--patience", type=int, default=3)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--name", default="scale_recipe_resnet18_60k")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    from benchmarks._common import environment, write_results

    if args.quick:
        args.dataset, args.n, args.epochs = "digits", 1200, 2
    o = run(args)
    text = markdown(o)
    write_results(args.name + ("_quick" if args.quick else ""), {"env": environment(), "args": vars(args), "quick": args.quick,
                                                                 "result": o}, text, args.out)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
