"""Is an unlearned model distributed like retrained models?  KLoM and the NeurIPS 2023 challenge score, N seeds.

Fashion-MNIST, a small BN CNN (backbone pretrained on classes 0-4, BN + head PEFT fine-tuned on classes 5-9).
Per scenario -- forget one class or a random 10 %, after ordinary cross-entropy fine-tuning ("standard") or
linearized MSE fine-tuning ("linearized") -- N originals (fine-tuning seed s: head initialisation and batch
order) and N oracles (seed s retrained without D_f, same recipe).  Every method unlearns every original:
untouched, Fast-NTK (the routes of :func:`fastntk_methods`), FT, GA, NegGrad+, SCRUB, SalUn, l1-sparse.  A
Fast-NTK request that raises (e.g. refused by its do-no-harm check) leaves the model as it was: that seed is
scored as the untouched model and the row says on how many seeds it happened (``failed_seeds`` in the JSON).
Scores (fastntk.evaluation):

* **main table, N/2 vs N/2**: the unlearned models of seeds [0, N/2) against the oracles of seeds [N/2, N);
  the floor is the oracles of seeds [0, N/2) against the same reference half (oracle vs oracle).  Same sample
  sizes and the same reference for every row, so a method's gap to the floor is the part that sampling
  noise does not explain;
* **N vs N** (second table): all N unlearned against all N oracles (no floor at this N: it would need 2N oracles);
* KLoM per point on the forget set, a retain subset and held-out (test) images: median and 95th percentile;
  the challenge's per-example epsilon on the forget set, F and the final score F·(RA_u/RA_r)·(TA_u/TA_r).

The baselines' hyper-parameters are chosen once per scenario on a validation split (fine-tuning-class
training images outside the fine-tuning set; never the test set): :func:`fastntk.baselines.select_hyperparameters`
with the grids and budget of ``fastntk.baselines.HP_GRIDS`` / ``HP_BUDGET``, unlearning the seed-0 original and
scoring ``mean |acc − mean oracle acc|`` over D_f and the validation split (the oracles of the reference half).

Writes benchmarks/results/indistinguishable[_quick].json, .md and one .png per scenario (per-example epsilon
and forget-set KLoM distributions per method).

    python benchmarks/bench_indistinguishable.py [--quick] [--n 32] [--scenarios class random] [--finetune standard linearized]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks._common import RESULTS, environment, set_threads, write_results  # noqa: E402


def fastntk_methods(finetune: str) -> dict[str, dict]:
    """THE Fast-NTK calls of this benchmark: method name -> keyword arguments of ``fastntk.unlearn.unlearn``.

    Two keys are consumed by :func:`run_fastntk` and not passed on as such: ``"route"`` -- ``"one-shot"``
    (``unlearn(model, peft, retain, forget, w0=w0, check_overlap=False, **kw)``) or ``"prepared"``
    (``Unlearner(model, peft, D, ridge=λ, w0=w0, **kw).prepare().forget(D_f)``: its seconds are prepare +
    request, the request alone is recorded too) -- and ``"ridge"``: ``"match"`` (``fastntk.unlearn.match_ridge``,
    timed with the method), ``"train"`` (the fine-tuning ridge), anything else (a number, ``"auto"``) is passed
    to ``unlearn`` unchanged, and without the key ``unlearn``'s default is used.  ``finetune`` is
    ``"standard"`` (cross-entropy) or ``"linearized"`` (MSE).  The one-shot route leaves every choice to
    ``unlearn``'s ``"auto"`` resolution from ``trained_with``; so does the prepared route (``Unlearner`` with
    ``trained_with``; the matched ridge after linearized MSE fine-tuning).
    """
    lin = finetune == "linearized"
    if lin:
        return {
            "Fast-NTK": dict(route="one-shot", trained_with="linearized-mse"),
            "Fast-NTK (prepared)": dict(route="prepared", trained_with="linearized-mse", ridge="match", strategy="auto"),
        }
    return {  # cross-entropy: every choice (anchor by request, ridge, curvature, steps) is the library's
        "Fast-NTK": dict(route="one-shot", trained_with="ce"),
        "Fast-NTK (prepared)": dict(route="prepared", trained_with="ce"),
    }


BASELINES = ("FT", "GA", "NegGrad+", "SCRUB", "SalUn", "l1-sparse")


# ------------------------------------------------------------------------------------------ setup


class Scenario:
    """Data, PEFT model, forget split, recipe of one (finetune, forget) scenario; models are PEFT vectors."""

    def __init__(self, args, finetune: str, forget: str):
        import torch

        from fastntk.data import make_forget_split
        from fastntk.pipeline import ExperimentConfig, setup_model

        self.finetune, self.forget_kind = finetune, forget
        self.cfg = ExperimentConfig(
            dataset="fashion_mnist", data_dir=args.data_dir, image_size=args.size, model=args.model, limit=None,
            pretrain_epochs=args.pretrain_epochs, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
            finetune=finetune, finetune_loss="mse" if finetune == "linearized" else "ce", ridge=args.ridge,
            forget=forget, forget_class=args.forget_class, forget_fraction=0.1, seed=0, progress=False,
        ).validate()
        pool, test, self.peft, _, _ = setup_model(self.cfg)
        self.model = self.peft.model
        self.w_base = self.peft.vector().clone()  # pretrained BN affine + the seed-0 head
        rng = np.random.default_rng(12345)
        perm = rng.permutation(len(pool))
        self.train = pool.subset(np.sort(perm[: args.n_train]))
        self.val = pool.subset(np.sort(perm[args.n_train : args.n_train + args.n_val]))  # HP selection only
        self.test = test.subset(np.sort(rng.permutation(len(test))[: args.n_eval]))
        if forget == "class":
            self.r_idx, self.f_idx = make_forget_split(self.train.y, classes=[args.forget_class])
        else:
            self.r_idx, self.f_idx = make_forget_split(self.train.y, fraction=0.1, seed=0)
        self.retain, self.forget = self.train.subset(self.r_idx), self.train.subset(self.f_idx)
        r_eval = np.sort(rng.permutation(len(self.r_idx))[: args.n_eval])
        self.retain_eval = self.retain.subset(r_eval)
        self.recipe = self.cfg.finetune_recipe()
        if args.patience:  # the practitioner's recipe: stop once the validation split stops improving (epochs = maximum)
            self.recipe.update(val=self.val, patience=args.patience)
        if getattr(args, "optimizer", "adam") != "adam":  # the fine-tuning (and so the retraining) optimizer
            self.recipe.update(optimizer=args.optimizer)
        self.linearized = finetune == "linearized"
        self.k = len(self.cfg.finetune_classes)
        self.torch = torch
        self.n_heads = 0

    def w0(self, seed: int):
        """PEFT vector before fine-tuning for seed ``seed``: shared pretrained BN, head drawn with the seed."""
        self.peft.write(self.w_base)  # the BN entries of the previous seed's fine-tuned vector are still in the model
        self.torch.manual_seed(10_000 + seed)
        self.model.reset_classifier(self.k)
        self.model.eval()
        return self.peft.vector().clone()

    def logits(self, w, w0, data):
        from fastntk.train import predict

        return predict(self.peft, data.X, 512, w=w, linearize_at=w0 if self.linearized else None).double().numpy()

    def outputs(self, w, w0) -> dict:
        """Logits on the evaluation sets (forget, retain subset, held-out) and the accuracies."""
        from fastntk.metrics import accuracy

        out = {k: self.logits(w, w0, d) for k, d in (("forget", self.forget), ("retain", self.retain_eval), ("held-out", self.test))}
        for k, d in (("forget", self.forget), ("retain", self.retain_eval), ("held-out", self.test)):
            out["acc_" + k] = accuracy(self.torch.as_tensor(out[k]), d.y)
        return out


SEED_STRIDE = 1000  # batch_schedule(seed, epoch) draws with seed + epoch: strided seeds never share an epoch's order


def train_models(sc: Scenario, seed: int):
    """(w0, original, oracle) of one seed, the retraining seconds and the epochs (run, best) of both (batch order seed
    ``SEED_STRIDE·seed``)."""
    from fastntk import baselines as B
    from fastntk.train import finetune_peft

    w0 = sc.w0(seed)
    ft = finetune_peft(sc.peft, sc.train, w0=w0, seed=SEED_STRIDE * seed, desc="fine-tune", **sc.recipe)
    gold = B.retrain(sc.peft, sc.train, sc.f_idx, w0=w0, seed=SEED_STRIDE * seed, **sc.recipe)
    sc.peft.write(ft.w)
    epochs = {"finetune": [ft.epochs_run, ft.best_epoch], "retrain": [gold.log.epochs_run, gold.log.best_epoch]}
    return w0, ft.w.clone(), gold.w.clone(), gold.seconds, epochs


def run_baseline(sc: Scenario, name: str, w, w0, seed: int, hp: dict):
    """One baseline from the trained vector ``w`` with hyper-parameters ``hp`` (``lr_scale`` × the fine-tuning lr)."""
    from fastntk import baselines as B

    hp = dict(hp)
    lr = sc.cfg.lr * float(hp.pop("lr_scale", 0.1))
    lin = w0 if sc.linearized else None
    common = dict(w_trained=w, lr=lr, seed=SEED_STRIDE * seed, batch_size=sc.cfg.batch_size, progress=False)
    if name == "FT":
        return B.finetune_retain(sc.peft, sc.train, sc.f_idx, w0=w0, ridge=sc.cfg.ridge, linearized=sc.linearized,
                                 loss=sc.cfg.finetune_loss, target_scale=sc.cfg.target_scale, **common, **hp)
    fns = {"GA": B.gradient_ascent, "NegGrad+": B.neggrad_plus, "SCRUB": B.scrub, "SalUn": B.salun}
    if name in fns:
        return fns[name](sc.peft, sc.train, sc.f_idx, linearize_at=lin, **common, **hp)
    if name == "l1-sparse":
        return B.l1_sparse(sc.peft, sc.train, sc.f_idx, linearize_at=lin, loss=sc.cfg.finetune_loss,
                           target_scale=sc.cfg.target_scale, **common, **hp)
    raise ValueError(f"unknown baseline {name!r}")


def run_fastntk(sc: Scenario, spec: dict, w, w0) -> tuple:
    """One Fast-NTK route of :func:`fastntk_methods` from the trained vector ``w``: (w_new, seconds, info)."""
    from fastntk.unlearn import Unlearner, match_ridge, unlearn

    kw = dict(spec)
    route, ridge = kw.pop("route", "one-shot"), kw.pop("ridge", None)
    sc.peft.write(w)
    t = time.perf_counter()
    if ridge == "match":
        ridge, _ = match_ridge(sc.peft, (sc.train.X, sc.train.y), w_trained=w, w0=w0, target_scale=sc.cfg.target_scale)
    elif ridge == "train":
        ridge = sc.cfg.ridge
    info = {"ridge": ridge}
    if ridge is not None:
        kw["ridge"] = ridge
    if route == "prepared":
        u = Unlearner(sc.model, sc.peft, (sc.train.X, sc.train.y), w0=w0, **kw).prepare()
        t_req = time.perf_counter()
        u.forget(sc.f_idx)
        info["request_seconds"] = time.perf_counter() - t_req
        w_new = u.w.clone()
    else:
        res = unlearn(sc.model, sc.peft, (sc.retain.X, sc.retain.y), (sc.forget.X, sc.forget.y), w0=w0,
                      check_overlap=False, **kw)
        w_new = res.w_new.clone()
        info["form"] = res.form
    sec = time.perf_counter() - t
    sc.peft.write(w)
    return w_new, sec, info


def select_baseline_hps(sc: Scenario, w, w0, oracle_outputs: list, budget: int) -> dict:
    """Per baseline: hyper-parameters chosen on the validation split (fastntk.baselines.select_hyperparameters)."""
    from fastntk import baselines as B

    ref_forget = float(np.mean([o["acc_forget"] for o in oracle_outputs]))
    ref_val = float(np.mean([o["acc_val"] for o in oracle_outputs]))
    objective = B.validation_objective(sc.peft, {"forget": sc.forget, "val": sc.val}, {"forget": ref_forget, "val": ref_val},
                                       linearize_at=w0 if sc.linearized else None)
    out = {}
    for name in BASELINES:
        sel = B.select_hyperparameters(lambda **hp: run_baseline(sc, name, w, w0, 0, hp), B.HP_GRIDS[name], objective,
                                       budget=budget, seed=0)
        out[name] = {"hp": sel.best, "val_objective": sel.score, "trials": sel.trials, "search_seconds": sel.seconds}
        print(f"    HP {name}: {sel.best} (validation objective {sel.score:.4f}, {len(sel.trials)} tried)", flush=True)
    return out


# ------------------------------------------------------------------------------------------ scoring


def score(unl: list, orc: list, labels: dict) -> dict:
    """KLoM per split and the challenge score of the unlearned outputs ``unl`` against the oracle outputs ``orc``."""
    from fastntk.evaluation import challenge_score, klom, margins, summarize

    out = {"n_unlearned": len(unl), "n_oracle": len(orc)}
    # where the forget-set KLoM comes from: the level of the margins (their mean over models and points, against the
    # oracles') and what is left once every unlearned margin is shifted by that mean offset
    mu = margins(np.stack([u["forget"] for u in unl]), labels["forget"])
    mo = margins(np.stack([o["forget"] for o in orc]), labels["forget"])
    off = float(mu.mean() - mo.mean())
    out["forget_margin"] = {"mean": float(mu.mean()), "oracle_mean": float(mo.mean()), "offset": off,
                            "sd_over_models": float(mu.std(0).mean()), "oracle_sd_over_models": float(mo.std(0).mean()),
                            "klom_shifted": summarize(klom(mu - off, mo))}
    for split in ("forget", "retain", "held-out"):
        vals = klom(mu, mo) if split == "forget" else klom(np.stack([u[split] for u in unl]), np.stack([o[split] for o in orc]),
                                                           labels[split])  # the forget margins: computed above
        out["klom_" + split] = summarize(vals)
        if split == "forget":
            out["klom_forget_values"] = vals.tolist()
    ra = (float(np.mean([u["acc_retain"] for u in unl])), float(np.mean([o["acc_retain"] for o in orc])))
    ta = (float(np.mean([u["acc_held-out"] for u in unl])), float(np.mean([o["acc_held-out"] for o in orc])))
    cs = challenge_score(np.stack([u["forget"] for u in unl]), np.stack([o["forget"] for o in orc]), ra=ra, ta=ta)
    # the kit scans "unlearned when value > t" only: an ensemble more confident than the oracles (the untouched model on a
    # forgotten class) is caught only at full separation; the two-sided F adds the complementary attacks
    cs2 = challenge_score(np.stack([u["forget"] for u in unl]), np.stack([o["forget"] for o in orc]), two_sided=True)
    out["F_two_sided"] = cs2["F"]
    e = cs["epsilon"]
    q = lambda a: None if np.isinf(a) else float(a)  # noqa: E731  (JSON has no infinity: ε = ∞ is written as null)
    out.update(F=cs["F"], score=cs["score"], epsilon_values=[q(v) for v in e],
               epsilon={"median": q(np.quantile(e, 0.5, method="inverted_cdf")), "p95": q(np.quantile(e, 0.95, method="inverted_cdf")),
                        "frac_inf": float(np.isinf(e).mean()), "frac_below_0.5": float((e < 0.5).mean())},
               RA=ra[0], TA=ta[0], UA=1.0 - float(np.mean([u["acc_forget"] for u in unl])))
    return out


def run_scenario(args, finetune: str, forget: str) -> dict:
    sc = Scenario(args, finetune, forget)
    N, half = args.n, args.n // 2
    print(f"{finetune} fine-tuning, {forget} forgetting: n_train={len(sc.train)}, n_forget={len(sc.f_idx)}, "
          f"n_val={len(sc.val)}, p={sc.peft.p}, N={N}", flush=True)
    labels = {"forget": sc.forget.y.numpy(), "retain": sc.retain_eval.y.numpy(), "held-out": sc.test.y.numpy()}
    seeds = list(range(N))
    models, retrain_s, epochs = [], [], []
    t = time.perf_counter()
    for s in seeds:
        w0, w, o, sec, ep = train_models(sc, s)
        models.append((w0, w, o))
        retrain_s.append(sec)
        epochs.append(ep)
    print(f"  {N} originals + {N} oracles trained in {time.perf_counter() - t:.0f}s", flush=True)
    # the seeds share the pretrained BN entries of w0 and differ in the head only
    w0_diff = max(int((m[0] != models[0][0]).sum()) for m in models)
    head_params = sum(int(q.numel()) for q in sc.model.get_classifier().parameters())
    oracle_out = []
    for w0, _, o in models:
        d = sc.outputs(o, w0)
        d["acc_val"] = float(np.mean(sc.logits(o, w0, sc.val).argmax(-1) == sc.val.y.numpy()))
        oracle_out.append(d)
    t = time.perf_counter()
    hps = select_baseline_hps(sc, models[0][1], models[0][0], oracle_out[half:], args.hp_budget)
    t_hp = time.perf_counter() - t
    methods: dict[str, dict] = {}
    outs: dict[str, list] = {}

    def record(name, s, w_new, w0, sec, info=None):
        outs.setdefault(name, []).append(sc.outputs(w_new, w0))
        m = methods.setdefault(name, {"seconds": [], "info": []})
        m["seconds"].append(sec)
        if info:
            m["info"].append(info)

    for s, (w0, w, _) in enumerate(models):
        record("untouched", s, w, w0, 0.0)
        for name, spec in fastntk_methods(finetune).items():
            try:
                w_new, sec, info = run_fastntk(sc, spec, w, w0)
                record(name, s, w_new, w0, sec, info)
            except Exception as exc:  # a refused or failed request leaves the model as it was: scored as untouched
                err = f"{type(exc).__name__}: {exc}"
                record(name, s, w, w0, float("nan"), {"seed": s, "error": err})
                methods[name].setdefault("errors", []).append({"seed": s, "error": err})
                print(f"  seed {s}: {name}: {err[:200]}", flush=True)
        for name in BASELINES:
            r = run_baseline(sc, name, w, w0, s, hps[name]["hp"])
            record(name, s, r.w, w0, r.seconds)
        sc.peft.write(w)
    rows, rows_full = {}, {}
    ref = oracle_out[half:]
    rows["oracle vs oracle (floor)"] = score(oracle_out[:half], ref, labels)
    for name, o in outs.items():
        m = methods[name]
        failed = [e["seed"] for e in m.get("errors", [])]
        for r, n_scored in ((rows, half), (rows_full, N)):
            if len(failed) == N:
                r[name] = {"error": m["errors"][0]["error"], "failed_seeds": failed}
                continue
            r[name] = score(o[:n_scored], ref if n_scored == half else oracle_out, labels)
            ok = [sec for sec in m["seconds"][:n_scored] if np.isfinite(sec)]
            r[name]["seconds"] = float(np.mean(ok)) if ok else float("nan")
            r[name]["time_ratio"] = r[name]["seconds"] / max(float(np.mean(retrain_s)), 1e-12)
            r[name]["failed_seeds"] = [f for f in failed if f < n_scored]
    return {"finetune": finetune, "forget": forget, "N": N, "half": half,
            "sizes": {"n_train": len(sc.train), "n_forget": int(len(sc.f_idx)), "n_retain_eval": len(sc.retain_eval),
                      "n_heldout": len(sc.test), "n_val": len(sc.val), "p": sc.peft.p, "head_params": head_params,
                      "w0_max_entries_differing": w0_diff},
            "retrain_seconds": float(np.mean(retrain_s)), "epochs": epochs, "hp_selection": hps, "hp_selection_seconds": t_hp,
            "fastntk_info": {k: v.get("info") for k, v in methods.items() if k.startswith("Fast-NTK")},
            "rows": rows, "rows_full": rows_full}


# ------------------------------------------------------------------------------------------ report


COLS = ["F", "F₂", "score", "KLoM f med", "KLoM f p95", "KLoM r med", "KLoM r p95", "KLoM h med", "KLoM h p95", "UA", "RA", "TA",
        "s", "× retrain"]


def _row(name: str, r: dict) -> list:
    if "error" in r:
        return [name + " (failed on every seed)"] + ["–"] * (len(COLS) - 1) + [r["error"][:80]]
    if r.get("failed_seeds"):
        name += f" (refused on {len(r['failed_seeds'])} of {r['n_unlearned']}: scored untouched there)"
    k = lambda s, q: r[f"klom_{s}"][q]  # noqa: E731
    return [name, r["F"], r.get("F_two_sided", float("nan")), r["score"], k("forget", "median"), k("forget", "p95"), k("retain", "median"), k("retain", "p95"),
            k("held-out", "median"), k("held-out", "p95"), 100 * r["UA"], 100 * r["RA"], 100 * r["TA"],
            r.get("seconds", float("nan")), r.get("time_ratio", float("nan"))]


def _verdict(res: dict) -> str:
    rows = {k: v for k, v in res["rows"].items() if "error" not in v}
    floor = rows["oracle vs oracle (floor)"]
    cand = {k: v for k, v in rows.items() if not k.startswith("oracle")}
    if not cand:
        return ""
    best_f = max(cand, key=lambda k: cand[k]["F"])
    best_med = min(cand, key=lambda k: cand[k]["klom_forget"]["median"])
    best_p95 = min(cand, key=lambda k: cand[k]["klom_forget"]["p95"])
    s = (f"Best F: {best_f} ({cand[best_f]['F']:.3f}; floor {floor['F']:.3f}). Lowest forget-set KLoM median: {best_med} "
         f"({cand[best_med]['klom_forget']['median']:.3f}; floor {floor['klom_forget']['median']:.3f}); lowest p95: "
         f"{best_p95} ({cand[best_p95]['klom_forget']['p95']:.3f}; floor {floor['klom_forget']['p95']:.3f}).")
    if all("F_two_sided" in v for v in rows.values()):
        best_f2 = max(cand, key=lambda k: cand[k]["F_two_sided"])
        s += f" Best two-sided F₂: {best_f2} ({cand[best_f2]['F_two_sided']:.3f}; floor {floor['F_two_sided']:.3f})."
    if "Fast-NTK" in cand:
        s += f" Fast-NTK: F − floor = {cand['Fast-NTK']['F'] - floor['F']:+.3f}."
    return s


def report(results: list, args) -> str:
    from benchmarks._common import markdown_table

    out = [f"N = {args.n} originals and N oracles per scenario (fine-tuning seeds 0..N−1); {args.model}, {args.size}×{args.size} "
           "Fashion-MNIST, BN + head PEFT. **F** (challenge forgetting quality, higher is better, 1 = every forget example "
           "has ε < 0.5), **F₂** the same with two-sided threshold attacks (the kit's one-sided scan cannot see an ensemble more "
           "confident than the oracles, e.g. the untouched model on a forgotten class, short of full separation) and "
           "**score** = F·RA_u/RA_r·TA_u/TA_r; **KLoM** (lower is better) median / 95th percentile over "
           "forget (f), retain-subset (r) and held-out (h) points; UA/RA/TA in % (mean over models); s = unlearning seconds "
           "per model (optimisation only; Fast-NTK with ridge matching), × retrain = ÷ the mean retraining time.\n"]
    for res in results:
        z = res["sizes"]
        out.append(f"### {res['forget']} forgetting, {res['finetune']} fine-tuning — n_train={z['n_train']}, "
                   f"n_forget={z['n_forget']}, p={z['p']}\n")
        ep = res.get("epochs")
        if ep:
            rng = {k: (min(e[k][0] for e in ep), max(e[k][0] for e in ep)) for k in ("finetune", "retrain")}
            out.append(("Early stopping on the validation split (patience " + str(args.patience) + ", at most "
                        + str(args.epochs) + " epochs): " if args.patience else f"Fixed {args.epochs} epochs: ")
                       + f"fine-tuning ran {rng['finetune'][0]}–{rng['finetune'][1]} epochs, retraining "
                       f"{rng['retrain'][0]}–{rng['retrain'][1]}; optimizer {getattr(args, 'optimizer', 'adam')}, "
                       f"lr {args.lr:g}.\n")
        out.append(f"N/2 vs N/2 ({res['half']} unlearned of seeds 0..{res['half'] - 1} vs the oracles of seeds "
                   f"{res['half']}..{res['N'] - 1}; the floor: the oracles of seeds 0..{res['half'] - 1} vs the same):\n")
        out.append(markdown_table(["method"] + COLS, [_row(k, v) for k, v in res["rows"].items()]))
        out.append("\n" + _verdict(res) + "\n")
        out.append("Forget-set margins (N/2 vs N/2): the mean margin over models and points against the oracles', its "
                   "spread over models (mean per-point sd), and the forget-set KLoM once every unlearned margin is shifted by "
                   "the mean offset (what is left when only the level is matched):\n")
        fm = [[k, v["forget_margin"]["mean"], v["forget_margin"]["oracle_mean"], v["forget_margin"]["offset"],
               v["forget_margin"]["sd_over_models"], v["forget_margin"]["oracle_sd_over_models"],
               v["forget_margin"]["klom_shifted"]["median"], v["forget_margin"]["klom_shifted"]["p95"]]
              for k, v in res["rows"].items() if "forget_margin" in v]
        out.append(markdown_table(["method", "margin mean", "oracles'", "offset", "sd over models", "oracles' sd",
                                   "KLoM f med, shifted", "KLoM f p95, shifted"], fm) + "\n")
        out.append(f"N vs N ({res['N']} unlearned vs {res['N']} oracles; no floor at this N):\n")
        out.append(markdown_table(["method"] + COLS, [_row(k, v) for k, v in res["rows_full"].items()]))
        hp = "; ".join(f"{k} {v['hp']}" for k, v in res["hp_selection"].items())
        out.append(f"\nHyper-parameters (validation split, ≤ {args.hp_budget} configurations each, "
                   f"{res['hp_selection_seconds']:.0f}s in all): {hp}\n")
    return "\n".join(out)


def plot(res: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {k: v for k, v in res["rows"].items() if "error" not in v}
    names = list(rows)
    fig, ax = plt.subplots(1, 2, figsize=(13, 0.45 * len(names) + 2))
    eps = [np.array([np.nan if v is None else v for v in rows[k]["epsilon_values"]], dtype=float) for k in names]
    cap = max([np.nanmax(e) for e in eps if np.isfinite(e).any()] + [1.0])
    eps = [np.where(np.isnan(e), cap * 1.1, e) for e in eps]  # ε = ∞ drawn just right of the largest finite ε
    ax[0].boxplot(eps, vert=False, showfliers=True)
    ax[0].axvline(0.5, ls=":", c="gray")
    ax[0].set_xlabel("per-example ε on D_f (challenge; ∞ at the right edge; < 0.5 scores 1)")
    ax[1].boxplot([rows[k]["klom_forget_values"] for k in names], vert=False, showfliers=True)
    ax[1].set_xlabel("KLoM on D_f (KL of margin histograms, unlearned ‖ oracle)")
    for a in ax:
        a.set_yticks(range(1, len(names) + 1), names)
        a.invert_yaxis()
    fig.suptitle(f"{res['forget']} forgetting, {res['finetune']} fine-tuning: N/2 vs N/2 against the same oracles")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="N=4, tiny subset, 8×8 images: a smoke run (< 2 min on one core)")
    ap.add_argument("--n", type=int, default=32, help="originals and oracles per scenario (even, >= 4)")
    ap.add_argument("--scenarios", nargs="+", default=["class", "random"], choices=["class", "random"])
    ap.add_argument("--finetune", nargs="+", default=["standard", "linearized"], choices=["standard", "linearized"])
    ap.add_argument("--model", default="fastntk_cnn_tiny")
    ap.add_argument("--size", type=int, default=16)
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--n-val", type=int, default=500)
    ap.add_argument("--n-eval", type=int, default=500, help="retain-subset and held-out points scored")
    ap.add_argument("--epochs", type=int, default=5, help="epochs (the maximum with --patience)")
    ap.add_argument("--patience", type=int, default=0,
                    help="early stopping: stop once the validation split has not improved for this many epochs (0: fixed epochs)")
    ap.add_argument("--pretrain-epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--optimizer", default="adam", choices=["adam", "sgd"],
                    help="fine-tuning and retraining optimizer (sgd: momentum 0.9; give it its own --lr, e.g. 0.1)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--ridge", type=float, default=1.0)
    ap.add_argument("--forget-class", type=int, default=2)
    ap.add_argument("--hp-budget", type=int, default=None, help="configurations per baseline (default fastntk.baselines.HP_BUDGET)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    ap.add_argument("--name", default="indistinguishable",
                    help="results file stem (to split the scenarios over processes: one --finetune/--scenarios/--name each)")
    args = ap.parse_args(argv)
    from fastntk.baselines import HP_BUDGET

    if args.quick:
        args.n, args.size, args.n_train, args.n_val, args.n_eval = 4, 8, 300, 100, 100
        args.epochs, args.pretrain_epochs = (2 if not args.patience else min(args.epochs, 4)), 1
        args.hp_budget = args.hp_budget or 2
    args.hp_budget = args.hp_budget or HP_BUDGET
    if args.n < 4 or args.n % 2:
        ap.error("--n must be even and >= 4 (two halves of at least 2 models)")
    set_threads(args.threads)
    t0 = time.perf_counter()
    results = []
    for finetune in args.finetune:
        for forget in args.scenarios:
            results.append(run_scenario(args, finetune, forget))
    name = args.name + ("_quick" if args.quick else "")
    outdir = args.out or RESULTS
    os.makedirs(outdir, exist_ok=True)
    for res in results:
        plot(res, os.path.join(outdir, f"{name}_{res['finetune']}_{res['forget']}.png"))
    md = report(results, args)
    total = time.perf_counter() - t0
    write_results(name, {"quick": args.quick, "args": vars(args), "seconds": total, "results": results,
                         "environment": environment()}, md + f"\nTotal wall time {total:.0f}s.\n", outdir)
    print(md)
    print(f"total {total:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
