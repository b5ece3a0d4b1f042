"""What every prepared unlearner shares: validating a deletion request, committing it, writing the weights."""
from __future__ import annotations

import time

import numpy as np

from ..errors import ForgetSetError

__all__ = ["check_request", "RequestStream"]


def check_request(idx, n: int, forgotten: np.ndarray) -> np.ndarray:
    """Validate a deletion request (indices into the training set) against what was forgotten already."""
    a = np.asarray(idx)
    if a.size == 0:
        raise ForgetSetError("the forget request is empty; pass at least one training index")
    if a.dtype.kind not in "iu":
        raise ForgetSetError(f"forget indices must be integers, got dtype {a.dtype}")
    a = a.astype(np.int64).reshape(-1)
    if a.min() < 0 or a.max() >= n:
        raise ForgetSetError(f"forget indices must lie in [0, {n}); got range [{a.min()}, {a.max()}]")
    if np.unique(a).size != a.size:
        raise ForgetSetError("forget indices contain duplicates; pass each sample once")
    again = np.intersect1d(a, forgotten)
    if again.size:
        raise ForgetSetError(f"{again.size} of the indices were already forgotten (e.g. {int(again[0])})")
    if a.size + forgotten.size >= n:
        raise ForgetSetError("the request would forget the whole training set; retrain from w0 instead")
    return np.sort(a)


class RequestStream:
    """The state of a stream of requests: ``n`` training samples, ``forgotten`` indices, current weights ``w``."""

    n: int
    forgotten: np.ndarray
    prepared: bool

    def _begin(self, indices) -> tuple[np.ndarray, np.ndarray, float]:
        """Prepare if not yet done; the checked request, every index forgotten after it, and the start time."""
        if not self.prepared:
            self.prepare()
        idx = check_request(indices, self.n, self.forgotten)
        return idx, np.union1d(self.forgotten, idx), time.perf_counter()

    def _commit(self, all_f: np.ndarray, res, apply: bool):
        """Commit a request only once it succeeded: the forgotten set, the weights, the history."""
        self.forgotten, self.w = all_f, res.w_new
        self.history.append(res.summary())
        if apply:
            self.apply()
        return res

    def apply(self) -> None:
        """Write the current unlearned weights into the model."""
        self.peft.write(self.w)

    @property
    def retained(self) -> np.ndarray:
        return np.setdiff1d(np.arange(self.n), self.forgotten)
