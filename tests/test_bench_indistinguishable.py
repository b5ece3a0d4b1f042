"""Smoke run of ``benchmarks/bench_indistinguishable.py --quick`` (subprocess, results into a temporary folder)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from fastntk.data import FASHION_MNIST_DIR
from fastntk.evaluation import CHALLENGE_N_BINS, KLOM_EPS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow


@pytest.mark.skipif(not os.path.isdir(FASHION_MNIST_DIR), reason="Fashion-MNIST IDX files not installed")
def test_bench_indistinguishable_quick(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_indistinguishable.py"), "--quick", "--out", str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    files = set(os.listdir(tmp_path))
    assert {"indistinguishable_quick.json", "indistinguishable_quick.md"} <= files
    assert "indistinguishable.json" not in files  # a quick run never writes the full results' name
    with open(tmp_path / "indistinguishable_quick.json", encoding="utf-8") as fh:
        d = json.load(fh)
    assert d["quick"] is True and d["args"]["n"] == 4
    scen = {(x["finetune"], x["forget"]) for x in d["results"]}
    assert scen == {(f, k) for f in ("standard", "linearized") for k in ("class", "random")}
    kl_max, f_min = math.log1p(1 / KLOM_EPS), 2.0 / 2.0**CHALLENGE_N_BINS
    for res in d["results"]:
        assert f"indistinguishable_quick_{res['finetune']}_{res['forget']}.png" in files
        assert 0 < res["sizes"]["w0_max_entries_differing"] <= res["sizes"]["head_params"]  # seeds differ in the head only
        rows = res["rows"]
        want = {"oracle vs oracle (floor)", "untouched", "Fast-NTK", "Fast-NTK (prepared)", "FT", "GA", "NegGrad+", "SCRUB",
                "SalUn", "l1-sparse"}
        assert set(rows) == want, set(rows) ^ want
        for name, row in rows.items():
            if "error" in row:  # a Fast-NTK route that fails is reported with its cause
                assert name.startswith("Fast-NTK") and row["error"], name
                continue
            assert row["n_unlearned"] == res["half"] == 2 and row["n_oracle"] == 2
            assert f_min <= row["F"] <= 1 and 0 <= row["score"]
            assert len(row["epsilon_values"]) == res["sizes"]["n_forget"] == len(row["klom_forget_values"])
            for split in ("forget", "retain", "held-out"):
                k = row[f"klom_{split}"]
                assert 0 <= k["median"] <= k["p95"] <= kl_max * (1 + 1e-9), (name, split, k)
            fm = row["forget_margin"]  # the level diagnostic: offset = the two means' difference; shifted KLoM is a KLoM
            assert fm["offset"] == pytest.approx(fm["mean"] - fm["oracle_mean"]) and fm["sd_over_models"] >= 0
            assert 0 <= fm["klom_shifted"]["median"] <= fm["klom_shifted"]["p95"] <= kl_max * (1 + 1e-9)
        fl = rows["oracle vs oracle (floor)"]["forget_margin"]
        assert fl["oracle_mean"] == rows["untouched"]["forget_margin"]["oracle_mean"]  # the same reference oracles
        for name in ("FT", "SCRUB", "SalUn", "l1-sparse"):
            assert res["hp_selection"][name]["hp"] and len(res["hp_selection"][name]["trials"]) <= d["args"]["hp_budget"]
            assert rows[name]["seconds"] > 0
        assert set(res["rows_full"]) == want - {"oracle vs oracle (floor)"}
        for name, row in rows.items():  # a refused request is scored as the untouched model, and said so
            assert all(0 <= s < res["half"] for s in row.get("failed_seeds", [])), name
    md = (tmp_path / "indistinguishable_quick.md").read_text(encoding="utf-8")
    assert "oracle vs oracle (floor)" in md and "Environment:" in md and "KLoM f med, shifted" in md


@pytest.mark.skipif(not os.path.isdir(FASHION_MNIST_DIR), reason="Fashion-MNIST IDX files not installed")
def test_bench_indistinguishable_early_stopping(tmp_path):
    """--patience: fine-tuning and every oracle stop on the validation split; the epochs run are recorded."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_indistinguishable.py"), "--quick", "--scenarios",
                        "class", "--finetune", "standard", "--epochs", "4", "--patience", "1", "--out", str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    with open(tmp_path / "indistinguishable_quick.json", encoding="utf-8") as fh:
        res = json.load(fh)["results"][0]
    assert len(res["epochs"]) == 4
    for ep in res["epochs"]:
        for k in ("finetune", "retrain"):
            run, best = ep[k]
            assert 1 <= best <= run <= 4 and (run == 4 or run == best + 1)  # patience 1: the first non-improving epoch ends it
    assert "Early stopping on the validation split (patience 1" in (tmp_path / "indistinguishable_quick.md").read_text()
