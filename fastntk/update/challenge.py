"""The NeurIPS 2023 unlearning-challenge adapter: ``unlearning(net, retain_loader, forget_loader, val_loader) -> net``."""
from __future__ import annotations

import torch

from ..errors import DataError, ForgetSetError
from .oneshot import unlearn

__all__ = ["unlearning"]


def unlearning(net, retain_loader, forget_loader, val_loader=None, *, ridge: float | str = "auto", peft=None, **kwargs):
    """NeurIPS 2023 unlearning-challenge signature: ``unlearning(net, retain, forget, val) -> net``.

    Unlearns the BatchNorm affine parameters of ``net`` (a copy; ``net`` itself is
    not modified) with :func:`unlearn` (``trained_with="ce"`` unless given: the challenge's
    models are classifiers trained with cross-entropy; every other option its default) and
    returns the unlearned copy.  ``val_loader`` is accepted for compatibility and unused.
    """
    import copy

    from ..peft import BatchNormPeft

    def collect(loader, name):
        xs, ys = [], []
        for item in loader:
            if not isinstance(item, (tuple, list)) or len(item) < 2:
                raise DataError(f"the {name} loader must yield (inputs, labels) batches")
            xs.append(item[0])
            ys.append(item[1])
        if not xs:
            raise ForgetSetError(f"the {name} loader is empty")
        return torch.cat(xs), torch.cat(ys).long()

    new = copy.deepcopy(net).eval()
    peft = BatchNormPeft(new) if peft is None else type(peft)(new)
    retain = collect(retain_loader, "retain")
    forget = collect(forget_loader, "forget")
    kwargs.setdefault("linearize_at", "trained")
    kwargs.setdefault("trained_with", "ce")  # the challenge's models are classifiers trained with cross-entropy
    unlearn(new, peft, retain, forget, ridge=ridge, inplace=True, **kwargs)
    return new
