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
