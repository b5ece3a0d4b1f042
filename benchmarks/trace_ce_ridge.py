"""How the CE route's one constant — the per-sample ridge ``λ = ρ·n_r`` — sets the fit of ``D_r``, against how far
retraining fit it (bench_ce's cached setups: class requests, fine-tuning and retraining until a validation split stops
improving).

    OMP_NUM_THREADS=1 python benchmarks/trace_ce_ridge.py --models fastntk_cnn_small --classes 0 1 2
    (needs the setups cached by bench_ce.py in /tmp/fastntk-bench/ce-setups; a missing one is trained first)

For each request: the mean CE loss of the original model on ``D`` and on ``D_r``, of the retraining (gold) and of the
second retraining (floor) on ``D_r``, with the epochs each ran; then the library's default update (``unlearn(...,
trained_with="ce")``) with the ridge scaled by each multiplier ``m`` (``λ = m·ρ·n_r``): its mean loss on ``D_r``, its
distance from ``w0``, UA/RA/TA/MIA and avg gap to the gold retraining.  Derived per request: the multiplier with the
smallest gap, the one whose retain loss is nearest the gold's (in log), the one a *loss-matched* rule would pick —
the retain loss nearest the original's mean training loss on ``D`` (retraining "fits its data as loosely as the recipe
left the original") —, and the one the recipe's own criterion picks (the highest accuracy on the validation split that
fine-tuning and retraining early-stopped on, counted on the retained classes' samples), each with the gap measured
there.  Writes ``benchmarks/results/<name>.json``, ``.md`` and a plot.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._common import markdown_table, set_threads, write_results  # noqa: E402
from benchmarks.bench_ce import recipe_arguments  # noqa: E402


def trace_one(args, model: str, seed: int, cls: int) -> dict:
    from benchmarks.bench_ce import _cached_experiment, _config
    from fastntk.metrics import avg_gap
    from fastntk.unlearn import unlearn
    from fastntk.update.objective import NetworkObjective
    from fastntk.update.tilted import PER_SAMPLE_RIDGE

    e = _cached_experiment(_config(args, model, "class", seed, cls), args.setups)
    Xr, yr = e.retain.X, e.retain.y

    def mean_loss(w, X, y) -> float:
        return NetworkObjective(e.peft, X, y, loss="ce").data_loss(w)[0] / int(X.shape[0])

    keep = e.val.y != cls  # the validation samples of the classes that stay (all of them hold the forgotten class too)
    Xv, yv, Xvr, yvr = e.val.X, e.val.y, e.val.X[keep], e.val.y[keep]

    def val_figures(w) -> dict:
        """The recipe's early-stopping criterion (accuracy on the whole validation split) and, on the validation samples
        of the retained classes, accuracy and mean CE."""
        acc = NetworkObjective(e.peft, Xv, yv, loss="ce").data_loss(w)[1]
        lr_, ar = NetworkObjective(e.peft, Xvr, yvr, loss="ce").data_loss(w)
        return {"val_acc": acc, "val_acc_retain": ar, "val_loss_retain": lr_ / max(int(Xvr.shape[0]), 1)}

    gold = e.rows["retrain"]
    out = {"model": model, "seed": seed, "class": cls, "n_retain": int(Xr.shape[0]),
           "floor": avg_gap(e.rows["retrain (seed 2)"], gold), "original_gap": avg_gap(e.rows["original"], gold),
           "epochs": {"finetune": [e.ft.epochs_run, e.ft.best_epoch], "retrain": [e.gold.log.epochs_run, e.gold.log.best_epoch],
                      "floor": [e.floor.log.epochs_run, e.floor.log.best_epoch]},
           "loss": {"original_D": mean_loss(e.w_trained, e.train.X, e.train.y), "original_Dr": mean_loss(e.w_trained, Xr, yr),
                    "gold_Dr": mean_loss(e.gold.w, Xr, yr), "floor_Dr": mean_loss(e.floor.w, Xr, yr), "w0_Dr": mean_loss(e.w0, Xr, yr)},
           "distance_from_w0": {"original": float((e.w_trained - e.w0).norm()), "gold": float((e.gold.w - e.w0).norm()),
                                "floor": float((e.floor.w - e.w0).norm())},
           "val": {"original": val_figures(e.w_trained), "gold": val_figures(e.gold.w), "floor": val_figures(e.floor.w)},
           "grid": []}
    for m in args.mults:
        e.peft.write(e.w_trained)
        lam = m * PER_SAMPLE_RIDGE * int(Xr.shape[0])
        t = time.perf_counter()
        res = unlearn(e.model, e.peft, (Xr, yr), (e.forget.X, e.forget.y), trained_with="ce", w0=e.w0, check_overlap=False,
                      ridge=lam)
        sec = time.perf_counter() - t
        met = e.evaluate(res.w_new)
        row = {"mult": m, "ridge": lam, "gap": avg_gap(met, gold), **{k: met[k] for k in ("UA", "RA", "TA", "MIA")},
               "loss_Dr": mean_loss(res.w_new, Xr, yr), "distance_from_w0": float((res.w_new - e.w0).norm()),
               "steps": res.info.get("steps"), "harm_scale": res.info["harm_check"]["scale"], "seconds": sec,
               **val_figures(res.w_new)}
        out["grid"].append(row)
        print(f"  {model} class {cls}: ×{m:g}: gap {row['gap']:.2f} (floor {out['floor']:.2f}) L_r {row['loss_Dr']:.4f} "
              f"(gold {out['loss']['gold_Dr']:.4f}, original on D {out['loss']['original_D']:.4f}) RA {met['RA']:.3f} "
              f"steps {row['steps']} {sec:.0f}s", flush=True)
    e.peft.write(e.w_trained)
    out.update(picks(out))
    return out


def _nearest(grid: list, target: float) -> dict:
    """The grid row whose retain loss is nearest ``target`` in log (a row damped by the harm check counts as it is)."""
    return min(grid, key=lambda r: abs(math.log(r["loss_Dr"] / target)))


def picks(run: dict) -> dict:
    """The multiplier with the smallest gap, the one whose retain loss is nearest the gold's, and the loss-matched one
    (retain loss nearest the original's mean training loss on ``D``), each with its measured gap."""
    g = run["grid"]
    best = min(g, key=lambda r: r["gap"])
    near_gold = _nearest(g, run["loss"]["gold_Dr"])
    matched = _nearest(g, run["loss"]["original_D"])
    default = next((r for r in g if r["mult"] == 1.0), None)
    # the recipe's own criterion, the highest validation accuracy, on the retained classes' validation samples (the
    # forgotten class's count for nothing in retraining, which never learns it; in a damped update that still predicts it
    # they would reward remembering); ties: the lower retained-class validation loss
    val_sel = max(g, key=lambda r: (r["val_acc_retain"], -r["val_loss_retain"]))
    return {"best": {"mult": best["mult"], "gap": best["gap"]}, "nearest_gold_loss": {"mult": near_gold["mult"], "gap": near_gold["gap"]},
            "loss_matched": {"mult": matched["mult"], "gap": matched["gap"]},
            "val_selected": {"mult": val_sel["mult"], "gap": val_sel["gap"]},
            "default": None if default is None else {"mult": 1.0, "gap": default["gap"]}}


def markdown(payload: dict) -> str:
    runs = payload["runs"]
    mults = payload["mults"]
    lines = ["Class requests after CE fine-tuning until a validation split stops improving (bench_ce's setups): the default "
             "update with the per-sample ridge scaled by m (λ = m·ρ·n_r, ρ = %g). Losses are mean CE per sample; val acc (%%) on "
             "the validation split's samples of the retained classes; gaps in pp to the gold retraining; the floor is a "
             "second retraining; (damped): the do-no-harm check halved the update." % payload["rho"], ""]
    head = ["request", "epochs ft / gold / floor (best)", "floor", "L(orig, D)", "L(orig, D_r)", "L(gold, D_r)", "L(floor, D_r)"]
    head += [f"×{m:g} gap / L_r / val acc" for m in mults] + ["val acc gold / floor", "best m", "m nearest gold's L_r (gap)",
                                                            "loss-matched m (gap)", "val-selected m (gap)"]
    rows = []
    for r in runs:
        lo, ep = r["loss"], r["epochs"]
        row = [f"{r['model']} class {r['class']}", f"{ep['finetune'][1]} / {ep['retrain'][1]} / {ep['floor'][1]}", f"{r['floor']:.2f}",
               f"{lo['original_D']:.3f}", f"{lo['original_Dr']:.3f}", f"{lo['gold_Dr']:.3f}", f"{lo['floor_Dr']:.3f}"]
        row += [f"{x['gap']:.2f} / {x['loss_Dr']:.3f} / {100 * x['val_acc_retain']:.1f}" + (" (damped)" if x["harm_scale"] != 1 else "")
                for x in r["grid"]]
        row += [f"{100 * r['val']['gold']['val_acc_retain']:.1f} / {100 * r['val']['floor']['val_acc_retain']:.1f}", f"×{r['best']['mult']:g}"]
        row += [f"×{r[k]['mult']:g} ({r[k]['gap']:.2f})" for k in ("nearest_gold_loss", "loss_matched", "val_selected")]
        rows.append(row)
    lines.append(markdown_table(head, rows))
    lines += ["", "Mean avg gap (pp) per multiplier, and of the four picks:", ""]
    head2 = ["model", "requests", "mean floor"] + [f"×{m:g}" for m in mults] + ["best per request", "nearest gold's L_r", "loss-matched",
                                                                          "val-selected"]
    rows2 = []
    for model in list(dict.fromkeys(r["model"] for r in runs)) + ["all"]:
        rs = [r for r in runs if model in ("all", r["model"])]
        rows2.append([model, len(rs), f"{np.mean([r['floor'] for r in rs]):.2f}"] +
                     [f"{np.mean([x['gap'] for r in rs for x in r['grid'] if x['mult'] == m]):.2f}" for m in mults] +
                     [f"{np.mean([r[k]['gap'] for r in rs]):.2f}" for k in ("best", "nearest_gold_loss", "loss_matched", "val_selected")])
    lines.append(markdown_table(head2, rows2))
    ratio = [r["loss"]["gold_Dr"] / r["loss"]["original_D"] for r in runs]
    lines += ["", f"Gold retraining's mean retain loss ÷ the original's mean training loss on D, per request: "
              f"{', '.join(f'{x:.2f}' for x in ratio)} (range {min(ratio):.2f}–{max(ratio):.2f})."]
    return "\n".join(lines)


def plot(payload: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for i, r in enumerate(payload["runs"]):
        c = f"C{i % 10}"
        ms = [x["mult"] for x in r["grid"]]
        label = f"{r['model'].replace('fastntk_', '')} c{r['class']}"
        axes[0].plot(ms, [max(x["gap"], 0.02) for x in r["grid"]], "o-", color=c, label=label)
        damped = [x for x in r["grid"] if x["harm_scale"] != 1]
        axes[0].plot([x["mult"] for x in damped], [max(x["gap"], 0.02) for x in damped], "kx", ms=9)
        axes[0].axhline(r["floor"] + 1.5, color=c, ls=":", lw=0.8)
        axes[1].plot(ms, [x["loss_Dr"] for x in r["grid"]], "o-", color=c, label=label)
        axes[1].axhline(r["loss"]["gold_Dr"], color=c, ls="--", lw=0.8)
        axes[1].plot([ms[0]], [r["loss"]["original_D"]], ">", color=c, ms=8)
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("ridge multiplier m (λ = m·ρ·n_r)")
    axes[0].set_yscale("log")
    axes[0].set_ylabel("avg gap to retraining (pp)")
    axes[0].set_title("dotted: floor + 1.5; ×: halved by the do-no-harm check", fontsize=9)
    axes[1].set_ylabel("mean CE on D_r")
    axes[1].set_title("dashed: gold retraining; ▶: the original on D", fontsize=9)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path + ".tmp.png", dpi=110)
    os.replace(path + ".tmp.png", path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="*", default=["fastntk_cnn_small"])
    ap.add_argument("--classes", type=int, nargs="+", default=[0, 1, 2], help="forgotten class per run (seed = index)")
    ap.add_argument("--mults", type=float, nargs="+", default=[0.25, 0.5, 1.0, 2.0, 4.0])
    recipe_arguments(ap)
    ap.add_argument("--quick", action="store_true", help="digits-size smoke run")
    ap.add_argument("--name", default="trace_ce_ridge")
    ap.add_argument("--out", default=None)
    ap.add_argument("--merge", nargs="*", default=[], metavar="JSON", help="earlier outputs whose runs join this table")
    args = ap.parse_args(argv)
    if args.val <= 0 and args.models:
        ap.error("--val must be > 0: the recipe early-stops on that validation split, and the study scores it")
    set_threads(args.threads)
    from fastntk.update.tilted import PER_SAMPLE_RIDGE

    runs = []
    for path in args.merge:
        import json

        with open(path, encoding="utf-8") as fh:
            runs += [dict(r, **picks(r)) for r in json.load(fh)["runs"]]  # the picks by this version's rules
    for model in args.models:
        for seed, cls in enumerate(args.classes):
            runs.append(trace_one(args, model, seed, cls))
    payload = {"runs": runs, "mults": sorted({x["mult"] for r in runs for x in r["grid"]}), "rho": PER_SAMPLE_RIDGE,
               "args": vars(args)}
    name = args.name + ("_quick" if args.quick else "")
    jp, mp = write_results(name, payload, markdown(payload), args.out)
    plot(payload, os.path.join(os.path.dirname(jp), f"{name}.png"))
    print(f"wrote {jp}, {mp}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
