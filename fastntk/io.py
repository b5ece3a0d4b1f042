"""Atomic file output and safetensors checkpoints.

Every writer here is *atomic*: the bytes go to a temporary file in the target's
directory, are flushed and ``fsync``-ed, and the temporary file is then moved
over the target with :func:`os.replace` (atomic on POSIX and Windows).  A
process killed mid-write leaves the previous file untouched (plus, at worst, a
stray ``.<name>.*.tmp`` file next to it).

Checkpoints use safetensors: :func:`save_peft` / :func:`load_peft` store the
named PEFT tensors with string metadata, :func:`save_model_state` /
:func:`load_model_state` the full ``state_dict`` of a model.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from .errors import CheckpointError, InvalidInputError

__all__ = [
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "save_peft",
    "load_peft",
    "save_model_state",
    "load_model_state",
]

_CHUNK = 1 << 20  # bytes per write() call


def _check_output_path(path) -> Path:
    """Validate an output path: not a directory, and its parent (if it exists) is a directory.

    Missing parent directories are created.  Raises :class:`InvalidInputError`.
    """
    p = Path(os.fspath(path))
    if p.is_dir():
        raise InvalidInputError(f"output path {str(p)!r} is a directory; give a file name inside it")
    parent = p.parent if str(p.parent) else Path(".")
    # walk up: any existing ancestor must be a directory
    for anc in [parent, *parent.parents]:
        if anc.exists():
            if not anc.is_dir():
                raise InvalidInputError(
                    f"cannot write {str(p)!r}: {str(anc)!r} is a file, not a directory; choose another output path"
                )
            break
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InvalidInputError(f"cannot create the directory {str(parent)!r} for {str(p)!r}: {e}") from e
    return p


def atomic_write_bytes(path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file in the same dir, fsync, ``os.replace``).

    Returns the path.  Raises :class:`InvalidInputError` when ``path`` is a
    directory or lies below a file.
    """
    p = _check_output_path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=str(p.parent))
    try:
        with os.fdopen(fd, "wb") as fh:
            view = memoryview(data)
            for start in range(0, len(view), _CHUNK):
                fh.write(view[start : start + _CHUNK])
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(p.parent)
    return p


def _fsync_dir(d: Path) -> None:
    """Best-effort fsync of a directory so the rename itself is durable (POSIX only)."""
    if os.name != "posix":  # pragma: no cover
        return
    try:
        fd = os.open(str(d), os.O_RDONLY)
    except OSError:  # pragma: no cover
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def atomic_write_text(path, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write_bytes`)."""
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path, obj: Any, *, indent: int = 2) -> Path:
    """Write ``obj`` as JSON (sorted keys kept as given, UTF-8, trailing newline) atomically."""
    text = json.dumps(obj, indent=indent, ensure_ascii=False, allow_nan=True, default=_json_default)
    return atomic_write_text(path, text + "\n")


def _json_default(o):
    """JSON fallback for numpy / torch scalars and arrays, Paths."""
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(o, torch.Tensor):
        return o.detach().cpu().tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"object of type {type(o).__name__} is not JSON serializable")


# ---------------------------------------------------------------------------- safetensors


def _to_bytes(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None) -> bytes:
    from safetensors.torch import save

    if not isinstance(tensors, Mapping) or not tensors:
        raise InvalidInputError("nothing to save: pass a non-empty dict of name -> tensor")
    out = {}
    for k, t in tensors.items():
        if not isinstance(k, str):
            raise InvalidInputError(f"tensor names must be str, got {type(k).__name__}")
        if not isinstance(t, torch.Tensor):
            raise InvalidInputError(f"value for {k!r} is a {type(t).__name__}, not a torch.Tensor")
        out[k] = t.detach().to("cpu").contiguous().clone()
    md = None
    if metadata is not None:
        md = {}
        for k, v in metadata.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise InvalidInputError(
                    f"safetensors metadata must map str -> str; {k!r}: {type(v).__name__} (use json.dumps for structures)"
                )
            md[k] = v
    return save(out, metadata=md)


def _read(path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    p = Path(os.fspath(path))
    if not p.exists():
        raise CheckpointError(f"checkpoint {str(p)!r} does not exist; check the path or create it first (e.g. rerun the training step)")
    if p.is_dir():
        raise CheckpointError(f"checkpoint path {str(p)!r} is a directory; pass the .safetensors file inside it")
    try:
        tensors: dict[str, torch.Tensor] = {}
        with safe_open(str(p), framework="pt", device="cpu") as fh:
            metadata = dict(fh.metadata() or {})
            for k in fh.keys():
                tensors[k] = fh.get_tensor(k)
    except CheckpointError:
        raise
    except Exception as e:  # safetensors raises SafetensorError / OSError / ValueError
        raise CheckpointError(
            f"checkpoint {str(p)!r} is not a readable safetensors file ({type(e).__name__}: {e}); "
            "it may be truncated or of another format: delete it and write it again"
        ) from e
    return tensors, metadata


def save_peft(path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> Path:
    """Save named PEFT tensors (e.g. ``PeftSet.params()``) as safetensors, atomically.

    ``metadata`` maps str -> str (safetensors header metadata).
    """
    return atomic_write_bytes(path, _to_bytes(tensors, metadata))


def load_peft(path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Load ``(tensors, metadata)`` written by :func:`save_peft`.

    Raises :class:`CheckpointError` for a missing, truncated or non-safetensors file.
    """
    return _read(path)


def save_model_state(path, model: nn.Module, metadata: Mapping[str, str] | None = None) -> Path:
    """Save the full ``state_dict`` of ``model`` (parameters and buffers) as safetensors, atomically.

    Shared storage between entries (tied weights) is broken by cloning each tensor.
    """
    if not isinstance(model, nn.Module):
        raise InvalidInputError(f"expected a torch.nn.Module, got {type(model).__name__}")
    return atomic_write_bytes(path, _to_bytes(model.state_dict(), metadata))


def load_model_state(path, model: nn.Module, *, strict: bool = True) -> dict[str, str]:
    """Load a state written by :func:`save_model_state` into ``model`` (in place); returns the metadata.

    A checkpoint whose keys or shapes do not match the model raises
    :class:`CheckpointError` (it was written for another architecture).
    """
    tensors, metadata = _read(path)
    own = model.state_dict()
    if strict:
        missing = sorted(set(own) - set(tensors))
        extra = sorted(set(tensors) - set(own))
        if missing or extra:
            raise CheckpointError(
                f"checkpoint {str(path)!r} does not match the model (missing {missing[:5]}, unexpected {extra[:5]}); "
                "it was saved for another architecture or number of classes"
            )
    for k, t in tensors.items():
        if k in own and own[k].shape != t.shape:
            raise CheckpointError(
                f"checkpoint {str(path)!r}: tensor {k!r} has shape {tuple(t.shape)}, the model expects {tuple(own[k].shape)}"
            )
    model.load_state_dict(tensors, strict=strict)
    return metadata
