"""Data-parallel operators and unlearning on torch.distributed (gloo, CPU, local processes), and the CLI under torchrun."""
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from fastntk.operators import StreamingJacobian
from fastntk.peft import BatchNormPeft
from fastntk.unlearn import unlearn
from tests.conftest import tiny_bn_cnn

N, NF_IDX = 17, [2, 3, 5, 11, 16]  # the forget samples all live on the first shards for some splits


def _data():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(N, 3, 8, 8, dtype=torch.float64, generator=g)
    y = torch.randint(0, 3, (N,), generator=g)
    return X, y


def _worker(rank, world, tmp, bounds, mode):
    import torch.distributed as dist

    from fastntk.distributed import DistributedError, DistributedJacobian, init_gloo, unlearn_distributed

    torch.set_num_threads(1)
    init_gloo(rank, world, os.path.join(tmp, "init"), timeout_s=8.0 if mode == "fail" else 60.0)
    out = {}
    try:
        X, y = _data()
        model = tiny_bn_cnn(0)
        peft = BatchNormPeft(model, include_head=True)
        w0 = peft.vector().clone()
        lo, hi = bounds[rank], bounds[rank + 1]
        mine = np.arange(lo, hi)
        f = np.intersect1d(mine, NF_IDX)
        r = np.setdiff1d(mine, NF_IDX)
        if mode == "ops":
            src = DistributedJacobian(StreamingJacobian(peft, X[mine], batch_size=2))
            V = torch.randn(peft.p, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
            out["gmat"] = src.gmat(V)
            out["diag"] = src.diag_ggn()
            U = torch.randn(N * 3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
            out["jt"] = src.jtmat(U[lo * 3 : hi * 3])
            out["j_rows"] = src.jmat(V)
        else:
            peft.write(w0 + 0.01)
            if mode == "cached":  # record the rows of every J this rank caches
                import fastntk.operators.linearization as L

                build, out["cached_rows"] = L.CachedJacobian.build.__func__, []

                def recording(cls, src, **kw):
                    c = build(cls, src, **kw)
                    out["cached_rows"].append(c.J.shape[0])
                    return c

                L.CachedJacobian.build = classmethod(recording)
            if mode == "fail" and rank == 1:
                import fastntk.operators.linearization as L

                def boom(self, V):
                    raise RuntimeError("injected failure on rank 1")

                L.StreamingJacobian.gmat = boom
            res = unlearn_distributed(model, peft, (X[r], y[r]), (X[f], y[f]), ridge=0.3, w0=w0, rtol=1e-12,
                                      strategy="cached" if mode == "cached" else "stream", inplace=True)
            out["strategy"] = res.strategy
            out["delta"] = res.delta
            out["w"] = peft.vector()
    except Exception as e:  # noqa: BLE001 - reported to the parent
        out["error"] = f"{type(e).__name__}: {e}"
        out["distributed_error"] = isinstance(e, DistributedError)
    with open(os.path.join(tmp, f"rank{rank}.pkl"), "wb") as fh:
        pickle.dump(out, fh)
    try:
        dist.destroy_process_group()
    except Exception:  # noqa: BLE001
        pass


def _run(world, bounds, mode, tmp):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(r, world, str(tmp), bounds, mode)) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode is not None, "a worker hung"
    outs = []
    for r in range(world):
        with open(os.path.join(tmp, f"rank{r}.pkl"), "rb") as fh:
            outs.append(pickle.load(fh))
    return outs


SPLITS = {2: [0, 9, 17], 3: [0, 4, 6, 17]}  # uneven shards; with 3 ranks, rank 1 (samples 4–5) holds forget sample 5 only


@pytest.mark.slow
@pytest.mark.parametrize("world", [2, 3])
def test_distributed_operators_equal_single_process(world, tmp_path):
    outs = _run(world, SPLITS[world], "ops", tmp_path)
    assert all("error" not in o for o in outs), [o.get("error") for o in outs]
    X, y = _data()
    peft = BatchNormPeft(tiny_bn_cnn(0), include_head=True)
    src = StreamingJacobian(peft, X, batch_size=5)
    V = torch.randn(peft.p, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    U = torch.randn(N * 3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    ref_g, ref_jt, ref_j = src.gmat(V), src.jtmat(U), src.jmat(V)
    for o in outs:
        torch.testing.assert_close(o["gmat"], ref_g, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(o["jt"], ref_jt, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(o["diag"], src.diag_ggn(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(torch.cat([o["j_rows"] for o in outs]), ref_j, rtol=1e-10, atol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("world,bounds", [(2, [0, 9, 17]), (3, [0, 4, 6, 17]), (3, [0, 2, 12, 17])])
def test_distributed_unlearning_equals_single_process(world, bounds, tmp_path):
    _check_equals_single_process(_run(world, bounds, "unlearn", tmp_path), "stream")


def _check_equals_single_process(outs, strategy):
    assert all("error" not in o for o in outs), [o.get("error") for o in outs]
    X, y = _data()
    model = tiny_bn_cnn(0)
    peft = BatchNormPeft(model, include_head=True)
    w0 = peft.vector().clone()
    peft.write(w0 + 0.01)
    r = np.setdiff1d(np.arange(N), NF_IDX)
    ref = unlearn(model, peft, (X[r], y[r]), (X[NF_IDX], y[NF_IDX]), trained_with="linearized-mse", ridge=0.3, w0=w0, form="primal", solver="cg",
                  strategy=strategy, rtol=1e-12)
    for o in outs:
        assert o["strategy"] == f"{strategy} (data-parallel)"
        assert torch.equal(o["delta"], outs[0]["delta"])  # every rank walked the same iterates
        err = float((o["delta"] - ref.delta).norm() / ref.delta.norm())
        assert err <= 1e-10, err
        torch.testing.assert_close(o["w"], ref.w_new, rtol=1e-10, atol=1e-12)


@pytest.mark.slow
def test_distributed_cached_jacobian_keeps_each_shard_local_and_equals_single_process(tmp_path):
    """strategy="cached": every rank caches only its own rows of J; the update equals one process's (≤ 1e-10)."""
    bounds = [0, 9, 17]
    outs = _run(2, bounds, "cached", tmp_path)
    _check_equals_single_process(outs, "cached")
    for rank, o in enumerate(outs):
        mine = np.arange(bounds[rank], bounds[rank + 1])
        n_f = np.intersect1d(mine, NF_IDX).size
        assert sorted(o["cached_rows"]) == sorted([(mine.size - n_f) * 3, n_f * 3])  # its retain and forget rows, C = 3


@pytest.mark.slow
def test_a_rank_failing_mid_solve_fails_every_rank_without_writes(tmp_path):
    outs = _run(2, [0, 9, 17], "fail", tmp_path)
    assert all("error" in o for o in outs)
    assert "injected failure" in outs[1]["error"]
    assert outs[0]["distributed_error"], outs[0]["error"]  # the peer got a clear fastntk error, not a hang
    assert all("w" not in o for o in outs)  # nobody wrote


# ---------------------------------------------------------------------- the CLI under torchrun
TINY_CLI = ["run", "--dataset", "digits", "--model", "fastntk_cnn_tiny", "--image-size", "8", "--limit", "200", "--epochs", "1",
            "--pretrain-epochs", "1", "--baselines", "FT", "--form", "primal", "--solver", "cg", "--quiet",
            "--out", "out", "--cache-dir", "cache"]  # relative: each rank runs in its own folder, so a stray write shows


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli(argv, cwd, rank=None, world=2, port=None):
    """``python -m fastntk`` in ``cwd``: as torchrun's rank ``rank`` (its environment variables), or alone."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", FASTNTK_DIST_TIMEOUT="90", PYTHONPATH=os.getcwd(), HOME=str(cwd))
    if rank is not None:
        env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    os.makedirs(cwd, exist_ok=True)
    return subprocess.Popen([sys.executable, "-m", "fastntk", *argv], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finish(procs, timeout=240):
    outs = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=timeout)
        except Exception:  # noqa: BLE001 - a hang: kill every process of the test, then fail
            for q in procs:
                q.kill()
            raise
        outs.append((p.returncode, out, err))
    return outs


def _files(folder):
    return sorted(str(q.relative_to(folder)) for q in Path(folder).rglob("*") if q.is_file())


@pytest.mark.slow
def test_cli_under_torchrun_equals_one_process_and_only_rank0_writes(tmp_path):
    port = _free_port()
    procs = [_cli(TINY_CLI, tmp_path / f"rank{r}", rank=r, port=port) for r in range(2)] + [_cli(TINY_CLI, tmp_path / "single")]
    (rc0, out0, err0), (rc1, out1, err1), (rcs, outs_, errs) = _finish(procs)
    assert rc0 == 0 and rcs == 0, (err0, errs)
    assert rc1 == 0, err1
    assert "Fast-NTK" in out0 and "data-parallel" in out0
    assert out1 == "" and err1 == ""  # the other ranks print nothing
    assert _files(tmp_path / "rank1") == []  # ... and write nothing (no report, no backbone cache)
    written = _files(tmp_path / "rank0")
    assert written == _files(tmp_path / "single"), written
    assert sorted(f for f in written if f.startswith("out/")) == ["out/results.json", "out/results.md", "out/results.png"]
    assert len([f for f in written if f.startswith("cache/")]) == 1
    dist_res = json.loads((tmp_path / "rank0" / "out" / "results.json").read_text())
    one = json.loads((tmp_path / "single" / "out" / "results.json").read_text())
    assert dist_res["distributed"] == {"world_size": 2, "backend": "gloo"}
    assert dist_res["unlearn"]["strategy"].endswith("(data-parallel)") and "distributed" not in one
    # the same fine-tuned model and the same update (float32, CG to the same tolerance; only sums are split)
    for name in ("original", "retrain", "Fast-NTK"):
        a, b = dist_res["methods"][name], one["methods"][name]
        for k in ("RA", "FA", "UA", "TA", "MIA"):
            assert a[k] == b[k], (name, k)
        for k in ("AD_f", "AD_r", "AD_t"):
            assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-7), (name, k)
    da, db = dist_res["unlearn"]["delta_norm"], one["unlearn"]["delta_norm"]
    assert abs(da - db) <= 1e-5 * db, (da, db)


def _bad_run(tmp_path, argv, prepare=None, cached_backbone=False):
    port = _free_port()
    if prepare is not None:
        prepare(tmp_path)
    before = {r: _files(tmp_path / f"rank{r}") for r in range(2)}
    res = _finish([_cli(argv, tmp_path / f"rank{r}", rank=r, port=port) for r in range(2)], timeout=120)
    for r, (rc, out, err) in enumerate(res):
        assert rc != 0, (r, err)
        assert out == "", (r, out)  # no table
        assert "fastntk: error" in err, (r, err)
        # nothing written (a backbone pretrained before the failure stays cached by rank 0, as in one process)
        cache = ["cache/" + f.name for f in (tmp_path / "rank0" / "cache").glob("backbone-*")] if cached_backbone and r == 0 else []
        assert _files(tmp_path / f"rank{r}") == sorted(before[r] + cache)
        assert len(cache) == int(cached_backbone and r == 0)
    return [err for _, _, err in res]


@pytest.mark.slow
def test_cli_under_torchrun_bad_config_fails_every_rank(tmp_path):
    """Rank 0 fails building the model: rank 1 (waiting for the Fast-NTK step) exits non-zero too, with the cause."""
    err0, err1 = _bad_run(tmp_path, [*TINY_CLI, "--model", "no_such_model_xyz"])
    assert "unknown timm model" in err0
    assert "rank 0 failed" in err1 and "unknown timm model" in err1


@pytest.mark.slow
def test_cli_under_torchrun_option_the_step_cannot_run_fails_before_training(tmp_path):
    err0, err1 = _bad_run(tmp_path, [*TINY_CLI, "--unlearn-loss", "ce"])
    assert "data-parallel" in err0 and "loss='ce'" in err0
    assert "rank 0 failed" in err1


@pytest.mark.slow
def test_cli_under_torchrun_follower_failure_fails_rank0(tmp_path):
    """Only rank 1 fails (on its machine ``out`` is a file): rank 0 stops before training and writes nothing."""

    def block(tmp):
        (tmp / "rank1").mkdir(parents=True)
        (tmp / "rank1" / "out").write_text("a file")

    err0, err1 = _bad_run(tmp_path, TINY_CLI, prepare=block)
    assert "is a file" in err1
    assert "rank 1 failed" in err0 and "is a file" in err0


@pytest.mark.slow
def test_cli_under_torchrun_rank_failing_inside_the_step_fails_every_rank(tmp_path):
    """Rank 0's shard (91 retain rows) exceeds the memory budget for strategy="cached", rank 1's (90) does not: rank 0
    fails inside the data-parallel step, rank 1 learns it through the step's collectives; no report is written."""
    argv = [*TINY_CLI, "--limit", "201", "--unlearn-ridge", "train", "--prepared", "false", "--strategy", "cached",
            "--memory-budget", "500000"]
    err0, err1 = _bad_run(tmp_path, argv, cached_backbone=True)
    assert "memory_budget" in err0
    assert "rank 1: a collective failed" in err1
