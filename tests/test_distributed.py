"""Data-parallel operators and unlearning on torch.distributed (gloo, CPU, local processes)."""
import os
import pickle

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from fastntk.operators import GGNLinearOperator, StreamingJacobian
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
            if mode == "fail" and rank == 1:
                import fastntk.operators.linearization as L

                def boom(self, V):
                    raise RuntimeError("injected failure on rank 1")

                L.StreamingJacobian.gmat = boom
            res = unlearn_distributed(model, peft, (X[r], y[r]), (X[f], y[f]), ridge=0.3, w0=w0, rtol=1e-12,
                                      strategy="stream", inplace=True)
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
    outs = _run(world, bounds, "unlearn", tmp_path)
    assert all("error" not in o for o in outs), [o.get("error") for o in outs]
    X, y = _data()
    model = tiny_bn_cnn(0)
    peft = BatchNormPeft(model, include_head=True)
    w0 = peft.vector().clone()
    peft.write(w0 + 0.01)
    r = np.setdiff1d(np.arange(N), NF_IDX)
    ref = unlearn(model, peft, (X[r], y[r]), (X[NF_IDX], y[NF_IDX]), ridge=0.3, w0=w0, form="primal", solver="cg",
                  strategy="stream", rtol=1e-12)
    for o in outs:
        assert torch.equal(o["delta"], outs[0]["delta"])  # every rank walked the same iterates
        err = float((o["delta"] - ref.delta).norm() / ref.delta.norm())
        assert err <= 1e-10, err
        torch.testing.assert_close(o["w"], ref.w_new, rtol=1e-10, atol=1e-12)


@pytest.mark.slow
def test_a_rank_failing_mid_solve_fails_every_rank_without_writes(tmp_path):
    outs = _run(2, [0, 9, 17], "fail", tmp_path)
    assert all("error" in o for o in outs)
    assert "injected failure" in outs[1]["error"]
    assert outs[0]["distributed_error"], outs[0]["error"]  # the peer got a clear fastntk error, not a hang
    assert all("w" not in o for o in outs)  # nobody wrote
