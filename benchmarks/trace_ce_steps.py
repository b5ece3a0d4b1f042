"""Trace the CE Newton iteration of class requests (bench_ce's cached setups): avg gap to retraining after every step.

    OMP_NUM_THREADS=1 python benchmarks/trace_ce_steps.py --models fastntk_cnn_small --classes 0 1 2
    (needs the setups cached by bench_ce.py in /tmp/fastntk-bench/ce-setups; a missing one is trained first)

Runs the library's default iteration for class requests (plain retain objective, ``ridge="auto"``, LM-damped steps,
preconditioning sketch) with ``max_steps`` 16 and no decrement stop, and scores the model after every accepted step:
what the stopping rule's threshold (``rel_decrement``, δ²_k/δ²_1) buys at each step.  Writes
``benchmarks/results/<name>.json`` and ``.md`` (one row per step: δ²_k/δ²_1, avg gap, seconds).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._common import environment, markdown_table, set_threads, write_results  # noqa: E402
from benchmarks.bench_ce import recipe_arguments  # noqa: E402


def trace_one(args, model: str, seed: int, cls: int) -> dict:
    from benchmarks.bench_ce import _cached_experiment, _config
    from fastntk.metrics import avg_gap
    from fastntk.update.newton import NewtonOptions
    from fastntk.update.solve import SolveContext
    from fastntk.update.tilted import JacobianOptions, tilted_newton

    cfg = _config(args, model, "class", seed, cls)
    e = _cached_experiment(cfg, args.setups)
    gold = e.rows["retrain"]
    floor = avg_gap(e.rows["retrain (seed 2)"], gold)
    ctx = SolveContext(rtol=1e-4, maxiter=None, preconditioner="none", precond_rank=0, backend="auto", callback=None,
                       on_fail="raise", progress=False)
    rows, t0, spent = [], time.perf_counter(), [0.0]

    def cb(k, w):
        t = time.perf_counter()
        m = e.evaluate(w)
        spent[0] += time.perf_counter() - t  # scoring is not the iteration's time
        rows.append({"step": k, "gap": avg_gap(m, gold), "UA": m["UA"], "RA": m["RA"], "TA": m["TA"], "MIA": m["MIA"],
                     "seconds": time.perf_counter() - t0 - spent[0]})
        print(f"  {model} class {cls}: step {k}: gap {rows[-1]['gap']:.2f} (floor {floor:.2f}) {rows[-1]['seconds']:.0f}s",
              flush=True)

    r = tilted_newton(e.peft, (e.retain.X, e.retain.y), (e.forget.X, e.forget.y), w_trained=e.w_trained, w0=e.w0, loss="ce",
                      ridge="auto", newton=NewtonOptions(max_steps=args.max_steps, rel_decrement=0.0, stop_on_growth=False),
                      jac=JacobianOptions(), ctx=ctx, tilt=False, on_step=cb)
    hist = [h for h in r.newton.history if "t" in h]
    d1 = hist[0]["decrement"] if hist else float("nan")
    for row, h in zip(rows, hist):
        row.update(rel_decrement=h["decrement"] / d1, t=h["t"], rho=h.get("rho"),
                   rel_drop=(h["objective_before"] - h["objective_after"]) / max(hist[0]["objective_before"] - hist[0]["objective_after"], 1e-300))
    return {"model": model, "seed": seed, "class": cls, "floor": floor, "retrain_seconds": e.gold.seconds, "stop": r.newton.stop_reason, "steps": rows}


def stop_step(steps: list, rel: float) -> int:
    """The step at which the default stopping rule (:func:`fastntk.update.newton.converged`, LM damping) with threshold
    ``rel`` would have stopped this traced iteration; else the last step."""
    from fastntk.update.newton import converged

    for s in steps:
        if s["step"] > 1 and converged(s["rel_decrement"], 1.0, s["rel_drop"], 1.0, s.get("rho") or 0.0, rel):
            return s["step"]
    return len(steps)


def threshold_study(files: list, rels=(0.05, 0.1, 0.15, 0.2, 0.25, 0.3)) -> tuple[dict, str]:
    """Replay the stopping rule on traced iterations (the traces ran without the decrement stop, so every threshold's
    iterate is in them): per threshold the stopping step and avg gap of each request, their means."""
    import json

    runs = [(f"{r['model']} c{r['class']}", r) for f in files for r in json.load(open(f))["runs"]]
    out, rows = {}, []
    for rel in rels:
        per = {name: (k := stop_step(r["steps"], rel), r["steps"][k - 1]["gap"]) for name, r in runs}
        out[str(rel)] = {"per_request": per, "mean_gap": sum(g for _, g in per.values()) / len(per),
                         "mean_steps": sum(k for k, _ in per.values()) / len(per)}
        rows.append([rel, f"{out[str(rel)]['mean_gap']:.2f}", f"{out[str(rel)]['mean_steps']:.1f}"]
                    + [f"{k} / {g:.2f}" for k, g in per.values()])
    head = ["rel_decrement", "mean gap", "mean steps"] + [f"{n} (floor {r['floor']:.2f})" for n, r in runs]
    md = ("The stopping rule replayed on the traced iterations at other thresholds (steps / avg gap in pp of each request; "
          "the default is 0.05).\n\n" + markdown_table(head, rows) + "\n")
    return out, md


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["fastntk_cnn_small"])
    ap.add_argument("--classes", type=int, nargs="+", default=[0], help="forgotten class per run (seed = index, as bench_ce)")
    recipe_arguments(ap)
    ap.add_argument("--max-steps", type=int, default=16)
    ap.add_argument("--name", default="trace_ce_steps")
    ap.add_argument("--out", default=None)
    ap.add_argument("--threshold-study", nargs="+", default=None, metavar="JSON",
                    help="replay the stopping rule at other thresholds on these traces' JSON files, run nothing")
    args = ap.parse_args(argv)
    args.quick = False
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    if args.threshold_study:
        study, md = threshold_study(args.threshold_study)
        write_results(args.name, {"env": environment(), "args": vars(args), "study": study}, md, out)
        print(md)
        return 0
    set_threads(args.threads)
    runs = [trace_one(args, m, i, c) for m in args.models for i, c in enumerate(args.classes)]
    lines = ["Class requests, the default iteration run to 16 steps without the decrement stop, scored after every step "
             "(avg gap to retraining, pp; seconds of the iteration without the scoring). δ²/δ²₁: the stopping rule's "
             "statistic (the default stops at ≤ 0.05, with the step's decrease ≤ 0.05 of the first and ρ ≥ ¼).\n"]
    for r in runs:
        lines.append(f"### {r['model']}, class {r['class']} (seed {r['seed']}) — floor {r['floor']:.2f} pp, retraining "
                     f"{r['retrain_seconds']:.1f} s\n")
        lines.append(markdown_table(["step", "δ²/δ²₁", "decrease/first", "t", "avg gap", "UA", "RA", "TA", "seconds"],
                                    [[s["step"], f"{s.get('rel_decrement', float('nan')):.3g}", f"{s.get('rel_drop', float('nan')):.3g}",
                                      s.get("t"), f"{s['gap']:.2f}", f"{100 * s['UA']:.1f}", f"{100 * s['RA']:.1f}",
                                      f"{100 * s['TA']:.1f}", f"{s['seconds']:.1f}"] for s in r["steps"]]))
        lines.append("")
    md = "\n".join(lines)
    write_results(args.name, {"env": environment(), "args": vars(args), "runs": runs}, md, out)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
