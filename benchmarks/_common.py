"""Shared helpers for the benchmark scripts.

* :func:`set_threads` -- ``torch.set_num_threads`` (recorded in the environment info);
  on a shared or busy machine, fewer threads than cores gives steadier ratios:
  an oversubscribed OpenMP pool makes single timings vary by 5x and more.
* :func:`environment` -- torch / Python / CPU count / threads / load average.
* :class:`PeakRSS` -- peak resident memory during a block, sampled by a thread with
  ``psutil`` (falls back to ``resource.getrusage`` high-water mark when psutil is absent).
* :func:`time_interleaved` -- medians (and minima) of several runs of several
  functions, run round-robin after a warm-up so that load changes hit all alike.
* :func:`write_results` -- ``benchmarks/results/<name>.json`` and ``<name>.md``;
  :func:`publish` -- the same for a ``--quick``-aware name, printing the Markdown;
* :func:`clock_log` -- ``log(msg)`` printing the seconds since it was made.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import threading
import time
from typing import Callable, Mapping

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def set_threads(n: int | None) -> int:
    import torch

    if n:
        torch.set_num_threads(int(n))
    return torch.get_num_threads()


def environment() -> dict:
    import torch

    env = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }
    try:
        env["loadavg_1_5_15"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    for mod in ("timm", "curvlinops", "numpy", "psutil"):
        try:
            m = __import__(mod)
            env[mod] = getattr(m, "__version__", "installed")
        except Exception:  # noqa: BLE001 - optional packages
            env[mod] = None
    if env.get("curvlinops") == "installed":
        try:
            from importlib.metadata import version

            env["curvlinops"] = version("curvlinops-for-pytorch")
        except Exception:  # noqa: BLE001
            pass
    return env


def rss_bytes() -> int:
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


class PeakRSS:
    """``with PeakRSS() as m: ...`` then ``m.peak`` (bytes) and ``m.delta`` (peak − start)."""

    def __init__(self, interval: float = 0.005):
        self.interval = interval
        self.peak = 0
        self.start = 0

    def _poll(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.interval)

    def __enter__(self):
        self.start = rss_bytes()
        self.peak = self.start
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._poll, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, rss_bytes())
        return False

    @property
    def delta(self) -> int:
        return self.peak - self.start


def time_interleaved(fns: Mapping[str, Callable[[], object]], repeats: int = 3, warmup: int = 1, log=print,
                     clock: Callable[[], float] = time.perf_counter) -> dict:
    """Run each function ``warmup`` times, then ``repeats`` rounds, round-robin.

    Returns ``{name: {"median_s", "min_s", "times_s", "peak_rss_mb"}}``; the peak RSS
    is the largest increase over the resident size at the start of a run.  ``clock``:
    wall time by default; ``time.thread_time`` counts only this thread's CPU time (with
    one torch thread, the time other processes on a shared machine take is left out).
    """
    for name, fn in fns.items():
        for _ in range(warmup):
            fn()
        log(f"  warm-up done: {name}")
    times = {n: [] for n in fns}
    peaks = {n: 0 for n in fns}
    for r in range(repeats):
        for name, fn in fns.items():
            with PeakRSS() as m:
                t = clock()
                fn()
                dt = clock() - t
            times[name].append(dt)
            peaks[name] = max(peaks[name], m.delta)
        log(f"  round {r + 1}/{repeats}: " + ", ".join(f"{n}={times[n][-1]:.3f}s" for n in fns))
    return {
        n: {
            "median_s": statistics.median(times[n]),
            "min_s": min(times[n]),
            "times_s": times[n],
            "peak_rss_mb": peaks[n] / 2**20,
        }
        for n in fns
    }


def markdown_table(header: list[str], rows: list[list]) -> str:
    def fmt(x):
        if isinstance(x, float):
            return f"{x:.3g}" if abs(x) < 1000 else f"{x:.0f}"
        return str(x)

    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(fmt(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def write_results(name: str, payload: dict, markdown: str, outdir: str | None = None) -> tuple[str, str]:
    """Write ``<outdir>/<name>.json`` (payload + environment) and ``<name>.md``."""
    outdir = outdir or RESULTS
    os.makedirs(outdir, exist_ok=True)
    payload = dict(payload)
    payload.setdefault("environment", environment())
    payload.setdefault("written", time.strftime("%Y-%m-%d %H:%M:%S"))
    jp = os.path.join(outdir, f"{name}.json")
    mp = os.path.join(outdir, f"{name}.md")
    from fastntk.io import atomic_write_text  # files are written atomically (temp + rename)

    atomic_write_text(jp, json.dumps(payload, indent=2, default=str))
    env = payload["environment"]
    envline = ", ".join(f"{k}={v}" for k, v in env.items())
    atomic_write_text(mp, markdown.rstrip() + f"\n\nEnvironment: {envline}\n")
    return jp, mp


def clock_log():
    """A ``log(msg)`` that prints ``[seconds since now] msg`` (flushed)."""
    t0 = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - t0:6.1f}s] {msg}", flush=True)

    log.t0 = t0
    return log


def publish(name: str, quick: bool, payload: dict, markdown: Callable[[dict], str], outdir: str | None, log=print) -> tuple[str, str]:
    """Add environment and wall time to ``payload``, write ``<name>[_quick].json/.md``, print the Markdown."""
    payload = dict(payload, environment=environment())
    if hasattr(log, "t0"):
        payload["wall_s"] = time.perf_counter() - log.t0
    md = markdown(payload)
    jp, mp = write_results(name + ("_quick" if quick else ""), payload, md, outdir)
    print(md)
    log(f"wrote {jp} and {mp}")
    return jp, mp
