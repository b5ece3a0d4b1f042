"""Catalogue of bad inputs: each gets a typed fastntk error before any work, and the model is untouched."""
import hashlib

import numpy as np
import pytest
import torch
from torch import nn

from fastntk import errors as E
from fastntk.peft import BatchNormPeft, NamedPeft, PromptPeft
from fastntk.unlearn import Unlearner, unlearn
from tests.conftest import linear_model, tiny_bn_cnn


def _hash(model):
    h = hashlib.sha256()
    for k, t in model.state_dict().items():
        h.update(k.encode() + t.detach().cpu().numpy().tobytes())
    return h.hexdigest()


def _lin():
    m = linear_model(0)
    peft = NamedPeft(m, ["1.*"])
    g = torch.Generator().manual_seed(0)
    X = torch.randn(12, 12, dtype=torch.float64, generator=g)
    y = torch.randint(0, 3, (12,), generator=g)
    return m, peft, X, y


def _u(**kw):
    m, peft, X, y = _lin()
    args = dict(trained_with="linearized-mse", ridge=0.1, w0=peft.vector())
    args.update(kw)
    return lambda: unlearn(m, peft, (X[:8], y[:8]), (X[8:], y[8:]), **args)


def _nan_inputs():
    m, peft, X, y = _lin()
    X = X.clone()
    X[9, 0] = float("nan")
    return unlearn(m, peft, (X[:8], y[:8]), (X[8:], y[8:]), trained_with="linearized-mse", ridge=0.1, w0=peft.vector())


def _inf_param():
    m, peft, X, y = _lin()
    with torch.no_grad():
        m[0][1].weight[0, 0] = float("inf")
    return unlearn(m, peft, (X[:8], y[:8]), (X[8:], y[8:]), trained_with="linearized-mse", ridge=0.1, w0=peft.vector())


def _labels_out_of_range():
    m, peft, X, y = _lin()
    return unlearn(m, peft, (X[:8], y[:8]), (X[8:], y[8:] + 3), trained_with="linearized-mse", ridge=0.1, w0=peft.vector())


def _empty_forget():
    m, peft, X, y = _lin()
    return unlearn(m, peft, (X[:8], y[:8]), (X[:0], y[:0]), trained_with="linearized-mse", ridge=0.1, w0=peft.vector())


def _overlap():
    m, peft, X, y = _lin()
    return unlearn(m, peft, (X[:8], y[:8]), (X[7:], y[7:]), trained_with="linearized-mse", ridge=0.1, w0=peft.vector())


def _dup_forget():
    m, peft, X, y = _lin()
    return unlearn(m, peft, (X[:8], y[:8]), (X[[9, 9, 10]], y[[9, 9, 10]]), trained_with="linearized-mse", ridge=0.1, w0=peft.vector())


def _unlearner(req):
    m, peft, X, y = _lin()
    u = Unlearner(m, peft, (X, y), trained_with="linearized-mse", ridge=0.1, w0=peft.vector())
    return u.forget(req)


def _train_mode_bn():
    m = tiny_bn_cnn().train()
    X = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    return unlearn(m, BatchNormPeft(m), (X[:2], torch.zeros(2, dtype=torch.long)), (X[2:], torch.zeros(2, dtype=torch.long)),
                   trained_with="linearized-mse", ridge=0.1, linearize_at="trained")


def _wrong_model():
    m, peft, X, y = _lin()
    return unlearn(linear_model(1), peft, (X[:8], y[:8]), (X[8:], y[8:]), trained_with="linearized-mse", ridge=0.1, w0=peft.vector())


def _truncated_checkpoint(tmp_path):
    from fastntk.io import load_peft, save_peft

    p = tmp_path / "w.safetensors"
    save_peft(p, {"w": torch.zeros(100)})
    p.write_bytes(p.read_bytes()[:50])
    return load_peft(p)


def _output_is_file(tmp_path):
    from fastntk.pipeline import write_report

    f = tmp_path / "f"
    f.write_text("x")
    return write_report({"methods": {}}, f)


def _config_unknown_key(tmp_path):
    from fastntk.pipeline import ExperimentConfig

    c = tmp_path / "c.toml"
    c.write_text("epochs = 1\nbatchsize = 3\n")
    return ExperimentConfig.from_toml(c)


def _missing_dataset(tmp_path):
    from fastntk.data import load_fashion_mnist

    return load_fashion_mnist("train", data_dir=str(tmp_path / "nothing"))


def _unknown_timm():
    from fastntk.pipeline import build_model

    return build_model("resnet_does_not_exist_42", 3)


def _solver_nonsquare():
    from fastntk.solvers import cg

    return cg(np.ones((3, 4)), np.ones(3))


def _solver_nan_rhs():
    from fastntk.solvers import cg

    return cg(np.eye(3), np.array([1.0, np.nan, 0.0]))


def _operator_wrong_length():
    from fastntk.operators import GGNLinearOperator, StreamingJacobian

    m, peft, X, y = _lin()
    return GGNLinearOperator(StreamingJacobian(peft, X)).matvec(torch.zeros(peft.p + 2, dtype=torch.float64))


def _operator_wrong_dtype():
    from fastntk.operators import GGNLinearOperator, StreamingJacobian

    m, peft, X, y = _lin()
    return GGNLinearOperator(StreamingJacobian(peft, X)).matvec(torch.zeros(peft.p, dtype=torch.float32))


def _operator_wrong_device():
    from fastntk.operators import GGNLinearOperator, StreamingJacobian

    m, peft, X, y = _lin()
    return GGNLinearOperator(StreamingJacobian(peft, X)).matvec(torch.zeros(peft.p, dtype=torch.float64, device="meta"))


CASES = {
    "empty forget set": (_empty_forget, E.ForgetSetError),
    "retain and forget sets overlap": (_overlap, E.ForgetSetError),
    "duplicated samples in the forget set": (_dup_forget, E.ForgetSetError),
    "forget = whole training set": (lambda: _unlearner(np.arange(12)), E.ForgetSetError),
    "duplicated forget indices": (lambda: _unlearner([1, 1]), E.ForgetSetError),
    "out-of-range forget index": (lambda: _unlearner([12]), E.ForgetSetError),
    "negative forget index": (lambda: _unlearner([-1]), E.ForgetSetError),
    "non-integer forget indices": (lambda: _unlearner([0.5]), E.ForgetSetError),
    "NaN in inputs": (_nan_inputs, E.DataError),
    "Inf in parameters": (_inf_param, E.NumericalError),
    "labels outside [0, C)": (_labels_out_of_range, E.DataError),
    "train-mode BatchNorm": (_train_mode_bn, E.ModelStateError),
    "model without BatchNorm for the BN set": (lambda: BatchNormPeft(nn.Sequential(nn.Linear(2, 2))), E.PeftError),
    "prompts on a non-ViT": (lambda: PromptPeft(tiny_bn_cnn()), E.PeftError),
    "PEFT set of another model": (_wrong_model, E.PeftError),
    "w0 of wrong length": (_u(w0=torch.zeros(5, dtype=torch.float64)), E.ShapeError),
    "w0 of wrong dtype": (_u(w0=torch.zeros(63, dtype=torch.float32)), E.DTypeError),
    "operator vector of wrong length": (_operator_wrong_length, E.ShapeError),
    "operator vector of wrong dtype": (_operator_wrong_dtype, E.DTypeError),
    "operator vector on wrong device": (_operator_wrong_device, E.DeviceError),
    "ridge <= 0 in a singular space": (_u(ridge=0.0, form="primal"), E.InvalidInputError),
    "negative ridge": (_u(ridge=-1.0), E.InvalidInputError),
    "rtol <= 0": (_u(rtol=0.0), E.InvalidInputError),
    "maxiter <= 0": (_u(maxiter=0), E.InvalidInputError),
    "unknown form": (_u(form="magic"), E.InvalidInputError),
    "backend='cupy' without a GPU": (_u(backend="cupy"), E.BackendUnavailableError),
    "unknown timm model": (_unknown_timm, E.ConfigError),
    "solver: non-square operator": (_solver_nonsquare, E.ShapeError),
    "solver: NaN in b": (_solver_nan_rhs, E.InvalidInputError),
}

TMP_CASES = {
    "truncated checkpoint": (_truncated_checkpoint, E.CheckpointError),
    "output path is a file": (_output_is_file, E.InvalidInputError),
    "config file with unknown keys": (_config_unknown_key, E.ConfigError),
    "missing dataset files": (_missing_dataset, E.DataError),
}


def test_catalogue_size():
    assert len(CASES) + len(TMP_CASES) >= 20


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input(name):
    fn, err = CASES[name]
    with pytest.raises(err) as info:
        fn()
    assert isinstance(info.value, E.FastNTKError)
    assert len(str(info.value)) > 20  # says what was wrong


@pytest.mark.parametrize("name", sorted(TMP_CASES))
def test_bad_input_files(name, tmp_path):
    fn, err = TMP_CASES[name]
    with pytest.raises(err) as info:
        fn(tmp_path)
    assert isinstance(info.value, E.FastNTKError)


def test_model_untouched_after_typed_errors():
    m, peft, X, y = _lin()
    h = _hash(m)
    for kw in (dict(rtol=-1), dict(form="x"), dict(ridge=0.0, form="primal"), dict(maxiter=0)):
        with pytest.raises(E.FastNTKError):
            unlearn(m, peft, (X[:8], y[:8]), (X[8:], y[8:]), w0=peft.vector(), inplace=True, **{"trained_with": "linearized-mse", "ridge": 0.1, **kw})
    assert _hash(m) == h
