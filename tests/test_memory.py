"""Streaming never allocates anything of size (nC)² or nC·p (traced allocation sizes, not timings)."""
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from fastntk.operators import GGNLinearOperator, JacobianLinearOperator, NTKLinearOperator, StreamingJacobian
from fastntk.peft import BatchNormPeft
from tests.conftest import tiny_bn_cnn


class _LargestAllocation(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_streamed_operators_allocate_no_jacobian_or_kernel_sized_tensor():
    n, batch = 96, 4
    peft = BatchNormPeft(tiny_bn_cnn(0), include_head=True)
    X = torch.randn(n, 3, 8, 8, dtype=torch.float64)
    src = StreamingJacobian(peft, X, batch_size=batch)
    nC, p = src.nC, src.p
    v = torch.randn(p, dtype=torch.float64)
    u = torch.randn(nC, dtype=torch.float64)
    for op, x in ((GGNLinearOperator(src, 0.1), v), (NTKLinearOperator(src, 0.1), u),
                  (JacobianLinearOperator(src), v), (JacobianLinearOperator(src).T, u)):
        with _LargestAllocation() as mode:
            op.matvec(x)
        assert mode.largest < nC * p, (type(op).__name__, mode.largest, nC * p)
        assert mode.largest < nC * nC
        # what it did allocate is O(batch activations + nC + p)
        assert mode.largest <= max(nC, p, batch * 4 * 6 * 6 * 8)
    # control: the tracer does see a Jacobian-sized allocation when J is materialized
    with _LargestAllocation() as mode:
        src.dense()
    assert mode.largest >= nC * p


def test_sketched_mse_unlearning_allocates_nothing_of_size_n_r_C_p():
    """unlearn(curvature_source='sketch') on the MSE primal route: the largest tensor is the sketch's m·k × p rows (or
    the p × p Gram of its factor), never J_r (n_r·C × p): D_r's exact products are streamed."""
    from fastntk.unlearn import unlearn
    from fastntk.update.guard import HarmTolerance

    n, n_f = 120, 8
    C = 10
    m = tiny_bn_cnn(0, C=C)
    peft = BatchNormPeft(m, include_head=True)
    g = torch.Generator().manual_seed(4)
    X = torch.randn(n, 3, 6, 6, dtype=torch.float64, generator=g)  # inputs (n·108) far smaller than J_r (n·C·p)
    y = torch.randint(0, C, (n,), generator=g)
    w0 = peft.vector().clone()
    nrCp = (n - n_f) * C * peft.p
    retain, forget = (X[n_f:].clone(), y[n_f:].clone()), (X[:n_f].clone(), y[:n_f].clone())
    with _LargestAllocation() as mode:
        res = unlearn(m, peft, retain, forget, trained_with="mse", ridge=0.5, w0=w0,
                      curvature_source="sketch", sketch_k=1, sketch_m=0.5, batch_size=8, harm=HarmTolerance(enabled=False))
    assert res.plan["curvature_source"]["value"] == "sketch"
    assert mode.largest < nrCp, (mode.largest, nrCp)
    assert mode.largest <= max((n - n_f) // 2 * peft.p, peft.p * peft.p, n_f * C * peft.p, retain[0].numel())
    with _LargestAllocation() as control:  # the tracer sees J_r when the exact route caches it
        unlearn(m, peft, retain, forget, trained_with="mse", ridge=0.5, w0=w0, curvature_source="exact", strategy="cached",
                batch_size=8, harm=HarmTolerance(enabled=False))
    assert control.largest >= nrCp
