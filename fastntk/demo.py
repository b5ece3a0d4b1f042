"""``fastntk demo``: the embedded default, where forgetting is visible.

Digits (bundled with scikit-learn, no download), a small BN CNN pretrained on digits 0-4, BN + head PEFT
fine-tuned with **cross-entropy** on digits 5-9 (what most users have) until a validation split stops improving.
Two deletion requests on the same recipe:

* **one whole class** (the digit 5): the untouched model still recognises it (UA ≈ 0), retraining does not
  (UA ≈ 100 %) -- forgetting is visible in the table and the plot;
* **a random 10 %**: the untouched model is already close to retraining (random forgetting hardly moves these
  metrics), so the question there is only whether an update does harm.

Each row is scored against the gold retrain; a second retrain with another seed is the noise floor.  Writes
``demo.json``, ``demo.md`` and ``demo.png`` (per-method gap and time, the forgotten class's accuracy) plus each
scenario's own report in a subfolder.
"""
from __future__ import annotations

import dataclasses
import io
import logging
from pathlib import Path

log = logging.getLogger("fastntk")

__all__ = ["demo_config", "run_demo", "demo_markdown", "HOW_TO_READ"]

HOW_TO_READ = ("How to read: each row is the model after the request; avg gap = mean |UA, RA, TA, MIA − the retrained "
               "model's| in points (lower = closer to retraining, which is the goal, not the extreme of any metric); "
               "'retrain (seed 2)' is the noise floor (two retrainings differ that much); time = seconds ÷ retraining's.")


def demo_config(out_dir: str = "runs/demo", progress: bool = True, **overrides):
    """The demo's :class:`~fastntk.pipeline.ExperimentConfig` (class scenario; the random one replaces ``forget``)."""
    from .pipeline import ExperimentConfig

    base = dict(dataset="digits", image_size=16, model="fastntk_cnn_small", finetune="standard", finetune_loss="ce",
                epochs=30, patience=3, val_fraction=0.15, lr=1e-2, ridge=0.0, batch_size=64, pretrain_epochs=3,
                forget="class", forget_class=0, out_dir=out_dir, progress=progress)
    base.update(overrides)
    return ExperimentConfig(**base)


def run_demo(out_dir: str = "runs/demo", progress: bool = True, **overrides) -> tuple[dict, dict]:
    """Run both requests; return ``(result, paths)`` (result: ``{"class": …, "random": …}`` of
    :func:`fastntk.pipeline.run_experiment` results)."""
    from .io import atomic_write_json, atomic_write_text
    from .pipeline import run_experiment, write_report

    out = Path(out_dir)
    cfg = demo_config(str(out / "class"), progress, **overrides)
    results = {"class": run_experiment(cfg.validate()),
               "random": run_experiment(dataclasses.replace(cfg, forget="random", out_dir=str(out / "random")).validate())}
    for k, r in results.items():
        write_report(r, out / k)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": str(atomic_write_json(out / "demo.json", results)),
             "md": str(atomic_write_text(out / "demo.md", demo_markdown(results)))}
    png = _plot(results, out / "demo.png")
    if png:
        paths["png"] = png
    return results, paths


def demo_markdown(results: dict) -> str:
    """One table: per method, the class request (forgotten-class accuracy, avg gap, time) beside the random one."""
    c, r = results["class"]["methods"], results["random"]["methods"]
    cls = results["class"]["config"]["forget_class"]
    lines = [HOW_TO_READ, "",
             f"| method | class {cls}: accuracy on the forgotten class (%) | class: avg gap (pp) | class: time ÷ retrain | "
             "random 10 %: avg gap (pp) | random: time ÷ retrain |",
             "|---|---:|---:|---:|---:|---:|"]

    def fmt(x, pct=False):
        try:
            return "–" if x != x else (f"{100 * x:.1f}" if pct else f"{x:.2f}")
        except TypeError:
            return "–"

    for name in c:
        mc, mr = c[name], r.get(name, {})
        lines.append(f"| {name} | {fmt(1 - mc.get('UA', float('nan')), True)} | {fmt(mc.get('avg_gap', float('nan')))} | "
                     f"{fmt(mc.get('time_ratio', float('nan')))} | {fmt(mr.get('avg_gap', float('nan')))} | "
                     f"{fmt(mr.get('time_ratio', float('nan')))} |")
    lines += ["", f"Noise floor: class {results['class']['noise_floor']:.2f} pp, random {results['random']['noise_floor']:.2f} pp. "
              f"The Fast-NTK route taken: class — {results['class']['unlearn']['reasons'].get('anchor', '')}; random — "
              f"{results['random']['unlearn']['reasons'].get('anchor', '')}."]
    return "\n".join(lines) + "\n"


def _plot(results: dict, path: Path) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as e:  # plotting is optional
        log.warning("fastntk: demo plot not written (%s)", e)
        return None
    from .io import atomic_write_bytes

    c, r = results["class"]["methods"], results["random"]["methods"]
    names = [n for n in c if n != "retrain"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    colors = ["#888" if n.startswith("retrain") or n == "original" else "#2a7" if n.startswith("Fast-NTK") else "#47a" for n in names]
    axes[0].bar(names, [100 * (1 - c[n]["UA"]) for n in names], color=colors)
    axes[0].axhline(100 * (1 - c["retrain"]["UA"]), ls="--", c="k", lw=1, label="retrain")
    axes[0].set_title(f"accuracy on the forgotten class {results['class']['config']['forget_class']} (%)")
    axes[0].legend()
    for ax, res, title in ((axes[1], c, "avg gap to retrain, class (pp)"), (axes[2], r, "avg gap to retrain, random 10 % (pp)")):
        ax.bar(names, [res.get(n, {}).get("avg_gap", float("nan")) for n in names], color=colors)
        ax.set_title(title)
        for i, n in enumerate(names):
            t = res.get(n, {}).get("time_ratio", float("nan"))
            if t == t:
                ax.text(i, 0, f"{t:.2f}×", ha="center", va="bottom", fontsize=7, rotation=90)
    for ax in axes:
        plt.setp(ax.get_xticklabels(), rotation=30, ha="right", fontsize=8)
    fig.suptitle("fastntk demo (digits, CE fine-tuning): lower gap = closer to retraining; bar labels = time ÷ retraining")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return str(atomic_write_bytes(path, buf.getvalue()))
