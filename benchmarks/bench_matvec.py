"""Primal Gauss-Newton matvec / matmat cost relative to one PEFT gradient pass.

    python benchmarks/bench_matvec.py [--quick] [--threads T] [--repeats R]

Writes benchmarks/results/matvec.json and .md (``--quick``: matvec_quick.*, never the full results).  For each model (timm resnet18 BN-only at
32x32; a small timm ViT with deep visual prompts), float32, N images in batches of 128:

* ``grad``       one PEFT gradient pass over N images: forward + backward of the sum of the
                 outputs w.r.t. the PEFT parameters only (all others requires_grad=False);
* ``fastntk``    ``GGNLinearOperator(StreamingJacobian(peft, X)).matvec(v)`` / ``.matmat(V8)``
                 (the library as wired: vjp of a vmapped jvp, ``_fast_ggn.gmat_batch_reference``);
* ``curvlinops`` its ``GGNLinearOperator`` (MSELoss, reduction="sum", params = the PEFT tensors),
                 the peer (its GGN is 2·JᵀJ; checked against ours);
* ``affine_bn`` / ``jacobian`` / ``dual``  the alternatives of ``fastntk/operators/_fast_ggn.py``
                 (affine_bn: vjp-of-jvp with eval BN as x·s+t and conv2d with a lean JVP rule)
                 streamed over the same batches (``dual``: k = 1 only, it loops over vectors).

Ratios: k = 1: time ÷ grad; k = 8: time ÷ (8·grad).  Issue targets: ≤ 1.6 and ≤ 1.1.
Timings: medians of ``--repeats`` runs (default 3), round-robin after one warm-up run of each
(the correctness check); minima too.  On a shared 2-core machine run with ``--threads 1``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402

from fastntk.operators import _fast_ggn as FG  # noqa: E402
from fastntk.operators.ggn import GGNLinearOperator  # noqa: E402
from fastntk.operators.linearization import StreamingJacobian  # noqa: E402
from fastntk.peft import BatchNormPeft, PromptPeft  # noqa: E402

warnings.filterwarnings("ignore", category=FutureWarning)

TARGET_K1, TARGET_K8 = 1.6, 1.1
K = 8


def build(which: str, quick: bool):
    import timm

    torch.manual_seed(0)
    if which == "resnet18-bn":
        model = timm.create_model("resnet18", num_classes=10, zero_init_last=False).eval()
        peft = BatchNormPeft(model)
        desc = "timm resnet18, 32x32, BatchNorm affine (p=9,600)"
    else:
        vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=4, num_classes=10).eval()
        peft = PromptPeft(vit, num_prompts=8, deep=True, seed=0, include_head=False)
        model = peft.model.eval()
        desc = "timm vit_tiny (dim 192, depth 4, patch 8 on 32x32 -> 16 patches), 8 deep prompts"
    peft_names = set(peft.names)
    for n, t in model.named_parameters():
        t.requires_grad_(n in peft_names)
    return model, peft, desc


def stream(fn, X, bs):
    def run():
        acc = None
        for s in range(0, X.shape[0], bs):
            r = fn(X[s : s + bs])
            acc = r if acc is None else acc + r
        return acc

    return run


def bench_model(which, args, log):
    model, peft, desc = build(which, args.quick)
    n, bs = args.n, args.batch_size
    g = torch.Generator().manual_seed(1)
    X = torch.randn(n, 3, 32, 32, generator=g)
    params = peft.trainable_parameters()
    f = peft.functional()
    w = peft.vector()
    p = peft.p
    v = torch.randn(p, generator=g)
    V8 = torch.randn(p, K, generator=g)
    src = StreamingJacobian(peft, X, batch_size=bs)
    G = GGNLinearOperator(src)
    C = src.C
    log(f"{which}: {desc}; p={p}, C={C}, N={n}, batch={bs}")

    def grad_batch(xb):
        out = model(xb)
        return torch.autograd.grad(out.sum(), params)[0].detach()

    fns = {"grad": stream(grad_batch, X, bs)}
    fns["fastntk k=1"] = lambda: G.matvec(v)
    fns[f"fastntk k={K}"] = lambda: G.matmat(V8)

    curv = None
    try:
        from curvlinops import GGNLinearOperator as CurvGGN

        Y = torch.randn(n, C, generator=g)
        data = [(X[s : s + bs], Y[s : s + bs]) for s in range(0, n, bs)]
        curv = CurvGGN(model, torch.nn.MSELoss(reduction="sum"), params, data, check_deterministic=False)
        fns["curvlinops k=1"] = lambda: curv @ v
        if not args.quick:
            fns[f"curvlinops k={K}"] = lambda: curv @ V8
    except ImportError:
        log("curvlinops not installed (pip install curvlinops-for-pytorch): peer skipped")

    def impl(name, V):
        fn = FG.IMPLEMENTATIONS[name]
        return stream(lambda xb: fn(f, w, xb, V), X, bs)

    fns["affine_bn k=1"] = impl("affine_bn", v[:, None])
    if not args.quick:
        fns[f"affine_bn k={K}"] = impl("affine_bn", V8)
        fns["jacobian k=1"] = impl("jacobian", v[:, None])
        fns["dual k=1"] = impl("dual", v[:, None])
    fns[f"jacobian k={K}"] = impl("jacobian", V8)

    # correctness against the library's own product (float32: ~1e-6)
    ref1, ref8 = G.matvec(v), G.matmat(V8)
    errs = {}
    for name, fn in fns.items():
        if name == "grad" or name.startswith("fastntk"):
            continue
        out = fn()
        if name.startswith("curvlinops"):
            out = out / 2.0  # MSELoss(sum) has Hessian 2I
        k8 = name.endswith(f"k={K}")
        ref = ref8 if k8 else ref1
        out = out.reshape(ref.shape) if not name.startswith(("affine", "jacobian", "dual")) else out.T.reshape(ref.shape)
        errs[name] = float((out - ref).norm() / ref.norm())
    log("  relative errors vs fastntk: " + ", ".join(f"{k}={e:.1e}" for k, e in errs.items()))

    # the correctness pass above ran every product once except these: it doubles as the warm-up
    fns["grad"]()
    res = _common.time_interleaved(fns, repeats=args.repeats, warmup=0, log=log)
    tg, tg_min = res["grad"]["median_s"], res["grad"]["min_s"]
    rows = {}
    for name, r in res.items():
        k = K if name.endswith(f"k={K}") else 1
        rows[name] = dict(
            r,
            k=k,
            ratio=r["median_s"] / (k * tg),
            ratio_min=r["min_s"] / (k * tg_min),
            rel_err=errs.get(name, 0.0),
        )
    return dict(model=which, description=desc, p=p, C=C, N=n, batch_size=bs, dtype="float32", results=rows)


def markdown(payload) -> str:
    out = [
        "# Primal Gauss-Newton matvec vs one PEFT gradient pass",
        "",
        f"Mode: {'quick' if payload['quick'] else 'full'}; medians of {payload['repeats']} runs (round-robin, after one "
        f"warm-up run each); torch threads = {payload['environment']['torch_threads']}.",
        f"ratio = time ÷ (k · gradient pass); targets: k=1 ≤ {TARGET_K1}, k={K} ≤ {TARGET_K8} per vector. "
        "ratio(min) uses the minima (least disturbed by other load). "
        "`auto` in `_fast_ggn.gmat_batch` = affine_bn for k < C/2, jacobian otherwise.",
        "",
    ]
    for m in payload["models"]:
        out += [f"## {m['model']}: {m['description']}", "", f"p = {m['p']}, C = {m['C']}, N = {m['N']}, batch {m['batch_size']}, {m['dtype']}", ""]
        header = ["implementation", "k", "median s", "min s", "ratio", "ratio(min)", "target", "met", "peak ΔRSS MB", "rel. err"]
        rows = []
        for name, r in m["results"].items():
            tgt = "" if name == "grad" else (TARGET_K1 if r["k"] == 1 else TARGET_K8)
            met = "" if name == "grad" else ("yes" if r["ratio"] <= tgt else "no")
            rows.append([name, r["k"], r["median_s"], r["min_s"], r["ratio"], r["ratio_min"], tgt, met, r["peak_rss_mb"], f"{r['rel_err']:.1e}"])
        out += [_common.markdown_table(header, rows), ""]
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="N=32, 2 repeats, 1 thread, fewer variants (≤ 2 min); writes matvec_quick.*")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice; quick: 1)")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--n", type=int, default=None, help="images (default 256; quick 32)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--models", default="resnet18-bn,vit-prompt")
    ap.add_argument("--name", default="matvec")
    ap.add_argument("--out", default=_common.RESULTS)
    args = ap.parse_args(argv)
    args.n = args.n or (32 if args.quick else 256)
    args.repeats = args.repeats or (2 if args.quick else 3)
    threads = _common.set_threads(args.threads or (1 if args.quick else None))
    t0 = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - t0:6.1f}s] {msg}", flush=True)

    log(f"torch {torch.__version__}, {threads} threads, {os.cpu_count()} CPUs")
    models = [bench_model(m, args, log) for m in args.models.split(",")]
    payload = dict(quick=args.quick, repeats=args.repeats, targets={"k1": TARGET_K1, f"k{K}_per_vector": TARGET_K8}, models=models,
                   environment=_common.environment(), wall_s=time.perf_counter() - t0)
    md = markdown(payload)
    jp, mp = _common.write_results(args.name + ("_quick" if args.quick else ""), payload, md, args.out)
    print(md)
    log(f"wrote {jp} and {mp}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
