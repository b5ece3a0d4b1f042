"""fastntk.data: loaders (on files the tests write), splits, forget sets, checks."""
from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fastntk.data import (
    FASHION_MNIST_DIR,
    ImageData,
    check_finite,
    check_labels,
    load_cifar10,
    load_digits,
    load_fashion_mnist,
    load_image_folder,
    make_forget_split,
    split_by_classes,
    train_test_split,
)
from fastntk.errors import DataError, ForgetSetError, InvalidInputError


def _tiny(n=20, C=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return ImageData(torch.randn(n, 1, 4, 4, generator=g), torch.arange(n) % C, [f"c{i}" for i in range(C)], "tiny")


# ---------------------------------------------------------------- container


def test_imagedata_basics():
    d = _tiny()
    assert len(d) == 20 and d.num_classes == 4 and d.input_shape == (1, 4, 4)
    s = d.subset(np.array([3, 1]))
    assert torch.equal(s.X[0], d.X[3]) and s.y.tolist() == [3, 1]
    m = d.subset(d.y == 2)
    assert (m.y == 2).all() and len(m) == 5
    assert d.to(torch.float64).X.dtype == torch.float64
    with pytest.raises(DataError):
        ImageData(torch.zeros(3, 4, 4), torch.zeros(3), ["a"])
    with pytest.raises(DataError):
        ImageData(torch.zeros(3, 1, 4, 4), torch.zeros(2), ["a"])
    with pytest.raises(InvalidInputError):
        d.subset([25])


def test_checks():
    check_labels(torch.tensor([0, 1, 2]), 3)
    with pytest.raises(DataError, match=r"\[0, 3\)"):
        check_labels(torch.tensor([0, 3]), 3)
    with pytest.raises(DataError):
        check_labels(torch.tensor([-1, 0]), 3)
    with pytest.raises(DataError):
        check_labels(torch.tensor([0.0, 1.0]), 3)
    check_finite(torch.zeros(2, 2))
    X = torch.zeros(2, 1, 2, 2)
    X[1, 0, 1, 1] = float("nan")
    with pytest.raises(DataError, match="NaN"):
        check_finite(X)
    X[1, 0, 1, 1] = float("inf")
    with pytest.raises(DataError):
        check_finite(X)


# ---------------------------------------------------------------- loaders


def test_load_digits():
    d = load_digits(size=16, channels=3)
    assert d.X.shape == (1797, 3, 16, 16) and d.X.dtype == torch.float32
    assert d.num_classes == 10 and d.y.dtype == torch.long
    assert abs(float(d.X.mean())) < 0.05  # normalised with the set's constants
    assert torch.equal(d.X[:, 0], d.X[:, 2])  # grey repeated
    d1 = load_digits(size=8, channels=1, normalize=False)
    from sklearn.datasets import load_digits as ld

    assert torch.allclose(d1.X[:, 0], torch.tensor(ld().images, dtype=torch.float32) / 16, atol=1e-6)


def _write_idx(path: Path, arr: np.ndarray, gz: bool):
    header = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    raw = header + arr.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as fh:
            fh.write(raw)
    else:
        path.write_bytes(raw)


@pytest.mark.parametrize("gz", [True, False])
def test_load_fashion_mnist_from_idx(tmp_path, gz):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(12, 28, 28), dtype=np.uint8)
    labs = np.arange(12) % 10
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", imgs, gz)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", labs, gz)
    d = load_fashion_mnist("test", data_dir=tmp_path, size=28, channels=1, normalize=False)
    assert d.X.shape == (12, 1, 28, 28)
    assert torch.allclose(d.X[:, 0], torch.tensor(imgs, dtype=torch.float32) / 255)
    assert d.y.tolist() == labs.tolist() and d.classes[9] == "Ankle boot"
    d3 = load_fashion_mnist("test", data_dir=tmp_path, size=32, channels=3, limit=5)
    assert d3.X.shape == (5, 3, 32, 32)
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("train", data_dir=tmp_path)


def test_fashion_mnist_missing_and_truncated(tmp_path):
    with pytest.raises(DataError) as ei:
        load_fashion_mnist("train", data_dir=tmp_path / "nope")
    msg = str(ei.value)
    assert "apt-get install dataset-fashion-mnist" in msg and "data_dir" in msg and "download=True" in msg
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((4, 28, 28)), False)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(4), False)
    raw = (tmp_path / "t10k-images-idx3-ubyte").read_bytes()
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(raw[:-100])
    with pytest.raises(DataError, match="truncated"):
        load_fashion_mnist("test", data_dir=tmp_path)
    with pytest.raises(InvalidInputError):
        load_fashion_mnist("val", data_dir=tmp_path)


@pytest.mark.skipif(not Path(FASHION_MNIST_DIR).is_dir(), reason="dataset-fashion-mnist not installed")
def test_load_fashion_mnist_system_files():
    d = load_fashion_mnist("test", limit=200)
    assert d.X.shape == (200, 3, 32, 32) and d.num_classes == 10
    assert set(d.y.tolist()) <= set(range(10))
    assert torch.isfinite(d.X).all()


def _write_cifar(root: Path, per_batch=3):
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    rng = np.random.default_rng(1)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=per_batch).tolist()
        with open(base / name, "wb") as fh:
            pickle.dump({"batch_label": name, "data": data, "labels": labels, "filenames": [b"x.png"] * per_batch}, fh)
        batches[name] = (data, labels)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(base / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": names, "num_cases_per_batch": per_batch, "num_vis": 3072}, fh)
    return batches, names


def test_load_cifar10_fake_dir(tmp_path):
    batches, names = _write_cifar(tmp_path)
    tr = load_cifar10(tmp_path, train=True, normalize=False)
    assert tr.X.shape == (15, 3, 32, 32) and tr.classes == names
    data, labels = batches["data_batch_2"]
    assert tr.y[3:6].tolist() == labels
    assert torch.allclose(tr.X[3], torch.tensor(data[0].reshape(3, 32, 32), dtype=torch.float32) / 255)
    te = load_cifar10(tmp_path, train=False, size=16, channels=1)
    assert te.X.shape == (3, 1, 16, 16) and te.y.tolist() == batches["test_batch"][1]
    with pytest.raises(DataError, match="download=True"):
        load_cifar10(tmp_path / "empty")


def test_load_image_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls, n in (("cat", 3), ("dog", 2)):
        (tmp_path / cls).mkdir()
        for i in range(n):
            arr = rng.integers(0, 256, size=(10 + i, 12, 3), dtype=np.uint8)
            Image.fromarray(arr if i else arr[..., 0]).save(tmp_path / cls / f"{i}.png")
    d = load_image_folder(tmp_path, size=8, channels=3)
    assert d.X.shape == (5, 3, 8, 8) and d.classes == ["cat", "dog"] and d.y.tolist() == [0, 0, 0, 1, 1]
    assert torch.isfinite(d.X).all()
    g = load_image_folder(tmp_path, size=8, channels=1)
    assert g.X.shape == (5, 1, 8, 8)
    with pytest.raises(DataError):
        load_image_folder(tmp_path / "none")


# ---------------------------------------------------------------- splits


def test_split_by_classes():
    d = _tiny(n=20, C=10)
    s = split_by_classes(d, [5, 6, 7, 8, 9])
    assert len(s) == 10 and s.num_classes == 5 and s.classes == ["c5", "c6", "c7", "c8", "c9"]
    assert s.y.tolist() == [0, 1, 2, 3, 4] * 2
    assert torch.equal(s.X[0], d.X[5])
    with pytest.raises(DataError):
        split_by_classes(d, [10])
    with pytest.raises(DataError):
        split_by_classes(d, [1, 1])


def test_train_test_split_deterministic_stratified():
    d = _tiny(n=48, C=4)
    a, b = train_test_split(d, 0.25, seed=3)
    a2, b2 = train_test_split(d, 0.25, seed=3)
    assert torch.equal(a.X, a2.X) and torch.equal(b.y, b2.y)
    assert len(a) == 36 and len(b) == 12
    assert torch.bincount(b.y).tolist() == [3, 3, 3, 3]
    _, b3 = train_test_split(d, 0.25, seed=4)
    assert not torch.equal(b.X, b3.X)
    # disjoint and covering: rows of X are unique random vectors
    rows = {tuple(x.flatten().tolist()) for x in torch.cat([a.X, b.X])}
    assert len(rows) == 48
    with pytest.raises(InvalidInputError):
        train_test_split(d, 1.0)


# ---------------------------------------------------------------- forget sets


def test_forget_split_specs():
    y = np.arange(50) % 5
    r, f = make_forget_split(y, fraction=0.1, seed=0)
    assert len(f) == 5 and len(r) == 45 and f.dtype == np.int64 and r.dtype == np.int64
    assert np.all(np.diff(f) > 0) and np.all(np.diff(r) > 0)
    r2, f2 = make_forget_split(torch.tensor(y), fraction=0.1, seed=0)
    assert np.array_equal(f, f2)
    _, f3 = make_forget_split(y, fraction=0.1, seed=1)
    assert not np.array_equal(f, f3)
    r, f = make_forget_split(y, classes=[2])
    assert np.array_equal(f, np.nonzero(y == 2)[0])
    r, f = make_forget_split(y, classes=3)
    assert (y[f] == 3).all() and len(f) == 10
    r, f = make_forget_split(y, indices=[7, 3, 9])
    assert f.tolist() == [3, 7, 9] and len(r) == 47


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(indices=[]), "empty"),
        (dict(indices=list(range(10))), "whole"),
        (dict(indices=[0, 10]), r"\[0, 10\)"),
        (dict(indices=[-1]), r"\[0, 10\)"),
        (dict(indices=[1, 1]), "duplicate"),
        (dict(fraction=0.0), r"\(0, 1\)"),
        (dict(fraction=1.0), r"\(0, 1\)"),
        (dict(fraction=1.5), r"\(0, 1\)"),
        (dict(fraction=0.01), "no sample"),
        (dict(classes=[7]), "unknown class"),
        (dict(classes=[0, 1]), "every sample"),
        (dict(), "exactly one"),
        (dict(fraction=0.1, classes=[0]), "exactly one"),
    ],
)
def test_forget_split_errors(kwargs, match):
    y = np.arange(10) % 2
    with pytest.raises(ForgetSetError, match=match):
        make_forget_split(y, **kwargs)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 200), frac=st.floats(0.01, 0.99), seed=st.integers(0, 2**31 - 1))
def test_forget_split_partition_property(n, frac, seed):
    y = np.arange(n) % 3
    k = int(round(frac * n))
    if k == 0 or k >= n:
        with pytest.raises(ForgetSetError):
            make_forget_split(y, fraction=frac, seed=seed)
        return
    r, f = make_forget_split(y, fraction=frac, seed=seed)
    assert len(f) == k
    assert np.array_equal(np.sort(np.concatenate([r, f])), np.arange(n))
