"""fastntk.io: atomic writes and safetensors checkpoints."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from fastntk.errors import CheckpointError, InvalidInputError
from fastntk.io import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    load_model_state,
    load_peft,
    save_model_state,
    save_peft,
)

ROOT = Path(__file__).resolve().parents[1]


def test_atomic_write_roundtrip(tmp_path):
    p = tmp_path / "sub" / "a.bin"
    atomic_write_bytes(p, b"x" * 3_000_000)
    assert p.read_bytes() == b"x" * 3_000_000
    atomic_write_text(tmp_path / "t.txt", "héllo")
    assert (tmp_path / "t.txt").read_text(encoding="utf-8") == "héllo"
    atomic_write_json(tmp_path / "j.json", {"a": 1, "b": [1.5, float("nan")], "t": torch.tensor([1, 2])})
    obj = json.loads((tmp_path / "j.json").read_text())
    assert obj["a"] == 1 and obj["t"] == [1, 2]
    # no temp file left behind
    assert sorted(x.name for x in tmp_path.iterdir()) == ["j.json", "sub", "t.txt"]
    assert [x.name for x in (tmp_path / "sub").iterdir()] == ["a.bin"]


def test_atomic_write_bad_paths(tmp_path):
    with pytest.raises(InvalidInputError, match="is a directory"):
        atomic_write_text(tmp_path, "x")
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(InvalidInputError, match="is a file"):
        atomic_write_text(f / "out.json", "x")
    with pytest.raises(InvalidInputError, match="is a file"):
        atomic_write_json(f / "deeper" / "out.json", {})


def test_sigkill_mid_write_keeps_previous_file(tmp_path):
    target = tmp_path / "ckpt.bin"
    target.write_bytes(b"OLD" * 1000)
    child = textwrap.dedent(
        f"""
        import os, sys, time
        sys.path.insert(0, {str(ROOT)!r})
        import fastntk.io as io
        io._CHUNK = 1 << 16
        real_fsync = os.fsync
        def stalled_fsync(fd):
            # every chunk of the temp file is written, the rename has not happened yet
            print("ready", flush=True)
            time.sleep(120)
        io.os.fsync = stalled_fsync
        io.atomic_write_bytes({str(target)!r}, b"NEW" * 2_000_000)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "ready"
        tmps = [x for x in tmp_path.iterdir() if x.name.startswith(".ckpt.bin.")]
        assert len(tmps) == 1 and tmps[0].stat().st_size == 6_000_000  # killed mid-write, temp file complete
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert target.read_bytes() == b"OLD" * 1000


def test_save_load_peft(tmp_path):
    t = {"a.weight": torch.randn(3, 2, dtype=torch.float64), "b": torch.arange(4)}
    p = save_peft(tmp_path / "w.safetensors", t, {"model": "resnet10t", "p": "10"})
    t2, md = load_peft(p)
    assert md == {"model": "resnet10t", "p": "10"}
    assert set(t2) == set(t)
    for k in t:
        assert torch.equal(t[k], t2[k]) and t2[k].dtype == t[k].dtype
    with pytest.raises(InvalidInputError):
        save_peft(tmp_path / "x.safetensors", t, {"p": 10})
    with pytest.raises(InvalidInputError):
        save_peft(tmp_path / "x.safetensors", {})


def test_load_peft_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_peft(tmp_path / "missing.safetensors")
    good = save_peft(tmp_path / "w.safetensors", {"a": torch.randn(100)})
    data = good.read_bytes()
    trunc = tmp_path / "trunc.safetensors"
    trunc.write_bytes(data[: len(data) - 50])
    with pytest.raises(CheckpointError, match="truncated"):
        load_peft(trunc)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file at all" * 10)
    with pytest.raises(CheckpointError):
        load_peft(junk)
    with pytest.raises(CheckpointError, match="directory"):
        load_peft(tmp_path)
    assert issubclass(CheckpointError, OSError)



def test_save_load_model_state(tmp_path):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    m.train()
    m(torch.randn(8, 1, 6, 6))  # move the running stats
    save_model_state(tmp_path / "m.safetensors", m, {"arch": "tiny"})
    m2 = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    md = load_model_state(tmp_path / "m.safetensors", m2)
    assert md == {"arch": "tiny"}
    for (k, a), (_, b) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(a, b), k
    m3 = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2 * 4 * 4, 5))
    with pytest.raises(CheckpointError, match="shape"):
        load_model_state(tmp_path / "m.safetensors", m3)
    m4 = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    with pytest.raises(CheckpointError, match="does not match"):
        load_model_state(tmp_path / "m.safetensors", m4)
