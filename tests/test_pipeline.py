"""End to end on digits (tiny settings) and CLI smoke tests."""
import json

import pytest

from fastntk.cli import main
from fastntk.errors import ConfigError
from fastntk.pipeline import ExperimentConfig, run_experiment, write_report

TINY = dict(dataset="digits", image_size=8, model="resnet10t", pretrain_epochs=1, epochs=3, batch_size=64, lr=1e-2,
            limit=300, progress=False)


@pytest.mark.slow
def test_class_forgetting_end_to_end(tmp_path):
    cfg = ExperimentConfig(**TINY, forget="class", forget_class=1, out_dir=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"),
                           baselines=["FT"])
    res = run_experiment(cfg)
    m = res["methods"]
    for name in ("original", "retrain", "retrain (seed 2)", "Fast-NTK", "FT"):
        for k in ("RA", "FA", "UA", "TA", "MIA"):
            assert 0.0 <= m[name][k] <= 1.0
        assert m[name]["avg_gap"] >= 0
    assert m["retrain"]["avg_gap"] == 0.0
    assert m["retrain"]["FA"] <= 0.2  # a retrained model does not know the forgotten class
    assert m["Fast-NTK"]["UA"] > m["FT"]["UA"]
    assert res["unlearn"]["form"] in ("primal", "dual", "woodbury")
    paths = write_report(res, tmp_path / "out")
    data = json.loads(open(paths["json"]).read())
    assert data["sizes"]["n_forget"] == res["sizes"]["n_forget"] > 0
    assert "Fast-NTK" in open(paths["md"]).read()


def test_linearized_finetune_then_unlearn_equals_retrain_to_tolerance():
    """After linearized MSE fine-tuning run to convergence (full-batch L-BFGS), Fast-NTK = retraining."""
    import numpy as np
    import torch

    from fastntk.baselines import retrain
    from fastntk.data import load_digits, make_forget_split, split_by_classes
    from fastntk.peft import BatchNormPeft
    from fastntk.train import finetune_peft
    from fastntk.unlearn import unlearn
    from tests.conftest import tiny_bn_cnn

    data = split_by_classes(load_digits(size=8), [0, 1, 2]).subset(np.arange(60)).to(torch.float64)
    model = tiny_bn_cnn(0, C=3)
    peft = BatchNormPeft(model, include_head=True)
    w0 = peft.vector().clone()
    recipe = dict(epochs=25, lr=1.0, batch_size=60, loss="mse", ridge=0.5, linearized=True, optimizer="lbfgs", progress=False, seed=0)
    finetune_peft(peft, data, w0=w0, **recipe)
    w_trained = peft.vector().clone()
    r, f = make_forget_split(data.y, fraction=0.2, seed=1)
    gold = retrain(peft, data, f, w0=w0, **recipe)
    res = unlearn(model, peft, (data.X[r], data.y[r]), (data.X[f], data.y[f]), trained_with="linearized-mse", ridge=0.5, w0=w0, form="primal", rtol=1e-10)
    err = float((res.w_new - gold.w).norm() / (gold.w - w_trained).norm())
    assert err < 1e-3, err


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown config key"):
        ExperimentConfig.from_dict({"bogus": 1})
    bad = tmp_path / "c.toml"
    bad.write_text("epochs = 2\nwhat = 3\n")
    with pytest.raises(ConfigError):
        ExperimentConfig.from_toml(bad)
    with pytest.raises(ConfigError):
        ExperimentConfig(forget="half").validate()
    with pytest.raises(ConfigError):
        ExperimentConfig(baselines=["magic"]).validate()


def test_cli_errors_are_clear(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert main(["run", "--out", str(f), "--quiet"]) == 2
    assert "is a file" in capsys.readouterr().err
    assert main(["run", "--model", "no_such_model_xyz", "--out", str(tmp_path / "o"), "--quiet", "--cache-dir", str(tmp_path)]) == 2
    assert "unknown timm model" in capsys.readouterr().err
    assert main(["run", "--dataset", "fashion_mnist", "--data-dir", str(tmp_path / "none"), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "dataset-fashion-mnist" in capsys.readouterr().err
    assert main(["run", "--forget-fraction", "1.5", "--out", str(tmp_path / "o"), "--quiet"]) == 2
    cfg = tmp_path / "c.toml"
    cfg.write_text("unknown_key = 1\n")
    assert main(["run", "--config", str(cfg), "--quiet"]) == 2
    assert "unknown config key" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_run_smoke(tmp_path, capsys):
    rc = main(["run", "--image-size", "8", "--pretrain-epochs", "1", "--epochs", "1", "--limit", "120", "--baselines", "GA",
               "--out", str(tmp_path / "o"), "--cache-dir", str(tmp_path / "c"), "--quiet"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "Fast-NTK" in out and "noise floor" in out
    assert (tmp_path / "o" / "results.json").is_file() and (tmp_path / "o" / "results.png").is_file()


def test_auto_variant_follows_the_fine_tuning_kind(tmp_path):
    """linearized → (w0, fit); standard → (trained, trained): the one-shot and prepared routes compute the same Δ."""
    lin = ExperimentConfig(**TINY).resolved()
    assert (lin.linearize_at, lin.anchor, lin.steps) == ("w0", "fit", 1)
    std = ExperimentConfig(**{**TINY, "finetune": "standard"}).resolved()
    assert (std.linearize_at, std.anchor, std.steps) == ("trained", "trained", 1)
    assert ExperimentConfig(**{**TINY, "steps": "3"}).validate().resolved().steps == 3  # CLI strings
    with pytest.raises(ConfigError, match="steps"):
        ExperimentConfig(**{**TINY, "steps": 0}).validate()
    assert ExperimentConfig(**{**TINY, "anchor": "trained"}).resolved().anchor == "trained"  # explicit choices stay
    with pytest.raises(ConfigError, match="anchor"):
        ExperimentConfig(**{**TINY, "anchor": "nowhere"}).validate()
    cfg = ExperimentConfig(**{**TINY, "finetune": "standard", "epochs": 1, "limit": 150, "model": "fastntk_cnn_tiny"},
                           forget="class", forget_class=1, baselines=[], out_dir=str(tmp_path / "o"), cache_dir=str(tmp_path / "c"))
    res = run_experiment(cfg)
    assert res["config"]["linearize_at"] == "trained" and res["config"]["anchor"] == "trained"
    m = res["methods"]
    for k in ("UA", "RA", "TA", "MIA"):
        assert abs(m["Fast-NTK"][k] - m["Fast-NTK (prepared)"][k]) <= 0.01, k
