"""Forget-set size at fixed n: does ``unlearn(form="auto")`` choose the fastest form, and how close is it to retraining?

Setting (as bench_pipeline.py): Fashion-MNIST, ``--limit`` fine-tuning images (default 10k) of classes 5–9 at
``--size`` px, backbone pretrained on classes 0–4 (cached), BN + head PEFT of ``fastntk_cnn_small``, linearized MSE
fine-tuning -- done once.  The unlearning ridge is matched once on D (``fastntk.unlearn.match_ridge``; it does not
depend on the forget set).  Then for each forget set -- random fractions {0.1 %, 1 %, 10 %, 30 %, 50 %} and whole
classes (1 and 2 of the 5 fine-tuning classes):

* the gold retrain (the fine-tuning recipe on D_r, ``fastntk.baselines.retrain``), once;
* ``unlearn(form="auto")``: wall time, the form it chose and why (``result.form``, ``result.reasons``);
* each other form forced (primal, woodbury, dual; dense is listed as skipped when its (n_r·C)² float64 NTK does not
  fit ``--dense-gb``), with ``on_fail="warn"`` (a solve that does not reach its tolerance is marked "not converged"
  instead of aborting the form), and auto's own choice forced once more: the same computation, so its time
  difference to the auto run measures the timing noise of this shared machine;
* the avg gap (``fastntk.metrics.avg_gap``: mean |UA, RA, TA, MIA − retrain| in pp) of every result to the retrain.

The dual form (nested CG: every matvec of its Schur complement runs an inner CG solve with ``K_rr``) is piloted first
when ``n_r·C > --dual-max-nc``: one ``K_rr`` solve at the outer tolerance; when the resulting lower estimate of its
cost (outer iterations ≈ that solve's iterations, each one such solve) exceeds ``--dual-budget`` seconds the form is
skipped and the estimate reported.

    python benchmarks/bench_forget_size.py [--quick] [--limit 10000] [--fractions 0.001 0.01 0.1 0.3 0.5] [--classes 1 2]

Writes ``<out>/forget_size.json``, ``.md`` and ``.png`` (``forget_size_quick.*`` with ``--quick``: digits, 300 images).
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import time
import warnings

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from benchmarks import _finetuned  # noqa: E402
from benchmarks._common import environment, write_results  # noqa: E402

FORMS = ("primal", "woodbury", "dual", "dense")


def _iters(res) -> dict:
    out = {}
    for k, v in res.solves.items():
        it = v.get("iterations") if isinstance(v, dict) else getattr(v, "iterations", None)
        out[k] = int(np.sum(it)) if it is not None else None
    return out


def _run(S, lam, r_idx, f_idx, form, budget, on_fail="raise"):
    """One ``unlearn`` call from the fine-tuned weights: (result, wall seconds)."""
    from fastntk.unlearn import unlearn

    S.restore()
    X, y = S.train.X, S.train.y
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # on_fail="warn": non-convergence is recorded from res.solves instead
        res = unlearn(S.model, S.peft, (X[r_idx], y[r_idx]), (X[f_idx], y[f_idx]), trained_with="linearized-mse", ridge=lam, w0=S.w0, form=form,
                      memory_budget=budget, on_fail=on_fail, check_overlap=False)  # disjoint by index; images may repeat
    return res, time.perf_counter() - t


def _converged(res) -> bool:
    ok = [v.get("converged", True) if isinstance(v, dict) else bool(np.all(getattr(v, "converged", True))) for v in res.solves.values()]
    return bool(all(ok))


def _dual_estimate(S, lam, r_idx, budget) -> dict:
    """Pilot for the dual form: one ``K_rr`` solve on the cached J_r at the outer tolerance 1e-4 (the inner solves
    of the Schur matvecs ask for 100× less), so the estimate built from it is a lower bound."""
    from fastntk.operators import NTKLinearOperator, make_jacobian
    from fastntk.solvers import cg

    t = time.perf_counter()
    src = make_jacobian(S.peft, S.train.X[r_idx], w=S.w0, strategy="auto", memory_budget=budget)
    t_j = time.perf_counter() - t
    K = NTKLinearOperator(src, lam)
    b = np.random.default_rng(0).standard_normal(src.nC).astype(np.float32)
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = cg(K.to_scipy(), b, rtol=1e-4, maxiter=1000, on_fail="warn")
    t_s = time.perf_counter() - t
    it = max(1, int(res.iterations))
    return {"jacobian_s": t_j, "inner_iterations": it, "inner_converged": bool(res.converged), "seconds_per_inner_solve": t_s,
            "seconds_per_inner_iteration": t_s / it}


def _point(S, lam, spec, args, log) -> dict:
    r_idx, f_idx = S.split(spec)
    n_r, n_f, C = r_idx.size, f_idx.size, S.k
    label = f"random {100 * spec[1]:g} %" if spec[0] == "random" else f"class × {len(spec[1])} ({', '.join(map(str, spec[1]))})"
    row = {"forget": label, "kind": spec[0], "spec": spec[1] if spec[0] == "random" else list(spec[1]), "n_retain": int(n_r),
           "n_forget": int(n_f), "fraction": n_f / S.n, "runs": {}, "skipped": {}}
    gold = S.retrain(f_idx)
    row["retrain_s"] = gold.seconds
    log(f"{label}: n_f={n_f}, retrain {gold.seconds:.1f}s")

    def record(name, res, wall):
        m = S.evaluate(res.w_new, r_idx, f_idx, gold.w)
        from fastntk.metrics import avg_gap

        m["avg_gap"] = avg_gap(m, gold_m)
        row["runs"][name] = {"form": res.form, "strategy": res.strategy, "seconds": wall, "timings": res.timings,
                             "form_seconds": wall - res.timings.get("jacobian", 0.0),
                             "iterations": _iters(res), "matvecs": res.matvecs, "avg_gap": m["avg_gap"],
                             "metrics": {k: m[k] for k in ("UA", "RA", "TA", "MIA", "AD_f", "avg_gap")},
                             "delta_norm": float(res.delta.norm()), "reasons": res.reasons, "converged": _converged(res)}
        log(f"  {name:>16s}: {res.form}/{res.strategy} {wall:7.2f}s  gap {m['avg_gap']:.2f} pp  {res.timings}")
        return res

    gold_m = S.evaluate(gold.w, r_idx, f_idx, gold.w)
    auto, t_auto = _run(S, lam, r_idx, f_idx, "auto", args.memory_budget)
    row["auto_form"], row["auto_reasons"] = auto.form, auto.reasons
    record("auto", auto, t_auto)
    same, t_same = _run(S, lam, r_idx, f_idx, auto.form, args.memory_budget)
    record(f"{auto.form} (= auto)", same, t_same)
    for form in args.forms:
        if form == auto.form:
            continue
        if form == "dense":
            need = (n_r * C) ** 2 * 8 / 1e9
            if need > args.dense_gb:
                row["skipped"][form] = f"infeasible: the dense NTK (n_r·C)² float64 needs {need:,.1f} GB > {args.dense_gb:g} GB"
                log(f"  {form:>16s}: skipped ({row['skipped'][form]})")
                continue
        if form == "dual":
            if n_r * C > args.dual_max_nc:
                est = _dual_estimate(S, lam, r_idx, args.memory_budget)
                outer = max(est["inner_iterations"], 1)  # the Schur complement is no better conditioned than K_rr
                est["estimate_s"] = est["jacobian_s"] + est["seconds_per_inner_solve"] * (outer + 2)
                row["dual_pilot"] = est
                if est["estimate_s"] > args.dual_budget:
                    row["skipped"][form] = (f"infeasible here: nested CG ≥ {outer} outer × {est['inner_iterations']}"
                                            f"{'' if est['inner_converged'] else '+ (not converged)'} inner iterations ≥ "
                                            f"{est['estimate_s']:,.0f} s (pilot K_rr solve to 1e-4: {est['seconds_per_inner_solve']:.1f} s) "
                                            f"> budget {args.dual_budget:g} s")
                    log(f"  {form:>16s}: skipped ({row['skipped'][form]})")
                    continue
        try:
            res, wall = _run(S, lam, r_idx, f_idx, form, args.memory_budget, on_fail="warn")
        except Exception as e:  # noqa: BLE001 - a form that fails is a result too
            row["skipped"][form] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
            log(f"  {form:>16s}: {row['skipped'][form]}")
            continue
        rec = record(form, res, wall)
        row["runs"][form]["rel_diff_to_auto"] = float((rec.delta - auto.delta).norm() / max(float(auto.delta.norm()), 1e-30))
    S.restore()
    # every form builds the same J_r, J_f (same strategy): the form changes only what comes after ("form seconds")
    runs = row["runs"]
    others = {k: v for k, v in runs.items() if k not in ("auto", f"{auto.form} (= auto)") and v.get("converged", True)}
    for key, what in (("", "seconds"), ("_form", "form_seconds")):
        a, b = runs["auto"][what], runs[f"{auto.form} (= auto)"][what]
        best = min((v[what] for v in others.values()), default=float("inf"))
        row[f"timing_noise{key}_s"] = abs(a - b)  # the same computation timed twice
        row[f"auto_fastest{key}"] = bool(a <= best)
        # auto's choice (timed twice) against the others: best of its two runs, margin = the measured noise
        row[f"auto_fastest{key}_within_noise"] = bool(min(a, b) <= best + abs(a - b))
        row[f"fastest_other{key}"] = min(others, key=lambda k: others[k][what]) if others else None
    return row


def _markdown(payload) -> str:
    rows, h = payload["rows"], payload["header"]
    forms = [f for f in FORMS if f in payload["args"]["forms"]]
    out = [
        f"n = {h['n']:,} fine-tuning images ({h['dataset']}, {h['image_size']} px), {h['model']} BN + head (p = {h['p']:,}, C = {h['C']}), "
        f"linearized MSE fine-tuning ({h['epochs']} epochs, {h['finetune_s']:.1f}s, once); unlearning ridge matched once on D: "
        f"λ = {h['ridge']:.4g} ({h['ridge_s']:.1f}s, not in the times below); memory budget {h['memory_budget'] / 1e9:g} GB for a cached J; "
        f"{h['torch_threads']} torch thread(s).",
        "",
        "Seconds: `unlearn` wall time from the fine-tuned weights, and in parentheses the part after the Jacobian phase (factor + "
        "solve: every form builds the same J_r, J_f with the same strategy, so this is the part the form decides). `auto →`: the form "
        "auto chose; auto's choice forced once more is the noise gauge (the same computation timed twice: |difference| of totals, "
        "and of the parts after J). auto fastest, judged on the part after J: yes = strictly fastest; ≈ = within the noise gauge; "
        "no (form) = that form was faster beyond the noise; the wall-time verdict is in the JSON (`auto_fastest`). Forms whose solve did "
        "not converge are marked and not counted. avg gap in pp to the gold retrain (lower is better).",
        "",
        "| forget set | n_f | auto → | auto s | " + " | ".join(f"{f} s" for f in forms) + " | noise s | retrain s | auto ÷ retrain | auto fastest | "
        "avg gap auto | max gap other forms | max ‖Δ−Δ_auto‖/‖Δ_auto‖ |",
        "|---|---:|---|---:|" + "---:|" * len(forms) + "---:|---:|---:|:-:|---:|---:|---:|",
    ]
    notes = []
    for r in rows:
        runs = r["runs"]
        cells = []
        for f in forms:
            if f == r["auto_form"]:
                cells.append("(auto)")
            elif f in runs:
                cells.append(f"{runs[f]['seconds']:.2f} ({runs[f]['form_seconds']:.2f})" + ("" if runs[f].get("converged", True) else " not converged"))
            else:
                cells.append("skipped" if f in r["skipped"] else "–")
                if f in r["skipped"]:
                    notes.append(f"- {r['forget']}, {f}: {r['skipped'][f]}")
        other = [v for k, v in runs.items() if k in FORMS and k != r["auto_form"]]
        gap_o = max((v["avg_gap"] for v in other), default=float("nan"))
        dif_o = max((v.get("rel_diff_to_auto", float("nan")) for v in other), default=float("nan"))
        fast = "yes" if r["auto_fastest_form"] else ("≈" if r["auto_fastest_form_within_noise"] else f"no ({r['fastest_other_form']})")
        a = runs["auto"]
        out.append(f"| {r['forget']} | {r['n_forget']:,} | {r['auto_form']} | {a['seconds']:.2f} ({a['form_seconds']:.2f}) | " + " | ".join(cells) +
                   f" | {r['timing_noise_s']:.2f} ({r['timing_noise_form_s']:.2f}) | {r['retrain_s']:.1f} | {a['seconds'] / r['retrain_s']:.2f} | {fast} | "
                   f"{a['avg_gap']:.2f} | {gap_o:.2f} | {dif_o:.1e} |")
    reasons = {}
    for r in rows:
        reasons.setdefault(r["auto_reasons"].get("form", ""), []).append(r["forget"])
    out += ["", "Why auto chose what it chose (`result.reasons['form']`):", ""]
    out += [f"- {k} — {', '.join(v)}" for k, v in reasons.items()]
    if notes:
        out += ["", "Skipped:", ""] + sorted(set(notes))
    out += ["", "Phases of the auto run (s): " + "; ".join(
        f"{r['forget']}: " + ", ".join(f"{k} {v:.2f}" for k, v in r["runs"]["auto"]["timings"].items()) for r in rows)]
    return "\n".join(out)


def _plot(payload) -> bytes | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:  # noqa: BLE001 - plotting is optional
        return None
    rows = payload["rows"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    colors = {"auto": "k", "primal": "#2a7", "woodbury": "#47a", "dual": "#c63", "dense": "#999"}
    for kind, mk in (("random", "o"), ("class", "s")):
        rs = sorted([r for r in rows if r["kind"] == kind], key=lambda r: r["fraction"])
        if not rs:
            continue
        x = [r["fraction"] for r in rs]
        for name in ("auto", "primal", "woodbury", "dual"):
            pts = [(xx, (r["runs"].get(name) or {}).get("seconds")) for xx, r in zip(x, rs)]
            pts = [(a, b) for a, b in pts if b is not None]
            if pts:
                ax1.plot(*zip(*pts), marker=mk, ls="-" if kind == "random" else ":", color=colors[name], lw=2.2 if name == "auto" else 1,
                         label=f"{name} ({kind})")
        ax1.plot(x, [r["retrain_s"] for r in rs], marker=mk, ls="--", color="#d4a017", label=f"retrain ({kind})")
        ax2.plot(x, [r["runs"]["auto"]["avg_gap"] for r in rs], marker=mk, color="k", ls="-" if kind == "random" else ":", label=f"auto ({kind})")
    for ax in (ax1, ax2):
        ax.set_xscale("log")
        ax.set_xlabel("forget fraction n_f / n")
    ax1.set_ylabel("wall seconds")
    ax1.set_title("unlearn time by form (auto bold)")
    ax1.legend(fontsize=6, ncol=2)
    ax2.set_ylabel("avg gap to retrain (pp)")
    ax2.set_title("quality of the auto result")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _finetuned.add_setting_args(ap, "digits, 300 images, 3 forget sets, no dense form (≤ 2 min)")
    ap.add_argument("--fractions", type=float, nargs="*", default=None, help="random forget fractions (default 0.001 0.01 0.1 0.3 0.5)")
    ap.add_argument("--classes", type=int, nargs="*", default=None, help="numbers of whole classes to forget (default 1 2)")
    ap.add_argument("--forms", nargs="+", default=None, help="forms to force (default primal woodbury dual dense; quick: no dense)")
    ap.add_argument("--dense-gb", type=float, default=4.0, help="largest dense NTK (float64) to try")
    ap.add_argument("--dual-budget", type=float, default=300.0, help="skip the dual form when its pilot estimate exceeds this (s)")
    ap.add_argument("--dual-max-nc", type=int, default=5000, help="n_r·C above which the dual form is piloted first")
    ap.add_argument("--name", default="forget_size")
    args = ap.parse_args(argv)
    fractions = args.fractions if args.fractions is not None else ([0.1, 0.5] if args.quick else [0.001, 0.01, 0.1, 0.3, 0.5])
    args.forms = args.forms or (["primal", "woodbury", "dual"] if args.quick else list(FORMS))
    classes = args.classes if args.classes is not None else ([1] if args.quick else [1, 2])
    name = args.name + ("_quick" if args.quick else "")
    import torch

    from fastntk.unlearn import match_ridge

    S, log, t0 = _finetuned.setup(args)
    cfg = S.cfg
    t = time.perf_counter()
    lam, _ = match_ridge(S.peft, (S.train.X, S.train.y), w_trained=S.w_trained, w0=S.w0, memory_budget=args.memory_budget)
    t_ridge = time.perf_counter() - t
    log(f"matched ridge λ = {lam:.4g} in {t_ridge:.1f}s")
    specs = [("random", f) for f in fractions] + [("class", list(range(c))) for c in classes]
    rows = [_point(S, lam, spec, args, log) for spec in specs]
    header = dict(n=S.n, dataset=cfg.dataset, image_size=cfg.image_size, model=cfg.model, p=S.peft.p, C=S.k, epochs=cfg.epochs,
                  finetune_s=S.finetune_seconds, ridge=lam, ridge_s=t_ridge, memory_budget=args.memory_budget,
                  torch_threads=torch.get_num_threads())
    payload = {"args": vars(args), "quick": args.quick, "header": header, "rows": rows, "environment": environment(),
               "wall_s": time.perf_counter() - t0}
    md = _markdown(payload)
    jp, mp = write_results(name, payload, md, args.out)
    png = _plot(payload)
    if png is not None:
        from fastntk.io import atomic_write_bytes

        atomic_write_bytes(os.path.join(args.out, f"{name}.png"), png)
    print(md)
    log(f"wrote {jp}, {mp}" + (" and the plot" if png else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
