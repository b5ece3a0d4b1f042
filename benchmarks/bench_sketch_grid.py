"""Exact vs sketched curvature, the grid of issue 14: k ∈ {1, 2, 4} rows per sample × m ∈ {n/4, n/2, n} samples.

For each fine-tuned model (the recipe of bench_ce.py: Fashion-MNIST 28 px, PEFT fine-tuning until a validation split
stops improving, retraining the same way on D_r; cached setups are shared with bench_ce.py), each training loss
(cross-entropy: the CE route, tilted or plain Newton steps by request; MSE: ordinary MSE fine-tuning, the primal form
with the matched ridge), each scenario and seed, one request is answered with the exact curvature
(``curvature_source="exact"``) and with every sketch (``curvature_source="sketch", sketch_k=k, sketch_m=m``; the
MSE route's matched ridge then also comes from a sketch of D).  Reported per sketch:

* ``rel_err`` = ‖Δ̃ − Δ‖/‖Δ‖ against the exact update of the same request, and the half-sketch estimate beside it
  (``est``; none for k = 1 with m = n: odd k and no subsample, no independent halves).  For one-step requests also the
  error of the Newton direction (Δ divided by its step length and harm-check scale): a line search that halves one
  step and not the other makes ‖Δ̃ − Δ‖/‖Δ‖ ≈ 1 whatever the sketch; est ÷ true compares with the direction's error;
* the avg gap to retraining and its difference to the exact update's gap;
* time ÷ retraining and gradient passes over D_r (one pass timed in the same process), the rows the sketch holds
  (m·k × p) against the exact J_r (n_r·C × p).

Note on the CE class route: its default (``curvature_source="auto"``) is already a sketch (k = 1, m = max(n/4, 1024)):
the plain retain objective's minimizer does not depend on the curvature.  "exact" there is the forced exact J̃.

    python benchmarks/bench_sketch_grid.py [--quick] [--models fastntk_cnn_small] [--losses ce mse] [--seeds 0 1 2]
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks._common import markdown_table, set_threads, write_results  # noqa: E402
from benchmarks.bench_ce import recipe_arguments  # noqa: E402


def _grid(args):
    return [(k, m) for k in args.ks for m in args.ms]


def _mlabel(m: float) -> str:
    return {1.0: "n", 0.5: "n/2", 0.25: "n/4"}.get(m, f"{m:g}n")


def run_one(args, model, loss, scen, seed) -> dict:
    import torch

    from benchmarks.bench_ce import _cached_experiment, _config, _gradient_pass_seconds
    from fastntk.metrics import avg_gap
    from fastntk.unlearn import unlearn

    cfg = _config(args, model, scen, seed, seed if scen == "class" else 0)  # as bench_ce.py (its cached setups)
    if loss != "ce":
        cfg = dataclasses.replace(cfg, finetune_loss=loss, out_dir=cfg.out_dir + f"-{loss}")
    e = _cached_experiment(cfg, args.setups)
    gold = e.rows["retrain"]
    gp = _gradient_pass_seconds(e)
    n_r, C, p = int(e.retain.X.shape[0]), len(cfg.finetune_classes), e.peft.p
    out = {"model": model, "loss": loss, "scenario": scen, "seed": seed, "retrain_seconds": e.gold.seconds,
           "retrain_epochs": e.gold.log.epochs_run, "gradient_pass_seconds": gp, "n_r": n_r, "n_f": int(e.f_idx.size),
           "C": C, "p": p, "floor_gap": avg_gap(e.rows["retrain (seed 2)"], gold), "original_gap": avg_gap(e.rows["original"], gold),
           "runs": {}}
    kw = dict(trained_with=loss, w0=e.w0, check_overlap=False, memory_budget=cfg.memory_budget)

    def one(name, e=e, **extra):  # e bound here: the enclosing scope deletes it at the end
        e.peft.write(e.w_trained)
        t = time.perf_counter()
        res = unlearn(e.model, e.peft, (e.retain.X, e.retain.y), (e.forget.X, e.forget.y), **kw, **extra)
        sec = time.perf_counter() - t
        mt = e.evaluate(res.w_new)
        sk = res.info.get("sketch") or {}
        row = dict(seconds=sec, time_ratio=sec / max(e.gold.seconds, 1e-12), gradient_passes=sec / gp, avg_gap=avg_gap(mt, gold),
                   metrics={k: mt[k] for k in ("UA", "RA", "TA", "MIA")}, steps=res.info.get("steps"), ridge=res.info["ridge"],
                   est=sk.get("estimated_relative_error"), curvature=res.reasons.get("curvature_source", ""),
                   t=[h.get("t") for h in res.info.get("newton", {}).get("history", []) if "t" in h],
                   harm_scale=res.info["harm_check"]["scale"],
                   timings={k: float(v) for k, v in res.timings.items()})
        print(f"  {model} {loss} {scen} {seed}: {name}: gap {row['avg_gap']:.2f} pp, {sec:.1f}s ({row['gradient_passes']:.1f} gp), "
              f"steps {row['steps']}, est {row['est']}", flush=True)
        return res.delta.double().clone(), row

    d_exact, out["runs"]["exact"] = one("exact", curvature_source="exact")
    out["runs"]["exact"].update(rel_err=0.0, rows=n_r * C)
    for k, m in _grid(args):
        name = f"k={k}, m={_mlabel(m)}"
        try:
            d, row = one(name, curvature_source="sketch", sketch_k=k, sketch_m=None if m >= 1 else float(m), sketch_seed=seed)
        except Exception as exc:  # reported, not hidden
            out["runs"][name] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
            print(f"  {name}: {out['runs'][name]['error']}", flush=True)
            continue
        row.update(rel_err=float((d - d_exact).norm() / max(float(d_exact.norm()), 1e-300)), rows=int(round(m * n_r)) * k)
        ex = out["runs"]["exact"]
        if row["steps"] == 1 and ex["steps"] == 1 and row["t"] and ex["t"] and row["t"][0] and ex["t"][0]:
            # one accepted step each: the error of the Newton direction itself (what the half-sketch estimate targets),
            # apart from a line search or a harm check that took another step length
            s_sk, s_ex = d / (row["t"][0] * row["harm_scale"]), d_exact / (ex["t"][0] * ex["harm_scale"])
            row["direction_err"] = float((s_sk - s_ex).norm() / max(float(s_ex.norm()), 1e-300))
        out["runs"][name] = row
    if loss != "ce" and args.prepared:  # the prepared Unlearner (state of D, then the request), exact vs sketched factor
        from fastntk.unlearn import Unlearner

        lam = out["runs"]["exact"]["ridge"]  # the matched ridge of the exact one-shot run
        ref = None
        for k in [None] + list(args.prepared_ks):
            name = "prepared, exact" if k is None else f"prepared, k={k}"
            e.peft.write(e.w_trained)
            t = time.perf_counter()
            u = Unlearner(e.model, e.peft, (e.train.X, e.train.y), trained_with=loss, ridge=lam, w0=e.w0,
                          memory_budget=cfg.memory_budget, **({"curvature_source": "exact"} if k is None else
                                                              {"curvature_source": "sketch", "sketch_k": k, "sketch_seed": seed}))
            u.prepare()
            t_prep = time.perf_counter() - t
            res = u.forget(e.f_idx)
            t_req = time.perf_counter() - t - t_prep
            mt = e.evaluate(res.w_new)
            d = res.delta.double().clone()
            ref = d if ref is None else ref
            sk = res.info.get("sketch") or {}
            out["runs"][name] = dict(seconds=t_prep + t_req, prepare_seconds=t_prep, request_seconds=t_req,
                                     prepare_ratio=t_prep / max(e.gold.seconds, 1e-12), prepare_passes=t_prep / gp,
                                     time_ratio=(t_prep + t_req) / max(e.gold.seconds, 1e-12), gradient_passes=(t_prep + t_req) / gp,
                                     avg_gap=avg_gap(mt, gold), metrics={q: mt[q] for q in ("UA", "RA", "TA", "MIA")}, steps=1,
                                     ridge=lam, est=sk.get("estimated_relative_error"),
                                     rel_err=float((d - ref).norm() / max(float(ref.norm()), 1e-300)),
                                     rows=len(e.train) * (C if k is None else k))
            print(f"  {model} {loss} {scen} {seed}: {name}: prepare {t_prep:.1f}s ({t_prep / e.gold.seconds:.2f}× retrain, "
                  f"{t_prep / gp:.1f} gp), request {t_req:.2f}s, gap {out['runs'][name]['avg_gap']:.2f} pp", flush=True)
    e.peft.write(e.w_trained)
    del e
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return out


def summarize(runs, names) -> tuple[dict, str]:
    groups = {}
    for r in runs:
        groups.setdefault((r["model"], r["loss"], r["scenario"]), []).append(r)
    summary, md = {}, []
    for (model, loss, scen), rs in groups.items():
        r0 = rs[0]
        md.append(f"### {model}, {'cross-entropy' if loss == 'ce' else 'MSE'} fine-tuning, "
                  f"{'one class' if scen == 'class' else 'random 10 %'} — n_r ≈ {r0['n_r']}, n_f ≈ {r0['n_f']}, p = {r0['p']}, "
                  f"C = {r0['C']}, {len(rs)} seed(s) (class = seed index); retraining {np.median([r['retrain_seconds'] for r in rs]):.1f} s "
                  f"median, epochs {', '.join(str(r['retrain_epochs']) for r in rs)}\n")
        md.append(f"Floor (retrain vs retrain, other seed) {np.mean([r['floor_gap'] for r in rs]):.2f} pp, untouched "
                  f"{np.mean([r['original_gap'] for r in rs]):.2f} pp (means over seeds).\n")
        rows, S = [], {}
        extra = sorted({n for r in rs for n in r["runs"] if n.startswith("prepared")}, key=lambda n: (n != "prepared, exact", n))
        for name in ["exact"] + names + extra:
            ok = [r["runs"][name] for r in rs if name in r["runs"] and "error" not in r["runs"][name]]
            if not ok:
                errs = [r["runs"][name]["error"] for r in rs if name in r["runs"]]
                rows.append([name] + ["failed: " + (errs[0][:60] if errs else "not run")] + [""] * 8)
                continue
            ex = [r["runs"]["exact"] for r in rs if name in r["runs"] and "error" not in r["runs"][name]]
            err = np.array([o["rel_err"] for o in ok])
            est = [o["est"] for o in ok if o.get("est") is not None]
            # the estimate is of the solve's error: against the direction's error where there is one (one-step requests)
            ratio = [o["est"] / o.get("direction_err", o["rel_err"]) for o in ok
                     if o.get("est") is not None and o.get("direction_err", o["rel_err"]) > 0]
            dgap = np.array([o["avg_gap"] - x["avg_gap"] for o, x in zip(ok, ex)])
            dirs = [o["direction_err"] for o in ok if o.get("direction_err") is not None]
            S[name] = dict(rel_err=float(err.mean()), est=float(np.mean(est)) if est else None,
                           direction_err=float(np.mean(dirs)) if len(dirs) == len(ok) else None,
                           t_differs=sum(1 for o, x in zip(ok, ex) if o.get("t", [None])[:1] != x.get("t", [None])[:1]
                                         or o.get("harm_scale") != x.get("harm_scale")),
                           est_over_true=[float(v) for v in ratio], gap=float(np.mean([o["avg_gap"] for o in ok])),
                           dgap=float(dgap.mean()), dgap_abs_max=float(np.abs(dgap).max()),
                           time_ratio=float(np.mean([o["time_ratio"] for o in ok])),
                           gradient_passes=float(np.mean([o["gradient_passes"] for o in ok])), rows=int(np.mean([o["rows"] for o in ok])))
            if name.startswith("prepared"):
                S[name]["prepare_ratio"] = float(np.mean([o["prepare_ratio"] for o in ok]))
                S[name]["prepare_passes"] = float(np.mean([o["prepare_passes"] for o in ok]))
                S[name]["request_seconds"] = float(np.mean([o["request_seconds"] for o in ok]))
            s = S[name]
            if name.startswith("prepared"):  # rel_err against the exact prepared update; time: preparation ÷ retrain
                rows.append([name + " (vs prepared exact)", "—" if name == "prepared, exact" else f"{s['rel_err']:.3f}",
                             "—" if s["est"] is None else f"{s['est']:.3f}",
                             "—" if not ratio else f"{min(ratio):.2f}–{max(ratio):.2f}", f"{s['gap']:.2f}",
                             f"{s['dgap']:+.2f} ({s['dgap_abs_max']:.2f})",
                             f"prepare {s['prepare_ratio']:.2f}, request {s['request_seconds']:.2f} s",
                             f"prepare {s['prepare_passes']:.1f}", f"{s['rows']:,}", "1"])
                continue
            rows.append([name, "—" if name == "exact" else f"{s['rel_err']:.3f}" + (
                             f" (direction {s['direction_err']:.3f}" + (f"; step length differs on {s['t_differs']}" if s["t_differs"] else "")
                             + ")" if s.get("direction_err") is not None else ""),
                         "—" if s["est"] is None else f"{s['est']:.3f}",
                         "—" if not ratio else f"{min(ratio):.2f}–{max(ratio):.2f}",
                         f"{s['gap']:.2f}", "—" if name == "exact" else f"{s['dgap']:+.2f} ({s['dgap_abs_max']:.2f})",
                         f"{s['time_ratio']:.2f}", f"{s['gradient_passes']:.1f}", f"{s['rows']:,}",
                         ", ".join(str(o["steps"]) for o in ok)])
        md.append(markdown_table(["curvature", "‖Δ̃ − Δ‖/‖Δ‖", "half-sketch est.", "est ÷ true (per seed)", "avg gap (pp)",
                                  "gap − exact's (max |·|)", "time ÷ retrain", "gradient passes", "rows held", "steps"], rows))
        md.append("")
        summary[f"{model}/{loss}/{scen}"] = S
    return summary, "\n".join(md)


def plot(runs, names, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({(r["model"], r["loss"], r["scenario"]) for r in runs})
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.6), squeeze=False)
    for ax, key in zip(axes[0], keys):
        rs = [r for r in runs if (r["model"], r["loss"], r["scenario"]) == key]
        x = np.arange(len(names))
        # the estimate's target: the Newton direction's error where each request took one step, else the update's
        true = [np.mean([r["runs"][n].get("direction_err", r["runs"][n]["rel_err"]) for r in rs if "rel_err" in r["runs"].get(n, {})]
                        or [np.nan]) for n in names]
        est = [np.mean([r["runs"][n]["est"] for r in rs if r["runs"].get(n, {}).get("est") is not None] or [np.nan]) for n in names]
        ax.bar(x - 0.2, true, 0.4, label="true error (Newton direction if one step)")
        ax.bar(x + 0.2, est, 0.4, label="half-sketch estimate")
        ax.set_xticks(x, names, rotation=60, fontsize=7)
        ax.set_title(f"{key[0]} {key[1]} {key[2]}", fontsize=9)
        ax.set_ylabel("relative error of Δ")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="digits smoke run")
    ap.add_argument("--models", nargs="+", default=["fastntk_cnn_small"])
    ap.add_argument("--losses", nargs="+", default=["ce", "mse"], choices=["ce", "mse"])
    ap.add_argument("--scenarios", nargs="+", default=["class", "random"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--ks", nargs="+", type=int, default=[1, 2, 4])
    ap.add_argument("--ms", nargs="+", type=float, default=[0.25, 0.5, 1.0])
    ap.add_argument("--prepared", action="store_true", help="MSE: also the prepared Unlearner, exact vs sketched factor")
    ap.add_argument("--prepared-ks", nargs="+", type=int, default=[1, 2])
    recipe_arguments(ap)  # as bench_ce.py, so that its cached setups are reused
    ap.add_argument("--name", default="sketch_grid")
    ap.add_argument("--out", default=None)
    ap.add_argument("--resummarize", default=None, metavar="JSON",
                    help="rewrite --name's tables and plot from the runs in JSON that match --models/--losses/--scenarios")
    args = ap.parse_args(argv)
    set_threads(args.threads)
    names = [f"k={k}, m={_mlabel(m)}" for k, m in _grid(args)]
    if args.resummarize:
        import json

        old = json.load(open(args.resummarize))
        runs = [r for r in old["runs"] if r["model"] in args.models and r["loss"] in args.losses and r["scenario"] in args.scenarios]
        summary, md = summarize(runs, names)
        write_results(args.name, {"args": old["args"], "runs": runs, "summary": summary, "environment": old.get("environment")},
                      f"Exact vs sketched curvature (issue 14), Fashion-MNIST 28 px, limit {old['args']['limit']}, "
                      f"{old['args']['threads']} thread(s); sketch seed = request seed.\n\n" + md, args.out)
        from benchmarks._common import RESULTS

        plot(runs, names, os.path.join(args.out or RESULTS, f"{args.name}.png"))
        return 0
    runs = []
    for model in args.models:
        for loss in args.losses:
            for scen in args.scenarios:
                for seed in args.seeds:
                    runs.append(run_one(args, model, loss, scen, seed))
                    summary, md = summarize(runs, names)  # written after every request (a long run keeps what it has)
                    head = (f"Exact vs sketched curvature (issue 14), {'digits (quick)' if args.quick else 'Fashion-MNIST 28 px'}, "
                            f"limit {args.limit}, {args.threads} thread(s); sketch seed = request seed.\n\n")
                    write_results(args.name, {"args": vars(args), "runs": runs, "summary": summary}, head + md, args.out)
    from benchmarks._common import RESULTS

    plot(runs, names, os.path.join(args.out or RESULTS, f"{args.name}.png"))
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
