"""Smoke run of ``benchmarks/bench_jacobian_build.py --quick`` (subprocess, results into a temporary folder)."""
import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow


def test_jacobian_build_quick(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", TIMM_FUSED_ATTN="0")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_jacobian_build.py"), "--quick", "--out", str(tmp_path),
                        "--models", "fastntk_cnn_small", "--repeats", "1"], cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    files = sorted(os.listdir(tmp_path))
    assert files == ["jacobian_build_quick.json", "jacobian_build_quick.md"], files
    d = json.loads((tmp_path / "jacobian_build_quick.json").read_text(encoding="utf-8"))
    assert d["quick"] is True and d["environment"]["torch_threads"] == 1
    (res,) = d["results"]
    assert res["model"] == "fastntk_cnn_small" and res["C"] == 10 and "rules used" in res["engine_reason"]
    methods = {row["method"] for row in res["rows"]}
    assert methods == {"vmap", "engine"} | {f"sketch k={k}" for k in d["ks"]}
    assert res["engine_vs_vmap_rel_diff"] is not None and res["engine_vs_vmap_rel_diff"] <= 1e-5
    for row in res["rows"]:
        for key in ("median_s", "min_s", "passes", "passes_min", "bound", "ratio_to_bound", "grad_s", "forward_s", "backward_s"):
            assert isinstance(row[key], float) and math.isfinite(row[key]) and row[key] > 0, (row["method"], key)
        assert row["k"] == (res["C"] if row["method"] in ("vmap", "engine") else int(row["method"].split("=")[1]))
        assert row["bound"] >= 1.0 - 1e-9 and row["min_s"] <= row["median_s"] and isinstance(row["met"], bool)
    md = (tmp_path / "jacobian_build_quick.md").read_text(encoding="utf-8")
    assert "passes/bound" in md and "Environment:" in md
