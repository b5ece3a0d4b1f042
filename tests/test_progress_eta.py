"""Progress: the log names the Jacobian strategy and gives an ETA for the long phases (fastntk.operators._eta)."""
import logging
import re

import pytest
import torch

from fastntk.operators import GGNLinearOperator, NTKLinearOperator, StreamingJacobian, _eta, make_jacobian
from fastntk.peft import BatchNormPeft
from tests.conftest import tiny_bn_cnn


@pytest.fixture
def every_eta(monkeypatch):
    """Log every ETA line, however short the phase (the default hides phases under a second)."""
    monkeypatch.setattr(_eta, "ETA_MIN_SECONDS", 0.0)


def _setup(n):
    torch.manual_seed(0)
    peft = BatchNormPeft(tiny_bn_cnn(0))
    return peft, torch.randn(n, 3, 8, 8, dtype=torch.float64)


def test_jacobian_build_logs_strategy_and_eta(caplog, every_eta):
    peft, X = _setup(40)
    with caplog.at_level(logging.INFO, logger="fastntk"):
        src = make_jacobian(peft, X, strategy="auto", memory_budget=1e9, batch_size=16)
    assert src.strategy == "cached"
    text = caplog.text
    assert "jacobian strategy=cached" in text and "memory budget" in text
    # one ETA line after the first batch (16 of 40 samples), then the closing line
    eta = [r.getMessage() for r in caplog.records if "ETA" in r.getMessage()]
    assert len(eta) == 1 and re.search(r"jacobian build .*: 16/40 samples in [\d.]+ s, ETA [\d.]+ s \(total ≈ [\d.]+ s\)", eta[0])
    assert "jacobian build done in" in text
    assert text.index("strategy=cached") < text.index("ETA")


def test_streamed_solve_logs_product_eta_once(caplog, every_eta):
    peft, X = _setup(20)
    src = StreamingJacobian(peft, X, batch_size=8)
    for op, dim in ((GGNLinearOperator(src, ridge=0.5), peft.p), (NTKLinearOperator(src, ridge=0.5), 20 * src.C)):
        caplog.clear()
        v = torch.randn(dim, dtype=torch.float64)
        with caplog.at_level(logging.INFO, logger="fastntk"):
            op.matvec(v)
            op.matvec(v)  # only the first product announces the ETA
        lines = [r.getMessage() for r in caplog.records if "CG ETA" in r.getMessage()]
        assert len(lines) == 1, lines
        m = re.search(rf"{type(op).__name__} {dim}×{dim} \(stream J, n=20\): one product .* CG ETA ≈ .* \((\d+) iterations to rtol 1e-06", lines[0])
        assert m and 1 <= int(m.group(1)) <= dim
        assert f"({dim} iterations, the dimension)" in lines[0]


def test_short_phases_stay_quiet(caplog):
    peft, X = _setup(40)
    with caplog.at_level(logging.INFO, logger="fastntk"):
        src = make_jacobian(peft, X, strategy="cached", batch_size=16)
        GGNLinearOperator(src, ridge=0.5).matvec(torch.randn(peft.p, dtype=torch.float64))
    assert "strategy=cached" in caplog.text and "ETA" not in caplog.text


def test_cg_iteration_estimate():
    assert _eta.cg_iterations_expected(1.0, 1e-6, 100) == 8  # ⌈½·1·ln(2e6)⌉
    assert _eta.cg_iterations_expected(1e12, 1e-6, 100) == 100  # capped by the dimension
    assert _eta.cg_iterations_expected(float("inf"), 1e-4, 7) == 7
    assert _eta.fmt_seconds(3.21) == "3.2 s" and _eta.fmt_seconds(245) == "4 min 05 s" and _eta.fmt_seconds(3720) == "1 h 02 min"


@pytest.mark.slow
def test_cli_log_shows_strategy_and_eta(caplog, every_eta, tmp_path):
    """`fastntk run` logs at INFO: the chosen Jacobian strategy and the ETA lines reach its output."""
    from fastntk.cli import main

    argv = ["run", "--dataset", "digits", "--image-size", "8", "--limit", "150", "--epochs", "1", "--pretrain-epochs", "1",
            "--model", "fastntk_cnn_tiny", "--baselines", "", "--prepared", "false", "--batch-size", "64",
            "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "out")]
    with caplog.at_level(logging.INFO, logger="fastntk"):
        assert main(argv) == 0
    text = caplog.text
    assert re.search(r"jacobian strategy=(cached|stream) \(", text)
    assert re.search(r"jacobian build .*, ETA [\d.]+ s", text)
