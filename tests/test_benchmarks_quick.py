"""Smoke runs of the benchmark scripts' ``--quick`` modes (subprocess, results into a temporary folder)."""
import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow


def _run_quick(script: str, out, *extra: str) -> None:
    r = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", script), "--quick", "--out", str(out), *extra],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


def _load(out, name):
    files = sorted(os.listdir(out))
    assert f"{name}.json" in files and f"{name}.md" in files, files
    assert not any(f.startswith(name.replace("_quick", "") + ".") for f in files), "a quick run wrote the full results' name"
    with open(os.path.join(out, f"{name}.json"), encoding="utf-8") as fh:
        return json.load(fh)


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def test_forget_size_quick(tmp_path):
    _run_quick("bench_forget_size.py", tmp_path)
    d = _load(tmp_path, "forget_size_quick")
    assert os.path.isfile(tmp_path / "forget_size_quick.png")
    assert d["quick"] is True and d["environment"]["torch_threads"] >= 1 and "loadavg_1_5_15" in d["environment"]
    h = d["header"]
    assert h["n"] > 0 and _finite(h["ridge"]) and h["ridge"] > 0 and _finite(h["finetune_s"])
    rows = d["rows"]
    assert {r["kind"] for r in rows} == {"random", "class"} and len(rows) >= 3
    for r in rows:
        assert r["auto_form"] in ("primal", "dual", "woodbury") and r["auto_reasons"]["form"]
        assert 0 < r["n_forget"] < h["n"] and _finite(r["retrain_s"]) and r["retrain_s"] > 0
        assert isinstance(r["auto_fastest"], bool) and isinstance(r["auto_fastest_form"], bool)
        assert _finite(r["timing_noise_s"]) and _finite(r["timing_noise_form_s"])
        auto = r["runs"]["auto"]
        assert auto["form"] == r["auto_form"] and _finite(auto["seconds"]) and auto["seconds"] > 0
        assert _finite(auto["avg_gap"]) and auto["avg_gap"] >= 0 and _finite(auto["form_seconds"])
        forced = {k for k in r["runs"] if k in ("primal", "woodbury", "dual")} | set(r["skipped"])
        assert forced == {"primal", "woodbury", "dual"} - {r["auto_form"]}  # every other form was run or its skip explained
        for k, v in r["runs"].items():
            assert _finite(v["seconds"]) and _finite(v["avg_gap"]) and _finite(v["delta_norm"]), k
            if k in ("primal", "woodbury") and k != r["auto_form"]:  # the direct forms give auto's Δ (the truth test, float32)
                assert v["converged"] and v["rel_diff_to_auto"] < 1e-3
    md = (tmp_path / "forget_size_quick.md").read_text(encoding="utf-8")
    assert "| forget set |" in md and "Environment:" in md


def test_unlearn_vs_retrain_quick(tmp_path):
    _run_quick("bench_unlearn_vs_retrain.py", tmp_path)
    d = _load(tmp_path, "unlearn_vs_retrain_quick")
    assert d["quick"] is True and d["targets"] == {"ratio": 0.1, "avg_gap_pp": 1.5}
    assert "loadavg_1_5_15" in d["environment"]
    (sc,) = d["scenarios"]
    assert _finite(sc["noise_floor"]) and _finite(sc["ridge"]) and sc["retrain_seconds"]["median"] > 0
    rows = {r["route"]: r for r in sc["rows"]}
    assert "one-shot" in rows
    assert sc["source_kwarg"] == {"match_ridge": True, "Unlearner": True} and len(sc["rows"]) == 3
    for r in sc["rows"]:
        for key in ("seconds", "ratio"):
            assert all(_finite(x) and x > 0 for x in r[key]["all"]), (r["row"], key)
            assert r[key]["min"] <= r[key]["median"] <= r[key]["max"]
        assert _finite(r["avg_gap"]) and r["avg_gap"] >= 0 and isinstance(r["meets_target"], bool)
        assert r["phases_median_s"] and all(_finite(v) and v >= 0 for v in r["phases_median_s"].values())
    one, shared, req = sc["rows"]
    assert set(shared["phases_median_s"]) >= {"jacobian (J_D)", "ridge matching", "request"}
    # the three routes compute the same Δ (anchor "fit"), so they reach the same quality
    assert abs(one["avg_gap"] - shared["avg_gap"]) < 0.5 and shared["avg_gap"] == req["avg_gap"]
    assert req["seconds"]["median"] < shared["seconds"]["median"]


def test_variants_quick(tmp_path):
    _run_quick("bench_variants.py", tmp_path, "--scenarios", "class", "--variants", "paper + matched ridge (default)",
               "linearize at trained, anchor=retain, 2 steps")
    d = _load(tmp_path, "variants_quick")
    (run,) = d["runs"]
    assert _finite(run["ridge_match"]) and run["ridge_match"] > 0
    for name in ("paper + matched ridge (default)", "linearize at trained, anchor=retain, 2 steps", "FT", "GA", "NegGrad+"):
        m = run["methods"][name]
        assert "error" not in m and _finite(m["avg_gap"]) and m["avg_gap"] >= 0 and 0 <= m["UA"] <= 1, name
    assert run["methods"]["retrain"]["avg_gap"] == 0.0
    assert "Ranked by avg gap" in (tmp_path / "variants_quick.md").read_text(encoding="utf-8")


def test_precision_quick(tmp_path):
    _run_quick("bench_precision.py", tmp_path)
    rows = _load(tmp_path, "precision_quick")["rows"]
    ref = rows["float64 (reference)"]
    assert ref["rel_err_delta"] == 0.0 and ref["label_agreement"] == 1.0
    e = {k: v["rel_err_delta"] for k, v in rows.items() if "error" not in v}
    # float64 accumulation of a float32 J beats float32 accumulation, which beats TF32 inputs, which beat bfloat16 storage
    assert e["float32 Jacobian, float64 Gram"] <= e["float32 Jacobian, float32 Gram"] < e["TF32 Gram (inputs rounded)"]
    assert e["TF32 Gram (inputs rounded)"] < e["bfloat16 J storage"]


def test_ce_quick_times_retraining_in_process(tmp_path):
    """bench_ce also prices retraining under its own load: one epoch of the recipe timed next to the methods."""
    _run_quick("bench_ce.py", tmp_path, "--variants", "Fast-NTK (default)", "--baselines", "--setups", "")
    d = _load(tmp_path, "ce_quick")
    assert d["runs"]
    for r in d["runs"]:
        ep = r["retrain_epoch_seconds"]
        assert _finite(ep) and ep > 0
        assert r["retrain_seconds_now"] == pytest.approx(ep * r["epochs"]["retrain"][0])
        m = r["methods"]["Fast-NTK (default)"]
        assert _finite(m["time_ratio_now"]) and m["time_ratio_now"] == pytest.approx(m["seconds"] / r["retrain_seconds_now"])
    with open(tmp_path / "ce_quick.md", encoding="utf-8") as fh:
        assert "Retraining timed here" in fh.read()


def test_trace_ce_ridge_quick(tmp_path):
    """trace_ce_ridge scores the default update at every ridge multiplier and derives its picks from those rows: the best
    multiplier has the smallest gap, the loss-matched one the retain loss nearest the original's on D (in log)."""
    _run_quick("trace_ce_ridge.py", tmp_path, "--classes", "0", "--mults", "1", "2", "--setups", str(tmp_path / "setups"))
    d = _load(tmp_path, "trace_ce_ridge_quick")
    (r,) = d["runs"]
    assert [g["mult"] for g in r["grid"]] == [1.0, 2.0]
    assert r["grid"][1]["ridge"] == pytest.approx(2 * r["grid"][0]["ridge"])
    for g in r["grid"]:
        assert _finite(g["gap"]) and _finite(g["loss_Dr"]) and g["loss_Dr"] > 0
    assert r["best"]["gap"] == min(g["gap"] for g in r["grid"])
    tau = r["loss"]["original_D"]
    near = min(r["grid"], key=lambda g: abs(math.log(g["loss_Dr"] / tau)))
    assert r["loss_matched"] == {"mult": near["mult"], "gap": near["gap"]}
    assert os.path.isfile(tmp_path / "trace_ce_ridge_quick.png")


def test_scale_recipe_quick(tmp_path):
    """bench_scale_recipe --quick: fine-tuning and retraining by the early-stopped recipe, the unlearning between them,
    every figure recorded and the three models scored."""
    _run_quick("bench_scale_recipe.py", tmp_path, "--threads", "1")
    d = _load(tmp_path, "scale_recipe_resnet18_60k_quick")
    o = d["result"]
    assert d["quick"] is True and o["dataset"] == "digits" and o["n_images"] == 1200 and o["n_forget"] == o["n_train"] // 10
    for k in ("finetune", "retrain"):
        assert 1 <= o[k]["epochs_run"] <= 2 and _finite(o[k]["seconds"]) and len(o[k]["val_acc"]) == o[k]["epochs_run"]
    u = o["unlearn"]
    assert _finite(u["seconds"]) and _finite(u["gradient_passes"]) and _finite(u["x_retrain"]) and u["plan"]["stop"]
    assert set(o["metrics"]) == {"original", "Fast-NTK (default)", "retrain"}
    assert all(0 <= v[m] <= 1 for v in o["metrics"].values() for m in ("UA", "RA", "TA"))
    md = (tmp_path / "scale_recipe_resnet18_60k_quick.md").read_text(encoding="utf-8")
    assert "× the retraining" in md and "| retrain |" in md
