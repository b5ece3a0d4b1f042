"""The unlearning package's options and plan: typed options, refusals before any Jacobian, every choice with its
reason in result.plan, preconditioners and backends through unlearn against the plain solve, the mean ridge
convention, and the README's Python examples run as written."""
import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from fastntk import errors as E
from fastntk.unlearn import HarmTolerance, NewtonOptions, SolverOptions, UnlearnOptions, unlearn
from fastntk.update.options import DEFAULT_RTOL, build_options, option_defaults
from fastntk.update.tilted import JacobianOptions
from tests.test_unlearn import make_problem, ridge_fit

LIN = dict(trained_with="linearized-mse", ridge=0.2)


def _problem(n=40, n_f=6, seed=0):
    m, peft, X, y = make_problem("linear", n, seed)
    w0 = peft.vector().clone()
    r, f = np.arange(n - n_f), np.arange(n - n_f, n)
    return m, peft, (X[r], y[r]), (X[f], y[f]), w0, (X, y)


# ---------------------------------------------------------------------------------------------- options
@pytest.mark.parametrize("build", [
    lambda: UnlearnOptions(form="magic"),
    lambda: UnlearnOptions(anchor="nowhere"),
    lambda: UnlearnOptions(steps=0),
    lambda: UnlearnOptions(steps=1.5),
    lambda: UnlearnOptions(scale="wide"),
    lambda: UnlearnOptions(scale=float("nan")),
    lambda: UnlearnOptions(ridge_convention="median"),
    lambda: UnlearnOptions(target_scale=0.0),
    lambda: UnlearnOptions(check_overlap="yes"),
    lambda: UnlearnOptions(solve={"rtol": 1e-8}),
    lambda: UnlearnOptions(harm=0.1),
    lambda: UnlearnOptions(steps=2, newton=NewtonOptions()),
    lambda: UnlearnOptions(jacobian=JacobianOptions(solver="direct")),  # solver options live in SolverOptions
    lambda: SolverOptions(solver="lu"),
    lambda: SolverOptions(rtol=0.0),
    lambda: SolverOptions(rtol=-1e-6),
    lambda: SolverOptions(maxiter=0),
    lambda: SolverOptions(preconditioner="ilu"),
    lambda: SolverOptions(precond_rank=0),
    lambda: SolverOptions(backend="jax"),
    lambda: SolverOptions(on_fail="ignore"),
    lambda: SolverOptions(callback=3),
    lambda: SolverOptions(direct_limit=-1),
    lambda: build_options(formm="primal"),
    lambda: build_options(progress=True),  # a parameter of unlearn, not an option
    lambda: build_options(options={"form": "primal"}),
])
def test_options_are_validated_at_construction(build):
    with pytest.raises(E.InvalidInputError) as info:
        build()
    assert len(str(info.value)) > 20


def test_options_are_frozen_and_fields_go_to_their_dataclass():
    o = build_options(form="primal", rtol=1e-12, strategy="cached", solver="direct", harm=HarmTolerance(enabled=False))
    assert o.form == "primal" and o.solve.rtol == 1e-12 and o.solve.solver == "direct"
    assert o.jacobian.strategy == "cached" and o.jacobian.solver == "direct"  # the shared field follows SolverOptions
    assert o.harm.enabled is False
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.form = "dual"
    base = UnlearnOptions(form="dual")
    assert build_options(base, rtol=1e-9).form == "dual" and base.solve.rtol == DEFAULT_RTOL  # replace, never mutate
    assert {"form", "rtol", "strategy", "memory_budget", "harm", "newton", "direct_limit"} <= set(option_defaults())


def test_unknown_keyword_of_unlearn_is_refused_before_work():
    m, peft, retain, forget, w0, _ = _problem()
    with pytest.raises(E.InvalidInputError, match="unknown option 'formm'"):
        unlearn(m, peft, retain, forget, w0=w0, formm="primal", **LIN)


def test_unknown_keyword_of_unlearner_is_refused():
    from fastntk.unlearn import Unlearner

    m, peft, retain, forget, w0, (X, y) = _problem()
    with pytest.raises(E.InvalidInputError, match="formm"):
        Unlearner(m, peft, (X, y), trained_with="linearized-mse", ridge=0.1, w0=w0, formm="primal")


def test_options_object_and_fields_give_the_same_update():
    m, peft, retain, forget, w0, _ = _problem()
    a = unlearn(m, peft, retain, forget, w0=w0, form="primal", rtol=1e-12, **LIN)
    b = unlearn(m, peft, retain, forget, w0=w0, options=UnlearnOptions(form="primal", solve=SolverOptions(rtol=1e-12)), **LIN)
    assert torch.equal(a.delta, b.delta)


# ---------------------------------------------------------------------------------------------- refusals before work
@pytest.fixture
def no_jacobian(monkeypatch):
    """Every Jacobian constructor the unlearning code reaches raises: a refusal must come first."""
    import fastntk.operators as ops
    import fastntk.update.oneshot as oneshot
    import fastntk.update.ridge as ridge
    import fastntk.update.steps as steps
    import fastntk.update.tilted as tilted

    def boom(*a, **k):
        raise AssertionError("a Jacobian was built before the refusal")

    for mod in (ops, oneshot, ridge, steps, tilted):
        monkeypatch.setattr(mod, "make_jacobian", boom)
    return boom


REFUSED = {
    "woodbury + anchor='retain'": (dict(form="woodbury", anchor="retain"), E.InvalidInputError),
    "dual + anchor='trained'": (dict(form="dual", anchor="trained"), E.InvalidInputError),
    "dense + anchor='retain'": (dict(form="dense", anchor="retain"), E.InvalidInputError),
    "CE + dual": (dict(trained_with="ce", form="dual"), E.InvalidInputError),
    "CE + woodbury": (dict(trained_with="ce", form="woodbury"), E.InvalidInputError),
    "CE + dense": (dict(loss="ce", form="dense"), E.InvalidInputError),
    "CE + linearize_at='w0'": (dict(trained_with="ce", linearize_at="w0"), E.InvalidInputError),
    "CE + anchor='fit'": (dict(trained_with="ce", anchor="fit"), E.InvalidInputError),
    "CE + ridge_convention='mean'": (dict(trained_with="ce", ridge_convention="mean"), E.InvalidInputError),
    "mean + woodbury": (dict(form="woodbury", ridge_convention="mean"), E.InvalidInputError),
    "mean + dual": (dict(form="dual", ridge_convention="mean"), E.InvalidInputError),
    "direct + dual": (dict(form="dual", solver="direct"), E.InvalidInputError),
    "cg + woodbury": (dict(form="woodbury", solver="cg"), E.InvalidInputError),
    "direct + streamed J": (dict(solver="direct", strategy="stream"), E.InvalidInputError),
    "jacobi + dual (Schur has no diagonal)": (dict(form="dual", preconditioner="jacobi"), E.NoDiagonalError),
    "ridge 0 in a singular space": (dict(ridge=0.0, form="primal"), E.InvalidInputError),
    "MSE ridge='auto' without w0": (dict(ridge="auto", w0=None, trained_with="mse"), E.InvalidInputError),
    "newton= on the MSE route": (dict(newton=NewtonOptions()), E.InvalidInputError),
    "backend='cupy' on CPU": (dict(backend="cupy"), E.BackendUnavailableError),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_plan_refuses_before_any_jacobian(name, no_jacobian):
    kw, err = REFUSED[name]
    m, peft, retain, forget, w0, _ = _problem(n=20)  # p = 63 > n_r·C = 42: kernel space is the smaller one
    args = {**LIN, "w0": w0, **kw}
    before = peft.vector().clone()
    with pytest.raises(err):
        unlearn(m, peft, retain, forget, inplace=True, **args)
    assert torch.equal(peft.vector(), before)


# ---------------------------------------------------------------------------------------------- result.plan
AUTO = ("linearize_at", "anchor", "loss", "steps", "form", "solver", "strategy", "ridge", "rtol", "backend", "preconditioner")


@pytest.mark.parametrize("kw", [dict(), dict(strategy="stream"), dict(solver="cg"), dict(ridge="auto"),
                                dict(form="dense"), dict(scale="trapezium"), dict(steps=2, trained_with="mse")])
def test_every_auto_choice_is_in_the_plan_with_its_reason(kw):
    m, peft, retain, forget, w0, _ = _problem()
    res = unlearn(m, peft, retain, forget, w0=w0, **{**LIN, **kw})
    for k in AUTO:
        assert k in res.plan, k
        assert set(res.plan[k]) == {"value", "reason"} and res.plan[k]["reason"], k
        assert res.reasons[k] == res.plan[k]["reason"]
    assert res.plan["form"]["value"] == res.form  # what the result says ran is what ran
    assert res.plan["strategy"]["value"] == res.strategy
    assert res.plan["solver"]["value"] in ("direct", "cg", "dense")
    assert res.summary()["plan"] == res.plan
    if kw.get("ridge") == "auto":
        assert res.plan["ridge"]["value"] == res.info["ridge"] and "matched" in res.plan["ridge"]["reason"]
    if "scale" in kw:
        assert res.plan["scale"]["value"] == pytest.approx(res.scale)


def test_plan_of_the_ce_route():
    m, peft, retain, forget, w0, _ = _problem()
    res = unlearn(m, peft, retain, forget, w0=w0, trained_with="ce", ridge="auto", harm=HarmTolerance(enabled=False))
    for k in AUTO + ("stop",):
        assert k in res.plan and res.plan[k]["reason"], k
    assert res.plan["loss"]["value"] == "ce" and res.plan["form"]["value"] == "primal"
    assert res.plan["anchor"]["value"] in ("trained", "retain")  # the by-request anchor, resolved
    assert res.plan["ridge"]["value"] == pytest.approx(res.info["ridge"])
    assert res.plan["solver"]["value"] == ("direct" if res.reasons["solver"].startswith("direct") else "cg")


def test_solve_records_are_solve_results():
    from fastntk.solvers import SolveResult

    m, peft, retain, forget, w0, _ = _problem(n=20)
    for kw in (dict(strategy="stream"), dict(), dict(form="woodbury")):
        res = unlearn(m, peft, retain, forget, w0=w0, rtol=1e-10, **LIN, **kw)
        assert res.records and all(isinstance(r, SolveResult) for r in res.records.values())
        assert set(res.solves) == set(res.records)
        keys = {frozenset(s) for s in res.solves.values()}
        assert len(keys) == 1  # one summary layout for direct and iterative solves
        assert all(s["converged"] and s.converged == s["converged"] for s in res.solves.values())  # keys read as attributes too


# ---------------------------------------------------------------------------------------------- solves through unlearn
@pytest.mark.parametrize("precond", ["jacobi", "nystrom"])
@pytest.mark.parametrize("kw", [dict(form="primal", strategy="stream"), dict(form="primal", strategy="cached", solver="cg"),
                                dict(form="primal", strategy="stream", anchor="retain"),
                                dict(form="primal", strategy="stream", anchor="trained")])
def test_preconditioners_through_unlearn_give_the_same_delta(precond, kw):
    m, peft, retain, forget, w0, _ = _problem(n=40)
    base = unlearn(m, peft, retain, forget, w0=w0, rtol=1e-12, precond_rank=10, **LIN, **kw)
    res = unlearn(m, peft, retain, forget, w0=w0, rtol=1e-12, preconditioner=precond, precond_rank=10, **LIN, **kw)
    assert float((res.delta - base.delta).abs().max()) <= 1e-8 * max(1.0, float(base.delta.abs().max()))
    assert any(r.method == "pcg" for r in res.records.values())
    assert res.plan["preconditioner"]["value"] == precond


def test_nystrom_through_the_dual_form():
    m, peft, retain, forget, w0, _ = _problem(n=20)  # kernel space smaller: dual
    base = unlearn(m, peft, retain, forget, w0=w0, rtol=1e-12, form="dual", strategy="stream", **LIN)
    res = unlearn(m, peft, retain, forget, w0=w0, rtol=1e-12, form="dual", strategy="stream", preconditioner="nystrom",
                  precond_rank=10, **LIN)
    assert float((res.delta - base.delta).abs().max()) <= 1e-8 * max(1.0, float(base.delta.abs().max()))


@pytest.mark.parametrize("kw", [dict(form="dual", strategy="stream"), dict(form="primal", strategy="stream"),
                                dict(form="primal", strategy="cached", solver="cg", anchor="retain"),
                                dict(form="primal", strategy="stream", steps=2, trained_with="mse", linearize_at="w0")])
def test_torch_array_solves_match_the_scipy_path(kw):
    """A whole unlearn with CG on torch tensors (backend='auto') against the SciPy path, float64."""
    m, peft, retain, forget, w0, _ = _problem(n=20 if kw["form"] == "dual" else 40)
    args = {**LIN, **kw, "w0": w0, "rtol": 1e-13}
    on_torch = unlearn(m, peft, retain, forget, **args)
    on_scipy = unlearn(m, peft, retain, forget, backend="scipy", **args)
    assert {r.backend for r in on_torch.records.values()} == {"torch"}
    assert {r.backend for r in on_scipy.records.values()} == {"scipy"}
    scale = max(1.0, float(on_scipy.delta.abs().max()))
    assert float((on_torch.delta - on_scipy.delta).abs().max()) <= 1e-10 * scale


def test_steps_apply_the_whole_update():
    m, peft, retain, forget, w0, _ = _problem(n=40)
    res = unlearn(m, peft, retain, forget, w0=w0, form="primal", steps=3, trained_with="mse", ridge=0.2, rtol=1e-10)
    assert torch.equal(res.w_old + res.delta, res.w_new)
    assert "step 3: H_r(w) Δ = −∇L_r(w)" in res.solves and len(res.info["line_search"]) == 2


# ---------------------------------------------------------------------------------------------- ridge convention
def test_mean_ridge_convention_is_one_definition():
    """``"mean"``: Δ = w*_{D_r}(n_r·λ) − w*_D(n·λ) (Golatkar's mean loss), the primal form's definition; the CG and the
    direct solves agree with a dense reference; the forms that use one ridge for both fits refuse it."""
    m, peft, retain, forget, w0, (X, y) = _problem(n=40, n_f=4)
    lam, n_r, n = 0.01, 36, 40
    ref = ridge_fit(peft, retain[0], retain[1], w0, lam * n_r, 3) - ridge_fit(peft, X, y, w0, lam * n, 3)
    peft.write(ridge_fit(peft, X, y, w0, lam * n, 3))
    for kw in (dict(solver="direct"), dict(solver="cg", strategy="stream"), dict(form="primal", solver="cg", strategy="cached")):
        res = unlearn(m, peft, retain, forget, trained_with="linearized-mse", ridge=lam, w0=w0, ridge_convention="mean",
                      rtol=1e-12, **kw)
        assert res.form == "primal" and "mean" in res.reasons["form"] + res.reasons["ridge"]
        assert float((res.delta - ref).abs().max()) <= 1e-8 * float(ref.abs().max())
    for form in ("dual", "woodbury", "dense"):
        with pytest.raises(E.InvalidInputError, match="ridge_convention='mean'"):
            unlearn(m, peft, retain, forget, trained_with="linearized-mse", ridge=lam, w0=w0, ridge_convention="mean", form=form)


def test_sum_ridge_convention_every_form_agrees():
    m, peft, retain, forget, w0, (X, y) = _problem(n=20, n_f=4)
    runs = {f: unlearn(m, peft, retain, forget, w0=w0, form=f, rtol=1e-12, **LIN).delta for f in ("dual", "primal", "woodbury", "dense")}
    for f, d in runs.items():
        assert float((d - runs["dense"]).abs().max()) <= 1e-8 * float(runs["dense"].abs().max()), f


# ---------------------------------------------------------------------------------------------- README examples
def _readme_blocks():
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


@pytest.mark.parametrize("i", range(len(_readme_blocks())))
def test_readme_python_examples_run(i, monkeypatch):
    """Each ```python block of README.md, run as written on tiny stand-ins (a small BN CNN for the timm model, random
    data for X_retain, X_forget, X_train, ...)."""
    import timm

    from tests.conftest import tiny_bn_cnn

    def small(name, num_classes=10, **kw):
        return tiny_bn_cnn(0, C=num_classes).float()

    monkeypatch.setattr(timm, "create_model", small)
    g = torch.Generator().manual_seed(0)
    X = torch.randn(130, 3, 8, 8, generator=g)
    y = torch.arange(130) % 10
    ns = {"X_train": X, "y_train": y, "X_retain": X[:120], "y_retain": y[:120], "X_forget": X[120:], "y_forget": y[120:]}
    exec(compile(_readme_blocks()[i], f"README.md block {i}", "exec"), ns)  # noqa: S102


def test_module_names_reachable_as_attributes_of_the_function():
    """``fastntk.unlearn`` is the function; the module's public names hang off it (the README's fastntk.unlearn.X)."""
    import sys

    import fastntk

    module = sys.modules["fastntk.unlearn"]
    assert callable(fastntk.unlearn) and fastntk.unlearn is module.unlearn
    assert fastntk.unlearn.match_ridge is module.match_ridge and fastntk.unlearn.Unlearner is module.Unlearner
