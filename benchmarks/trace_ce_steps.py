"""Trace the CE Newton iteration of one class request on resnet10t (bench_ce's cached setup): avg gap after every step.

    OMP_NUM_THREADS=1 python benchmarks/trace_ce_steps.py   (needs the setup cached by bench_ce.py in /tmp/fastntk-bench)

Output: benchmarks/results/trace_ce_steps.log (what BENCHMARKS.md quotes for max_steps).
"""
import sys, time, torch
torch.set_num_threads(1)
import os
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.bench_ce import _config, _cached_experiment
from fastntk.metrics import avg_gap
from fastntk.update.tilted import tilted_newton, JacobianOptions
from fastntk.update.newton import NewtonOptions
from fastntk.update.solve import SolveContext
import argparse
args = argparse.Namespace(quick=False, limit=2000, epochs=30, patience=3, val=0.1, lr=1e-2, cache=None)
cfg = _config(args, "resnet10t", "class", 0, 0)
e = _cached_experiment(cfg, "/tmp/fastntk-bench/ce-setups")
gold = e.rows["retrain"]
print("floor", avg_gap(e.rows["retrain (seed 2)"], gold), "p", e.peft.p, flush=True)
ctx = SolveContext(rtol=1e-4, maxiter=None, preconditioner="none", precond_rank=0, backend="auto", callback=None, on_fail="raise", progress=False)
t = time.time()
def cb(k, w):
    m = e.evaluate(w)
    print(f"step {k}: gap {avg_gap(m, gold):.2f} UA {m['UA']:.3f} RA {m['RA']:.3f} TA {m['TA']:.3f} MIA {m['MIA']:.3f}  {time.time()-t:.0f}s", flush=True)
r = tilted_newton(e.peft, (e.retain.X, e.retain.y), (e.forget.X, e.forget.y), w_trained=e.w_trained, w0=e.w0, loss="ce", ridge="auto",
                  newton=NewtonOptions(max_steps=16, stop_on_growth=False), jac=JacobianOptions(), ctx=ctx, tilt=False, on_step=cb)
print(r.newton.stop_reason, [round(h['decrement'],2) for h in r.newton.history])
