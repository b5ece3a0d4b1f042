"""Datasets as plain tensors, deterministic splits and forget sets.

A dataset is an :class:`ImageData`: ``X`` float tensor ``(n, C_in, H, W)``,
``y`` int64 tensor ``(n,)`` with labels in ``[0, len(classes))``, the class
names and a display name.  Everything fits in memory (the experiments of
fastntk use at most tens of thousands of small images).

Loaders (all return :class:`ImageData`, float32, resized to ``size × size`` and
brought to ``channels`` channels: grey is repeated, RGB → grey uses ITU-R 601
luma):

* :func:`load_digits` -- scikit-learn's bundled 8×8 digits (1,797 images, no download);
* :func:`load_fashion_mnist` -- IDX files (``.gz`` or plain) from ``data_dir``
  or ``/usr/share/datasets/fashion-mnist`` (Debian ``dataset-fashion-mnist``),
  else torchvision's downloader with ``download=True``;
* :func:`load_cifar10` -- torchvision's ``CIFAR10`` (python pickle batches);
* :func:`load_image_folder` -- torchvision's ``ImageFolder`` (one sub-directory per class).

**Normalisation** uses fixed per-dataset constants so that every split of one
dataset (pretrain / fine-tune / test, train / test files) is normalised
identically: pixels are first scaled to ``[0, 1]``, then
``(x − mean) / std`` per channel with

* digits: mean 0.3053, std 0.3760 (the whole bundled set, values /16);
* Fashion-MNIST: mean 0.2860, std 0.3530 (training set);
* CIFAR-10: mean (0.4914, 0.4822, 0.4465), std (0.2470, 0.2435, 0.2616);
* image folder: the ImageNet constants (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225).

With one output channel the RGB constants are reduced by the same luma weights
(mean) and root-mean-square (std); grey constants are repeated for 3 channels.
Pass ``normalize=False`` to keep ``[0, 1]`` pixels.

Forget sets (:func:`make_forget_split`) are given as a random fraction, whole
classes, or explicit indices; the result is ``(retain_idx, forget_idx)``, two
sorted disjoint int64 arrays covering ``range(n)``.
"""
from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .errors import DataError, ForgetSetError, InvalidInputError

__all__ = [
    "ImageData",
    "FASHION_MNIST_DIR",
    "FASHION_MNIST_CLASSES",
    "load_digits",
    "load_fashion_mnist",
    "load_cifar10",
    "load_image_folder",
    "split_by_classes",
    "train_test_split",
    "make_forget_split",
    "check_labels",
    "check_finite",
]

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
_STATS = {
    "digits": ((0.3053,), (0.3760,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
_LUMA = (0.299, 0.587, 0.114)


# ---------------------------------------------------------------------------- container


@dataclass
class ImageData:
    """An in-memory image classification set.

    ``X``: float tensor ``(n, C_in, H, W)``; ``y``: int64 tensor ``(n,)``;
    ``classes``: class names (``y`` indexes them); ``name``: for reports.
    """

    X: torch.Tensor
    y: torch.Tensor
    classes: list[str]
    name: str = "data"
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.X, torch.Tensor) or not isinstance(self.y, torch.Tensor):
            raise DataError("ImageData needs torch tensors X (n, C, H, W) and y (n,)")
        if self.X.ndim != 4:
            raise DataError(f"X must have shape (n, C, H, W), got {tuple(self.X.shape)}")
        if self.y.ndim != 1 or self.y.shape[0] != self.X.shape[0]:
            raise DataError(f"y must have shape ({self.X.shape[0]},) to match X, got {tuple(self.y.shape)}")
        if self.y.dtype != torch.long:
            self.y = self.y.long()
        self.classes = list(self.classes)

    def __len__(self) -> int:
        return int(self.X.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.X.shape[1:])  # type: ignore[return-value]

    def subset(self, idx) -> "ImageData":
        """The samples ``idx`` (int array / tensor / list, or a boolean mask), same classes."""
        idx = _as_index(idx, len(self))
        return ImageData(self.X[idx], self.y[idx], list(self.classes), self.name, dict(self.meta))

    def to(self, dtype: torch.dtype | None = None, device=None) -> "ImageData":
        """Copy with ``X`` cast to ``dtype`` (and both tensors moved to ``device``)."""
        X = self.X.to(dtype=dtype, device=device) if dtype is not None else self.X.to(device=device)
        y = self.y.to(device=device) if device is not None else self.y
        return ImageData(X, y, list(self.classes), self.name, dict(self.meta))

    def __repr__(self) -> str:
        return (
            f"ImageData(name={self.name!r}, n={len(self)}, input={tuple(self.X.shape[1:])}, "
            f"classes={self.num_classes}, dtype={self.X.dtype})"
        )


def _as_index(idx, n: int) -> torch.Tensor:
    if isinstance(idx, torch.Tensor):
        t = idx.detach().cpu()
    else:
        t = torch.as_tensor(np.asarray(idx))
    if t.dtype == torch.bool:
        if t.shape != (n,):
            raise InvalidInputError(f"boolean mask must have shape ({n},), got {tuple(t.shape)}")
        return torch.nonzero(t).reshape(-1)
    if t.numel() == 0:
        return torch.zeros(0, dtype=torch.long)
    if t.is_floating_point():
        raise InvalidInputError("indices must be integers")
    t = t.long().reshape(-1)
    if int(t.min()) < 0 or int(t.max()) >= n:
        raise InvalidInputError(f"indices out of range [0, {n}): min {int(t.min())}, max {int(t.max())}")
    return t


# ---------------------------------------------------------------------------- checks


def check_labels(y, num_classes: int) -> None:
    """Raise :class:`DataError` unless every label is an integer in ``[0, num_classes)``."""
    t = y if isinstance(y, torch.Tensor) else torch.as_tensor(np.asarray(y))
    if t.is_floating_point() or t.dtype == torch.bool:
        raise DataError(f"labels must be integers, got dtype {t.dtype}")
    if t.numel() == 0:
        raise DataError("the label vector is empty")
    lo, hi = int(t.min()), int(t.max())
    if lo < 0 or hi >= int(num_classes):
        raise DataError(
            f"labels must lie in [0, {num_classes}) but range over [{lo}, {hi}]; "
            "remap them (e.g. split_by_classes) or set the number of classes of the model"
        )


def check_finite(X) -> None:
    """Raise :class:`DataError` when ``X`` has a NaN or ±Inf entry."""
    t = X if isinstance(X, torch.Tensor) else torch.as_tensor(np.asarray(X))
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise DataError(f"the inputs contain {bad} NaN/Inf value(s); clean the data before training")


# ---------------------------------------------------------------------------- preprocessing


def _prepare(x01: torch.Tensor, *, size: int, channels: int, stats: str | None) -> torch.Tensor:
    """``x01``: float (n, c, h, w) in [0, 1] -> resized, channel-converted, normalised float32."""
    if channels not in (1, 3):
        raise InvalidInputError(f"channels must be 1 or 3, got {channels}")
    if int(size) < 1:
        raise InvalidInputError(f"size must be a positive integer, got {size}")
    size = int(size)
    out = torch.empty((x01.shape[0], channels, size, size), dtype=torch.float32)
    if stats is not None:
        mean, std = _stats_for(stats, channels)
    for s in range(0, x01.shape[0], 4096):
        x = x01[s : s + 4096].to(torch.float32)
        if x.shape[1] == 3 and channels == 1:
            w = torch.tensor(_LUMA, dtype=x.dtype).view(1, 3, 1, 1)
            x = (x * w).sum(1, keepdim=True)
        elif x.shape[1] == 1 and channels == 3:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        if stats is not None:
            x = (x - mean) / std
        out[s : s + x.shape[0]] = x
    return out


def _stats_for(stats: str, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    mean, std = _STATS[stats]
    m, s = np.asarray(mean, dtype=np.float64), np.asarray(std, dtype=np.float64)
    if len(m) == 3 and channels == 1:
        w = np.asarray(_LUMA)
        m, s = np.array([w @ m]), np.array([np.sqrt(w @ s**2)])
    elif len(m) == 1 and channels == 3:
        m, s = np.repeat(m, 3), np.repeat(s, 3)
    return (
        torch.tensor(m, dtype=torch.float32).view(1, -1, 1, 1),
        torch.tensor(s, dtype=torch.float32).view(1, -1, 1, 1),
    )


# ---------------------------------------------------------------------------- loaders


def load_digits(size: int = 32, channels: int = 3, *, normalize: bool = True) -> ImageData:
    """scikit-learn's bundled digits: 1,797 grey 8×8 images of 0–9, resized to ``size``."""
    from sklearn.datasets import load_digits as _ld

    d = _ld()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    X = _prepare(x, size=size, channels=channels, stats="digits" if normalize else None)
    y = torch.tensor(d.target, dtype=torch.long)
    return ImageData(X, y, [str(i) for i in range(10)], "digits")


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read IDX file {str(path)!r} ({e}); it may be truncated: fetch it again") from e
    if len(raw) < 4:
        raise DataError(f"{str(path)!r} is not an IDX file (too short)")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08 or ndim < 1:
        raise DataError(f"{str(path)!r} is not an unsigned-byte IDX file (magic {raw[:4].hex()})")
    dims = struct.unpack(">" + "I" * ndim, raw[4 : 4 + 4 * ndim])
    count = int(np.prod(dims))
    body = raw[4 + 4 * ndim :]
    if len(body) != count:
        raise DataError(f"IDX file {str(path)!r} holds {len(body)} bytes, its header announces {count}: truncated?")
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


def _find_idx(d: Path, stem: str) -> Path | None:
    for cand in (d / stem, d / (stem + ".gz"), d / "FashionMNIST" / "raw" / stem, d / "FashionMNIST" / "raw" / (stem + ".gz")):
        if cand.is_file():
            return cand
    return None


def load_fashion_mnist(
    split: str = "train",
    data_dir=None,
    size: int = 32,
    channels: int = 3,
    limit: int | None = None,
    *,
    download: bool = False,
    normalize: bool = True,
) -> ImageData:
    """Fashion-MNIST from IDX files (``train-images-idx3-ubyte[.gz]`` etc.).

    Looks in ``data_dir`` (if given) else ``/usr/share/datasets/fashion-mnist``;
    with ``download=True`` falls back to torchvision's downloader into
    ``data_dir`` (default ``~/.cache/fastntk``).  ``limit`` keeps the first
    ``limit`` images of the file (the files are already shuffled).
    """
    if split not in ("train", "test"):
        raise InvalidInputError(f"split must be 'train' or 'test', got {split!r}")
    if limit is not None and int(limit) < 1:
        raise InvalidInputError(f"limit must be a positive integer or None, got {limit}")
    prefix = "train" if split == "train" else "t10k"
    search = Path(os.fspath(data_dir)) if data_dir is not None else Path(FASHION_MNIST_DIR)
    img_p = _find_idx(search, f"{prefix}-images-idx3-ubyte")
    lab_p = _find_idx(search, f"{prefix}-labels-idx1-ubyte")
    if (img_p is None or lab_p is None) and download:
        root = search if data_dir is not None else Path.home() / ".cache" / "fastntk"
        try:
            from torchvision.datasets import FashionMNIST

            FashionMNIST(str(root), train=(split == "train"), download=True)
        except Exception as e:
            raise DataError(f"downloading Fashion-MNIST into {str(root)!r} failed ({e}); install it with "
                            "`apt-get install dataset-fashion-mnist` or pass --data-dir") from e
        img_p = _find_idx(root, f"{prefix}-images-idx3-ubyte")
        lab_p = _find_idx(root, f"{prefix}-labels-idx1-ubyte")
    if img_p is None or lab_p is None:
        raise DataError(
            f"Fashion-MNIST {split} files ({prefix}-images-idx3-ubyte[.gz], {prefix}-labels-idx1-ubyte[.gz]) "
            f"not found in {str(search)!r}. Get them with `apt-get install dataset-fashion-mnist` "
            f"(installs {FASHION_MNIST_DIR}), point --data-dir / data_dir at a directory holding them, "
            "or pass download=True when online"
        )
    imgs = _read_idx(img_p)
    labs = _read_idx(lab_p)
    if imgs.ndim != 3 or labs.ndim != 1 or imgs.shape[0] != labs.shape[0]:
        raise DataError(f"Fashion-MNIST files disagree: images {imgs.shape}, labels {labs.shape}")
    if limit is not None:
        imgs, labs = imgs[: int(limit)], labs[: int(limit)]
    x = torch.from_numpy(imgs.copy()).unsqueeze(1).to(torch.float32) / 255.0
    X = _prepare(x, size=size, channels=channels, stats="fashion-mnist" if normalize else None)
    y = torch.from_numpy(labs.astype(np.int64))
    check_labels(y, 10)
    return ImageData(X, y, list(FASHION_MNIST_CLASSES), f"fashion-mnist-{split}")


def load_cifar10(
    root,
    train: bool = True,
    download: bool = False,
    size: int = 32,
    channels: int = 3,
    *,
    normalize: bool = True,
    verify_md5: bool = False,
) -> ImageData:
    """CIFAR-10 through ``torchvision.datasets.CIFAR10`` (``root/cifar-10-batches-py``).

    ``download=True`` fetches and md5-checks the archive.  Existing batch files
    are md5-checked only with ``verify_md5=True`` (otherwise only their
    presence is checked, so subsets in CIFAR's pickle format load too).
    """
    from torchvision.datasets import CIFAR10

    class _CIFAR10(CIFAR10):
        def _check_integrity(self) -> bool:  # noqa: D401
            if verify_md5:
                return super()._check_integrity()
            return all(
                os.path.isfile(os.path.join(self.root, self.base_folder, fn))
                for fn, _ in self.train_list + self.test_list
            )

        def _load_meta(self) -> None:
            if verify_md5:
                return super()._load_meta()
            import pickle

            path = os.path.join(self.root, self.base_folder, self.meta["filename"])
            if not os.path.isfile(path):
                raise RuntimeError(f"CIFAR-10 metadata file {path} not found")
            with open(path, "rb") as fh:
                self.classes = pickle.load(fh, encoding="latin1")[self.meta["key"]]
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    try:
        ds = _CIFAR10(str(os.fspath(root)), train=train, download=download)
    except Exception as e:
        raise DataError(
            f"CIFAR-10 not found or unreadable under {str(root)!r}/cifar-10-batches-py ({e}); "
            "pass download=True when online, or point root at a directory holding cifar-10-batches-py"
        ) from e
    data = np.asarray(ds.data)  # (n, 32, 32, 3) uint8
    x = torch.from_numpy(data.copy()).permute(0, 3, 1, 2).to(torch.float32) / 255.0
    X = _prepare(x, size=size, channels=channels, stats="cifar10" if normalize else None)
    y = torch.tensor(list(ds.targets), dtype=torch.long)
    check_labels(y, len(ds.classes))
    return ImageData(X, y, list(ds.classes), f"cifar10-{'train' if train else 'test'}")


def load_image_folder(root, size: int = 32, channels: int = 3, *, normalize: bool = True, name: str | None = None) -> ImageData:
    """Any ``root/<class>/<image>`` tree through ``torchvision.datasets.ImageFolder``.

    Every image is converted to RGB or grey (``channels``), resized to
    ``size × size`` and normalised with the ImageNet constants.
    """
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import functional as TF

    mode = "L" if channels == 1 else "RGB"
    if channels not in (1, 3):
        raise InvalidInputError(f"channels must be 1 or 3, got {channels}")

    def loader(path):
        from PIL import Image

        with open(path, "rb") as fh:
            img = Image.open(fh)
            return img.convert(mode)

    try:
        ds = ImageFolder(str(os.fspath(root)), loader=loader)
    except Exception as e:
        raise DataError(f"cannot read an image folder at {str(root)!r} ({e}); expected root/<class>/<image files>") from e
    if len(ds) == 0:
        raise DataError(f"the image folder {str(root)!r} holds no image")
    xs, ys = [], []
    for i in range(len(ds)):
        img, t = ds[i]
        img = img.resize((int(size), int(size)), resample=_bilinear())
        xs.append(TF.pil_to_tensor(img))
        ys.append(int(t))
    x = torch.stack(xs).to(torch.float32) / 255.0
    X = _prepare(x, size=size, channels=channels, stats="imagenet" if normalize else None)
    return ImageData(X, torch.tensor(ys, dtype=torch.long), list(ds.classes), name or Path(os.fspath(root)).name)


def _bilinear():
    from PIL import Image

    return getattr(Image, "Resampling", Image).BILINEAR


# ---------------------------------------------------------------------------- splits


def split_by_classes(data: ImageData, classes: Sequence[int]) -> ImageData:
    """The samples of ``classes``, labels remapped to ``0..k-1`` in the order given.

    Example: Fashion-MNIST classes ``[5, 6, 7, 8, 9]`` -> labels 0..4 (Sandal..Ankle boot).
    """
    cls = [int(c) for c in classes]
    if not cls:
        raise DataError("split_by_classes needs at least one class")
    if len(set(cls)) != len(cls):
        raise DataError(f"duplicated class in {cls}")
    bad = [c for c in cls if c < 0 or c >= data.num_classes]
    if bad:
        raise DataError(f"unknown class(es) {bad}: {data.name} has classes 0..{data.num_classes - 1}")
    remap = torch.full((data.num_classes,), -1, dtype=torch.long)
    for new, old in enumerate(cls):
        remap[old] = new
    mask = remap[data.y] >= 0
    idx = torch.nonzero(mask).reshape(-1)
    if idx.numel() == 0:
        raise DataError(f"no sample of {data.name} belongs to classes {cls}")
    return ImageData(
        data.X[idx], remap[data.y[idx]], [data.classes[c] for c in cls], f"{data.name}[{','.join(map(str, cls))}]", dict(data.meta)
    )


def train_test_split(data: ImageData, test_fraction: float, seed: int = 0, *, stratify: bool = True) -> tuple[ImageData, ImageData]:
    """Deterministic split into ``(train, test)``.

    Stratified by class by default: from each class ``round(test_fraction · n_c)``
    samples, chosen by ``numpy.random.default_rng(seed)``, go to test.  Both
    parts keep the original order of the samples.
    """
    if not (0.0 < float(test_fraction) < 1.0):
        raise InvalidInputError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    n = len(data)
    rng = np.random.default_rng(int(seed))
    y = data.y.cpu().numpy()
    test_mask = np.zeros(n, dtype=bool)
    groups = [np.nonzero(y == c)[0] for c in np.unique(y)] if stratify else [np.arange(n)]
    for g in groups:
        k = int(round(float(test_fraction) * len(g)))
        if k > 0:
            test_mask[rng.choice(g, size=k, replace=False)] = True
    if test_mask.all() or not test_mask.any():
        raise DataError(f"test_fraction={test_fraction} leaves an empty train or test part of {n} samples")
    tr, te = np.nonzero(~test_mask)[0], np.nonzero(test_mask)[0]
    return data.subset(tr), data.subset(te)


def make_forget_split(
    y,
    *,
    fraction: float | None = None,
    classes: Iterable[int] | int | None = None,
    indices=None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``range(n)`` into ``(retain_idx, forget_idx)`` (sorted int64 numpy arrays).

    Exactly one spec:

    * ``fraction``: ``round(fraction · n)`` indices drawn without replacement by
      ``numpy.random.default_rng(seed)``, ``fraction ∈ (0, 1)``;
    * ``classes``: every sample whose label is in ``classes`` (whole-class forgetting);
    * ``indices``: explicit indices (no duplicates, all in ``[0, n)``).

    Raises :class:`ForgetSetError` for an empty forget set, a forget set equal
    to the whole set, out-of-range or duplicated indices, a fraction outside
    (0, 1), or a class absent from ``y``.
    """
    yy = np.asarray(y.detach().cpu() if isinstance(y, torch.Tensor) else y)
    if yy.ndim != 1:
        raise ForgetSetError(f"labels must be a 1-D array, got shape {yy.shape}")
    n = int(yy.shape[0])
    given = [s for s, v in (("fraction", fraction), ("classes", classes), ("indices", indices)) if v is not None]
    if len(given) != 1:
        raise ForgetSetError(f"give exactly one forget spec (fraction, classes or indices), got {given or 'none'}")
    if n == 0:
        raise ForgetSetError("the dataset is empty: nothing to forget")
    if fraction is not None:
        f = float(fraction)
        if not (0.0 < f < 1.0) or not np.isfinite(f):
            raise ForgetSetError(f"forget fraction must lie in (0, 1), got {fraction}")
        k = int(round(f * n))
        if k == 0:
            raise ForgetSetError(f"forget fraction {f} of {n} samples selects no sample; use a larger fraction")
        if k >= n:
            raise ForgetSetError(f"forget fraction {f} of {n} samples selects every sample; nothing would remain")
        forget = np.sort(np.random.default_rng(int(seed)).choice(n, size=k, replace=False)).astype(np.int64)
    elif classes is not None:
        cls = [int(classes)] if np.isscalar(classes) else [int(c) for c in classes]
        if not cls:
            raise ForgetSetError("the list of classes to forget is empty")
        present = set(np.unique(yy).tolist())
        unknown = [c for c in cls if c not in present]
        if unknown:
            raise ForgetSetError(f"unknown class(es) {unknown}: the labels present are {sorted(present)}")
        forget = np.nonzero(np.isin(yy, cls))[0].astype(np.int64)
        if forget.size == n:
            raise ForgetSetError(f"forgetting classes {cls} removes every sample; nothing would remain")
    else:
        idx = np.asarray(indices.detach().cpu() if isinstance(indices, torch.Tensor) else indices)
        if idx.size == 0:
            raise ForgetSetError("the forget set is empty; give at least one index")
        if idx.dtype == bool or not np.issubdtype(idx.dtype, np.integer):
            raise ForgetSetError(f"forget indices must be integers, got dtype {idx.dtype}")
        idx = idx.reshape(-1).astype(np.int64)
        if idx.min() < 0 or idx.max() >= n:
            raise ForgetSetError(f"forget indices must lie in [0, {n}); got min {idx.min()}, max {idx.max()}")
        u = np.unique(idx)
        if u.size != idx.size:
            raise ForgetSetError(f"forget indices contain {idx.size - u.size} duplicate(s); pass each index once")
        if u.size == n:
            raise ForgetSetError("the forget set is the whole dataset; nothing would remain")
        forget = u
    mask = np.ones(n, dtype=bool)
    mask[forget] = False
    retain = np.nonzero(mask)[0].astype(np.int64)
    return retain, forget
