"""The one streaming helper: walks a dataset in batches, in a fixed order.

Every operator of :mod:`fastntk.operators` reads its data through
:func:`iter_batches`, so all of them see the samples in the same order
(sample ``i`` owns rows ``i*C … i*C+C-1`` of ``J``) and repeated passes agree.

Accepted data: a tensor of inputs ``X`` (n, ...); an object with a tensor
attribute ``X`` (e.g. :class:`fastntk.data.ImageData`); a ``(X, y)`` tuple;
any ``torch.utils.data.Dataset`` whose items are ``x`` or ``(x, y, ...)``.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from ..errors import DataError

__all__ = ["num_samples", "iter_batches", "subset", "inputs_of"]


def inputs_of(data):
    """The input part of ``data`` (a tensor, or a Dataset)."""
    if isinstance(data, torch.Tensor):
        return data
    if isinstance(data, tuple) and len(data) >= 1 and isinstance(data[0], torch.Tensor):
        return data[0]
    X = getattr(data, "X", None)
    if isinstance(X, torch.Tensor):
        return X
    if isinstance(data, torch.utils.data.Dataset):
        return data
    raise DataError(
        f"cannot read inputs from {type(data).__name__}; pass a tensor X, an (X, y) tuple, "
        "an object with a tensor attribute X, or a torch Dataset"
    )


def num_samples(data) -> int:
    X = inputs_of(data)
    try:
        return len(X)
    except TypeError:
        raise DataError(f"{type(X).__name__} has no length; fastntk needs a sized dataset") from None


def subset(data, idx):
    """The samples ``idx`` of ``data`` (same kind of object for tensors)."""
    idx = np.asarray(idx, dtype=np.int64)
    X = inputs_of(data)
    if isinstance(X, torch.Tensor):
        return X[torch.as_tensor(idx, device=X.device)]
    return torch.utils.data.Subset(X, idx.tolist())


def iter_batches(data, batch_size: int, *, dtype: torch.dtype, device, progress=None) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Yield ``(start, stop, xb)`` over ``data`` in order, ``xb`` cast to ``dtype`` on ``device``.

    ``progress`` is an optional tqdm bar advanced by the batch size.
    """
    X = inputs_of(data)
    n = num_samples(X)
    if n == 0:
        raise DataError("the dataset is empty; fastntk needs at least one sample")
    if isinstance(X, torch.Tensor):
        for s in range(0, n, batch_size):
            xb = X[s : s + batch_size].to(device=device, dtype=dtype, non_blocking=True)
            if progress is not None:
                progress.update(xb.shape[0])
            yield s, s + xb.shape[0], xb
        return
    loader = torch.utils.data.DataLoader(X, batch_size=batch_size, shuffle=False, num_workers=0)
    s = 0
    for item in loader:
        xb = item[0] if isinstance(item, (tuple, list)) else item
        xb = xb.to(device=device, dtype=dtype)
        if progress is not None:
            progress.update(xb.shape[0])
        yield s, s + xb.shape[0], xb
        s += xb.shape[0]
