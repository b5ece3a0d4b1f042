"""Which parts of Fast-NTK can run in reduced precision?  Error of Δ against a float64 reference.

On a GPU the tempting shortcuts are TF32 matrix products (``torch.backends.cuda.matmul.allow_tf32``: inputs
rounded to a 10-bit mantissa, float32 accumulation), a bfloat16 Jacobian cache (half the memory of float32)
and bfloat16 autocast for the per-sample Jacobian passes.  This script measures what each does to the
unlearning update on CPU, where every one of them can be reproduced bit-faithfully:

* TF32 -- the Jacobian's entries rounded to TF32 (round-to-nearest-even on the mantissa) before the float32
  Gram product, which is what a TF32 GEMM does to its inputs;
* bfloat16 storage -- ``J.to(torch.bfloat16)``, Gram product in float32;
* bfloat16 autocast -- the Jacobian computed under ``torch.autocast(device_type="cpu", dtype=torch.bfloat16)``;
* bfloat16 model -- every pass (forward, tangent, backward) in bfloat16.

Setting: the linearized ridge fit of docs/theory.md (BN + head of a small CNN, Fashion-MNIST), Δ = w*_{D_r} − w*_D by
the direct solver in float64 after each precision's Jacobian, so only the Jacobian/Gram precision differs.
Reported: ‖Δ − Δ₆₄‖ / ‖Δ₆₄‖, the relative change of the unlearned model's test outputs, and test-label
agreement with the float64 result.  The float32 CG tolerance (1e-4) is the yardstick: a precision whose error
stays below it costs nothing the solver had not already given up.

    python benchmarks/bench_precision.py [--quick] [--n 2000]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks._common import environment, write_results  # noqa: E402


def tf32_round(x):
    """Round float32 to TF32 (10 explicit mantissa bits), round-to-nearest-even, as a TF32 GEMM reads its inputs."""
    import torch

    b = x.float().contiguous().view(torch.int32)
    lsb = (b >> 13) & 1
    b = (b + 0x0FFF + lsb) & ~0x1FFF
    return b.view(torch.float32)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="digits, small n (≤ 1 min)")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--model", default="fastntk_cnn_small")
    ap.add_argument("--size", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--forget-fraction", type=float, default=0.1)
    ap.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    args = ap.parse_args(argv)
    import torch

    from fastntk.operators import make_jacobian
    from fastntk.peft import BatchNormPeft
    from fastntk.pipeline import ExperimentConfig, setup_model
    from fastntk.unlearn import _targets

    cfg = ExperimentConfig(dataset="digits" if args.quick else "fashion_mnist", image_size=8 if args.quick else args.size,
                           model=args.model, limit=300 if args.quick else args.n, pretrain_epochs=1 if args.quick else 2,
                           batch_size=128, seed=args.seed, progress=False)
    train, test, peft0, _, _ = setup_model(cfg)
    backbone = peft0.model
    n = len(train)
    rng = np.random.default_rng(args.seed)
    f_idx = np.sort(rng.choice(n, max(1, int(args.forget_fraction * n)), replace=False))
    r_idx = np.setdiff1d(np.arange(n), f_idx)
    C = len(cfg.finetune_classes)
    lam = 1.0

    def jacobians(model_dtype, autocast=False):
        m = backbone.to(model_dtype)
        peft = BatchNormPeft(m, include_head=True)
        w0 = peft.vector().clone()
        t = time.perf_counter()
        X = train.X.to(model_dtype)
        if autocast:
            with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
                src = make_jacobian(peft, X, w=w0, strategy="cached", memory_budget=None)
        else:
            src = make_jacobian(peft, X, w=w0, strategy="cached", memory_budget=None)
        return peft, w0, src, time.perf_counter() - t

    Y = _targets(torch.as_tensor(train.y), C, 1.0, torch.float64, "cpu").reshape(n, C)

    def delta_from(src, J_override=None, gram_dtype=torch.float64):
        """Δ = w*_(D_r) − w*_D: Gram products and Jᵀz in ``gram_dtype`` (as the GPU would), factor and solves in float64."""
        J = (src.J if J_override is None else J_override).to(gram_dtype)
        z = (Y - src.outputs().double()).to(gram_dtype)
        p_ = J.shape[1]
        J3 = J.view(n, C, p_)
        Jr, Jf = J3[r_idx].reshape(-1, p_), J3[f_idx].reshape(-1, p_)
        G_r, G_f = (Jr.T @ Jr).double(), (Jf.T @ Jf).double()
        b_r = (Jr.T @ z[r_idx].reshape(-1)).double()
        b_D = b_r + (Jf.T @ z[f_idx].reshape(-1)).double()
        eye = lam * torch.eye(p_, dtype=torch.float64)
        x_r = torch.linalg.solve(G_r + eye, b_r)
        x_D = torch.linalg.solve(G_r + G_f + eye, b_D)
        return x_r - x_D

    peft64, w0_64, src64, t64 = jacobians(torch.float64)
    d64 = delta_from(src64)
    f64 = peft64.functional()
    Xt = test.X.double()
    with torch.no_grad():
        base_out = f64(w0_64, Xt)

    def test_outputs(delta):
        # the unlearned linearized model's change on test: J_test Δ (float64 Jacobian of the test set)
        return src_test.jmat(delta.unsqueeze(1))[:, 0].reshape(-1, C)

    src_test = make_jacobian(peft64, Xt, w=w0_64, strategy="stream")
    ref_out = base_out + test_outputs(d64)
    ref_lab = ref_out.argmax(1)
    rows = {}

    def record(name, delta, seconds, note):
        out = base_out + test_outputs(delta)
        rows[name] = {
            "rel_err_delta": float((delta - d64).norm() / d64.norm()),
            "rel_err_test_outputs": float((out - ref_out).norm() / (ref_out - base_out).norm()),
            "label_agreement": float((out.argmax(1) == ref_lab).double().mean()),
            "jacobian_seconds": seconds, "note": note,
        }
        print(f"{name}: {rows[name]}", flush=True)

    record("float64 (reference)", d64, t64, "model, Jacobian, Gram, factor in float64")
    _, _, src32, t32 = jacobians(torch.float32)
    J32 = src32.J
    record("float32 Jacobian, float64 Gram", delta_from(src32), t32, "the CPU default's precision of J")
    record("float32 Jacobian, float32 Gram", delta_from(src32, gram_dtype=torch.float32), t32, "GPU float32 without TF32")
    record("TF32 Gram (inputs rounded)", delta_from(src32, J_override=tf32_round(J32), gram_dtype=torch.float32), t32,
           "torch.backends.cuda.matmul.allow_tf32 = True")
    record("bfloat16 J storage", delta_from(src32, J_override=J32.to(torch.bfloat16).float(), gram_dtype=torch.float32), t32,
           "cache J in bfloat16, products in float32")
    try:
        _, _, srcbf, tbf = jacobians(torch.float32, autocast=True)
        record("bfloat16 autocast Jacobian", delta_from(srcbf, gram_dtype=torch.float32), tbf,
               "per-sample Jacobian under torch.autocast(bfloat16)")
    except Exception as e:  # report, do not hide
        rows["bfloat16 autocast Jacobian"] = {"error": f"{type(e).__name__}: {e}"}
    try:
        _, _, srcb, tb = jacobians(torch.bfloat16)
        record("bfloat16 model (J computed in bfloat16)", delta_from(srcb, J_override=srcb.J.float(), gram_dtype=torch.float32), tb,
               "forward, tangent and backward passes in bfloat16, products in float32")
    except Exception as e:  # report, do not hide
        rows["bfloat16 model (J computed in bfloat16)"] = {"error": f"{type(e).__name__}: {e}"}
    backbone.float()
    lines = ["| precision | ‖Δ−Δ₆₄‖/‖Δ₆₄‖ | test-output change rel. err | test labels = float64 | J seconds | what it models |",
             "|---|---:|---:|---:|---:|---|"]
    for k, r in rows.items():
        if "error" in r:
            lines.append(f"| {k} | – | – | – | – | failed: {r['error'][:80]} |")
        else:
            lines.append(f"| {k} | {r['rel_err_delta']:.2e} | {r['rel_err_test_outputs']:.2e} | {100 * r['label_agreement']:.2f} % | "
                         f"{r['jacobian_seconds']:.1f} | {r['note']} |")
    md = (f"n = {n} ({'digits' if args.quick else 'Fashion-MNIST'}, {args.model}, BN + head p = {peft64.p}, {f_idx.size} forgotten), "
          f"λ = {lam}; Δ = w*_(D_r) − w*_D by float64 Cholesky after each precision's Jacobian / Gram product. "
          "The float32 CG tolerance is 1e-4.\n\n" + "\n".join(lines) + "\n")
    write_results("precision" + ("_quick" if args.quick else ""), {"env": environment(), "args": vars(args), "rows": rows}, md, args.out)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
