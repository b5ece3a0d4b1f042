"""Regenerate BENCHMARKS.md from the tables the benchmark scripts wrote under benchmarks/results/.

Each benchmark script writes ``results/<name>.json`` (numbers) and ``results/<name>.md`` (its table), and
some a ``results/<name>.png`` plot; ``--quick`` runs write ``<name>_quick.*`` and never replace a full run's
files.  This script only stitches the tables together in a fixed order, with the command that produced each
(and a link to the plot when there is one).
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")

SECTIONS = [
    ("ce_random_now_cnn", "CE random 10 %, the default at the end of this session (shared Gram, reused step solve, float32 Grams, grown gated sketch), small CNN, seeds 0–2",
     "OMP_NUM_THREADS=1 python benchmarks/bench_ce.py --models fastntk_cnn_small --scenarios random --random-seeds 0 1 2 --variants 'Fast-NTK (default)' --baselines --name ce_random_now_cnn"),
    ("ce_random_now_other", "The same on the ViT with prompts, resnet10t and resnet18 (2k images)",
     "OMP_NUM_THREADS=1 python benchmarks/bench_ce.py --models fastntk_vit_tiny resnet10t resnet18 --limit 2000 --scenarios random --random-seeds 0 1 2 --variants 'Fast-NTK (default)' --baselines --name ce_random_now_other"),
    ("ce_cost_cnn", "CE random 10 %, cost of the current default (one tilted step; the half-sketch estimate's solve reused as the step), small CNN, seeds 0–2 (the same setups as ce_default, whose random rows ran the growth-tested iteration and a separate step solve)",
     "OMP_NUM_THREADS=1 python benchmarks/bench_ce.py --models fastntk_cnn_small --scenarios random --random-seeds 0 1 2 --variants 'Fast-NTK (default)' --baselines --name ce_cost_cnn"),
    ("ce_cost_other", "The same on the ViT with prompts, resnet10t and resnet18 (2k images; before the gated sketch was grown on rejection: resnet10t seed 0 and resnet18 seeds 0 and 1 built the exact J̃)",
     "OMP_NUM_THREADS=1 python benchmarks/bench_ce.py --models fastntk_vit_tiny resnet10t resnet18 --limit 2000 --scenarios random --random-seeds 0 1 2 --variants 'Fast-NTK (default)' --baselines --name ce_cost_other"),
    ("ce_grow_r10", "A rejected gated sketch grown by more draws instead of the exact J̃: resnet10t, random seed 0 (its gated sketch's estimate 0.41)",
     "OMP_NUM_THREADS=1 python benchmarks/bench_ce.py --models resnet10t --limit 2000 --scenarios random --random-seeds 0 --variants 'Fast-NTK (default)' --baselines --name ce_grow_r10"),
    ("ce_grow_r18", "The same, resnet18, random seed 1 (estimate 0.34)",
     "OMP_NUM_THREADS=1 python benchmarks/bench_ce.py --models resnet18 --limit 2000 --scenarios random --random-seeds 1 --variants 'Fast-NTK (default)' --baselines --name ce_grow_r18"),
    ("scaling_ce_resnet18_sampled", "One-shot CE unlearning of resnet18 BN + head at n = 15k and 60k (random 10 %, sketch m = 8192, k = 2), 2 threads: the one step scored on the do-no-harm check's 4096 retain samples, the estimate's solve reused (the series below ran before both)",
     "OMP_NUM_THREADS=2 python benchmarks/bench_scaling.py --ns 15000 60000 --models resnet18 --trained-with ce --sketch-m 8192 --budget 3e9 --threads 2 --name scaling_ce_resnet18_sampled"),
    ("scaling_ce_resnet18_60k_gated", "The same at 60k with the plan's own sketch size (no --sketch-m): the gated sketch starts on 8192 draws and grows by its estimate within half of what fits memory_budget = 4 GB",
     "OMP_NUM_THREADS=2 python benchmarks/bench_scaling.py --ns 60000 --models resnet18 --trained-with ce --budget 4e9 --threads 2 --name scaling_ce_resnet18_60k_gated"),
    ("ce_default", "CE, the current default on four families (small CNN 3k; ViT with prompts, resnet10t, resnet18 at 2k) with FT / GA / NegGrad+: three classes each, random 10 % (three seeds each; the growth-tested iteration of the time — one Newton step is the default since, the same update on 13 of 17 random requests, ce_onestep_*), and issue 12's targets per request",
     "OMP_NUM_THREADS=1 python benchmarks/bench_ce.py --models fastntk_cnn_small --classes 0 1 2 --random-seeds 0 1 2 --variants 'Fast-NTK (default)' --name ce_default_cnn  # likewise --models fastntk_vit_tiny --limit 2000 (ce_default_vit), --models resnet10t --limit 2000 --random-seeds 0 (ce_default_r10), --models resnet18 --limit 2000 --random-seeds 0 (ce_default_r18), --models resnet10t / resnet18 --limit 2000 --random-seeds 1 2 --scenarios random (ce_default_r10_random12, ce_default_r18_random12); then --resummarize the six JSON files --name ce_default. The CNN and ViT runs ran before the ridge back-off (it does not change them: no class request there fails its test), the ResNet runs with it"),
    ("ce_backoff_vit", "The do-no-harm ridge back-off, ViT with prompts: the default, without the back-off, and the automatic ridge ×4 with and without it",
     "OMP_NUM_THREADS=1 python benchmarks/bench_ce.py --models fastntk_vit_tiny --limit 2000 --classes 0 1 2 --scenarios class --variants 'Fast-NTK (default)' 'no ridge back-off' 'auto ridge ×4' 'auto ridge ×4, no back-off' --baselines --name ce_backoff_vit  # before the back-off's accuracy test (backoff_acc_drop)"),
    ("ce_backoff_r10", "The ridge back-off, resnet10t, class 1 (a setup made afresh): the automatic ridge ×4 with and without it",
     "OMP_NUM_THREADS=1 python benchmarks/bench_ce.py --models resnet10t --limit 2000 --classes 1 --scenarios class --variants 'Fast-NTK (default)' 'auto ridge ×4' 'auto ridge ×4, no back-off' --baselines --name ce_backoff_r10  # before the back-off's accuracy test"),
    ("trace_ce_ridge_r18", "The per-sample ridge scaled by m = ¼ … 2 on resnet18 (classes 0 and 1): the smaller ridges are closer here",
     "OMP_NUM_THREADS=1 python benchmarks/trace_ce_ridge.py --models resnet18 --limit 2000 --classes 0 1 --mults 0.25 0.5 1 2 --name trace_ce_ridge_r18"),
    ("ce_onestep_cnn", "CE random 10 %, small CNN: the default of the time (Newton steps until the decrement grows) against exactly one Newton step (the default since)",
     "OMP_NUM_THREADS=1 python benchmarks/bench_ce.py --models fastntk_cnn_small --random-seeds 0 1 2 --scenarios random --variants 'Fast-NTK (default)' 'one Newton step' --baselines --name ce_onestep_cnn"),
    ("ce_onestep_vit", "CE random 10 %, ViT with prompts (seeds 0–2): the default against one Newton step",
     "OMP_NUM_THREADS=1 python benchmarks/bench_ce.py --models fastntk_vit_tiny --limit 2000 --random-seeds 0 1 2 --scenarios random --variants 'Fast-NTK (default)' 'one Newton step' --baselines --name ce_onestep_vit"),
    ("ce_onestep_vit345", "CE random 10 %, ViT with prompts (seeds 3–5, setups made afresh): the default against one Newton step",
     "OMP_NUM_THREADS=1 python benchmarks/bench_ce.py --models fastntk_vit_tiny --limit 2000 --random-seeds 3 4 5 --scenarios random --variants 'Fast-NTK (default)' 'one Newton step' --baselines --name ce_onestep_vit345"),
    ("ce_onestep_res", "CE random 10 %, resnet10t and resnet18: the default against one Newton step",
     "OMP_NUM_THREADS=1 python benchmarks/bench_ce.py --models resnet10t resnet18 --limit 2000 --random-seeds 0 --scenarios random --variants 'Fast-NTK (default)' 'one Newton step' --baselines --name ce_onestep_res"),
    ("ce_half_cnn", "CE random 50 % (half of the training set forgotten), small CNN: the growth-tested iteration (the default when it ran) against one Newton step (the default since)",
     "OMP_NUM_THREADS=1 python benchmarks/bench_ce.py --models fastntk_cnn_small --random-seeds 0 1 2 --scenarios random --forget-fraction 0.5 --variants 'Fast-NTK (default)' 'one Newton step' --name ce_half_cnn"),
    ("ce_half_vit", "CE random 50 %, ViT with prompts: the growth-tested iteration against one Newton step",
     "OMP_NUM_THREADS=1 python benchmarks/bench_ce.py --models fastntk_vit_tiny --limit 2000 --random-seeds 0 1 2 --scenarios random --forget-fraction 0.5 --variants 'Fast-NTK (default)' 'one Newton step' --name ce_half_vit"),
    ("indist_ce_class_es", "Indistinguishability (KLoM, challenge F; N = 32) after CE fine-tuning with early stopping, one class",
     "OMP_NUM_THREADS=1 python benchmarks/bench_indistinguishable.py --scenarios class --finetune standard --epochs 30 --patience 3 --name indist_ce_class_es"),
    ("indist_ce_random_es", "Indistinguishability (KLoM, challenge F; N = 32) after CE fine-tuning with early stopping, random 10 %",
     "OMP_NUM_THREADS=1 python benchmarks/bench_indistinguishable.py --scenarios random --finetune standard --epochs 30 --patience 3 --name indist_ce_random_es"),
    ("indist_ce_class_es_sgd", "Indistinguishability (N = 32) after CE fine-tuning with SGD (momentum 0.9, lr 0.1) and early stopping, one class: the forgotten class's margin level with another optimizer",
     "OMP_NUM_THREADS=1 python benchmarks/bench_indistinguishable.py --scenarios class --finetune standard --epochs 30 --patience 3 --optimizer sgd --lr 0.1 --name indist_ce_class_es_sgd"),
    ("ce_psketch", "CE one class, 15 requests (small CNN, ViT, resnet10t; five classes each): the preconditioning sketch on n_r/4 samples (now the default, 'sketch k=1, m=n/4') against the previous default, which took at least 1024 samples ('Fast-NTK (default)' in these runs)",
     "OMP_NUM_THREADS=1 python benchmarks/bench_ce.py --models fastntk_cnn_small --classes 0 1 2 --scenarios class --variants 'Fast-NTK (default)' 'sketch k=1, m=n/4' 'sketch k=1, m=n' --baselines --name ce_psketch_cnn  # likewise --classes 3 4 (ce_psketch_cnn34); --models fastntk_vit_tiny resnet10t --limit 2000 (ce_psketch_other, ce_psketch_vit34, ce_psketch_r10_34); then --resummarize those five JSON files --name ce_psketch"),
    ("ce_psketch_r18", "CE one class, resnet18 (BN + head, 2k images): the current default (preconditioning sketch on n_r/4 samples) against the previous default's 1024 samples",
     "OMP_NUM_THREADS=1 python benchmarks/bench_ce.py --models resnet18 --limit 2000 --classes 0 1 --scenarios class --variants 'Fast-NTK (default)' 'sketch k=1, m=1024' --baselines --name ce_psketch_r18"),
    ("trace_ce_ridge", "CE one class: the per-sample ridge scaled by m = ¼ … 4 on three families (small CNN, ViT, resnet10t), the retain loss each ridge reaches against the retraining's, and what a loss-matched rule would pick",
     "python benchmarks/trace_ce_ridge.py --models --merge benchmarks/results/trace_ce_ridge_cnn.json benchmarks/results/trace_ce_ridge_vit.json benchmarks/results/trace_ce_ridge_r10.json  # after: OMP_NUM_THREADS=1 python benchmarks/trace_ce_ridge.py --models fastntk_cnn_small --name trace_ce_ridge_cnn; ... --models fastntk_vit_tiny --limit 2000 --name trace_ce_ridge_vit; ... --models resnet10t --limit 2000 --name trace_ce_ridge_r10"),
    ("trace_ce_ridge_r10_guard2x", "The resnet10t rows of the ridge study under the previous do-no-harm bound (retain loss at most doubled): updates with 2× and 4× the default ridge halved and the class left in place",
     "OMP_NUM_THREADS=1 python benchmarks/trace_ce_ridge.py --models resnet10t --limit 2000 --name trace_ce_ridge_r10  # at the commit before the half-way-to-chance bound, renamed"),
    ("ce_ridge_cnn", "CE one class, small CNN: the default against the per-sample ridge ×¼, ×½, ×2, ×4, with the baselines",
     "OMP_NUM_THREADS=1 python benchmarks/bench_ce.py --models fastntk_cnn_small --classes 0 1 2 --scenarios class --variants 'Fast-NTK (default)' 'ridge ×0.25' 'ridge ×0.5' 'ridge ×2' 'ridge ×4' --baselines --name ce_ridge_cnn"),
    ("ce_ridge_vit", "CE one class, ViT with visual prompts: the default against the per-sample ridge ×¼, ×½, ×2, ×4, with the baselines",
     "OMP_NUM_THREADS=1 python benchmarks/bench_ce.py --models fastntk_vit_tiny --limit 2000 --classes 0 1 2 --scenarios class --variants 'Fast-NTK (default)' 'ridge ×0.25' 'ridge ×0.5' 'ridge ×2' 'ridge ×4' --baselines --name ce_ridge_vit"),
    ("ce_warmup_cnn10k", "CE one class, small CNN at 10k images: the subsampled warm-up (NewtonOptions.warmup, a quarter / an eighth of D_r) against the default (no warm-up). Run while the warm-up was the default: relabelled",
     "OMP_NUM_THREADS=1 python benchmarks/bench_ce.py --models fastntk_cnn_small --limit 10000 --classes 0 1 --scenarios class --variants 'Fast-NTK (default)' 'Fast-NTK warm-up 1/4' 'Fast-NTK warm-up 1/8' --baselines --name ce_warmup_cnn10k"),
    ("ce_warmup_vit", "CE one class, ViT with visual prompts: the warm-up on a quarter of D_r against the default (relabelled as above)",
     "OMP_NUM_THREADS=1 python benchmarks/bench_ce.py --models fastntk_vit_tiny --limit 2000 --classes 0 1 --scenarios class --variants 'Fast-NTK (default)' 'Fast-NTK warm-up 1/4' --baselines --name ce_warmup_vit"),
    ("ce_warmup_cnn", "CE one class, small CNN at 3k images (setups made afresh this session): the default and the warm-up on a quarter",
     "OMP_NUM_THREADS=1 python benchmarks/bench_ce.py --models fastntk_cnn_small --classes 0 1 2 --scenarios class --variants 'Fast-NTK (default)' 'Fast-NTK warm-up 1/4' --baselines --name ce_warmup_cnn"),
    ("ce_warmup_r10", "CE one class, resnet10t (BN + head): the default and the warm-up on a quarter",
     "OMP_NUM_THREADS=1 python benchmarks/bench_ce.py --models resnet10t --limit 2000 --classes 0 --scenarios class --variants 'Fast-NTK (default)' 'Fast-NTK warm-up 1/4' --baselines --name ce_warmup_r10"),
    ("ce_now_r10", "CE, the current default, resnet10t (BN + head), class 0 + random seed 0 on freshly made setups, retraining also timed in the methods' process",
     "OMP_NUM_THREADS=1 python benchmarks/bench_ce.py --models resnet10t --limit 2000 --classes 0 --random-seeds 0 --variants 'Fast-NTK (default)' --baselines --name ce_now_r10"),
    ("ce_now_vit", "CE, the current default, ViT with visual prompts, class 0 + random seed 0 on freshly made setups, retraining also timed in the methods' process",
     "OMP_NUM_THREADS=1 python benchmarks/bench_ce.py --models fastntk_vit_tiny --limit 2000 --classes 0 --random-seeds 0 --variants 'Fast-NTK (default)' --baselines --name ce_now_vit"),
    ("ce_now_cnn", "CE, the current default and the prepared Unlearner, small CNN, three classes + three random requests on freshly made setups, retraining also timed in the methods' process",
     "OMP_NUM_THREADS=1 python benchmarks/bench_ce.py --models fastntk_cnn_small --variants 'Fast-NTK (default)' 'Fast-NTK (prepared)' --baselines --name ce_now_cnn"),
    ("sketch_grid_cnn_ce_random", "Exact vs sketched curvature (k × m grid), CE random 10 %, small CNN, 3 seeds: ‖Δ̃ − Δ‖/‖Δ‖, the half-sketch estimate, gap, cost",
     "OMP_NUM_THREADS=1 python benchmarks/bench_sketch_grid.py --models fastntk_cnn_small --losses ce --scenarios random --name sketch_grid_cnn_ce_random"),
    ("sketch_grid_r18_5k", "Exact vs sketched curvature, CE random 10 %, resnet18 BN + head at 5k images (one seed)",
     "OMP_NUM_THREADS=1 python benchmarks/bench_sketch_grid.py --models resnet18 --limit 5000 --losses ce --scenarios random --seeds 0 --name sketch_grid_r18_5k"),
    ("sketch_grid_vit_ce_random", "Exact vs sketched curvature, CE random 10 %, ViT with visual prompts, 3 seeds (1–4 Newton steps per request)",
     "OMP_NUM_THREADS=1 python benchmarks/bench_sketch_grid.py --models fastntk_vit_tiny --limit 2000 --losses ce --scenarios random --name sketch_grid_vit_ce_random"),
    ("sketch_grid_vit_mse", "Exact vs sketched curvature after MSE fine-tuning, ViT with visual prompts, 3 seeds, with the prepared Unlearner",
     "OMP_NUM_THREADS=1 python benchmarks/bench_sketch_grid.py --models fastntk_vit_tiny --limit 2000 --losses mse --prepared --name sketch_grid_vit_mse"),
    ("sketch_grid_r18_5k_densegram", "The resnet18 5k grid before the cost rule for direct solves (dense kernel-space Grams of the sketch rows)",
     "(the same command as sketch_grid_r18_5k, at the commit before 'direct vs CG by cost')"),
    ("ce_gate_cnn", "CE random 10 %, the default with the gated sketch (k = 2, n_r/2, kept when its estimate ≤ 0.3): small CNN, 3 seeds",
     "OMP_NUM_THREADS=1 python benchmarks/bench_ce.py --models fastntk_cnn_small --random-seeds 0 1 2 --scenarios random --variants 'Fast-NTK (default)' --baselines --name ce_gate_cnn"),
    ("ce_gate_other", "CE random 10 %, the default with the gated sketch: ViT, resnet10t, resnet18 (seed 0)",
     "OMP_NUM_THREADS=1 python benchmarks/bench_ce.py --models fastntk_vit_tiny resnet10t resnet18 --random-seeds 0 --scenarios random --limit 2000 --variants 'Fast-NTK (default)' --baselines --name ce_gate_other"),
    ("ce_gate_vit12", "CE random 10 %, the default with the gated sketch: ViT seeds 1, 2",
     "OMP_NUM_THREADS=1 python benchmarks/bench_ce.py --models fastntk_vit_tiny --random-seeds 1 2 --scenarios random --limit 2000 --variants 'Fast-NTK (default)' --baselines --name ce_gate_vit12"),
    ("sketch_grid_cnn_ce", "Exact vs sketched curvature, CE one class (plain Newton route; its default is the k = 1, n_r/4 preconditioning sketch), small CNN, 3 classes",
     "OMP_NUM_THREADS=1 python benchmarks/bench_sketch_grid.py --models fastntk_cnn_small --losses ce --name sketch_grid_cnn_ce  # class tables: --resummarize ... --scenarios class"),
    ("sketch_grid_cnn_mse", "Exact vs sketched curvature after MSE fine-tuning (primal form, matched ridge from the sketch too) and the prepared Unlearner with a sketched factor, small CNN, 3 seeds",
     "OMP_NUM_THREADS=1 python benchmarks/bench_sketch_grid.py --models fastntk_cnn_small --losses mse --prepared --name sketch_grid_cnn_mse"),
    ("ce_stop02_cnn", "Cross-entropy, the current default (stopping threshold 0.2), one class: small BN CNN (baselines: ce_final_cnn)",
     "OMP_NUM_THREADS=1 python benchmarks/bench_ce.py --models fastntk_cnn_small --classes 0 1 2 --scenarios class --variants 'Fast-NTK (default)' --baselines --name ce_stop02_cnn"),
    ("ce_stop02_other", "Cross-entropy, the current default (stopping threshold 0.2), one class: ViT and resnet10t (baselines: ce_seeds_vit, ce_seeds_r10)",
     "OMP_NUM_THREADS=1 python benchmarks/bench_ce.py --models fastntk_vit_tiny resnet10t --classes 0 1 2 --scenarios class --limit 2000 --variants 'Fast-NTK (default)' --baselines --name ce_stop02_other"),
    ("ce_stop02_r18", "Cross-entropy, the current default (stopping threshold 0.2), one class: resnet18 (baselines: ce_seeds_r18)",
     "OMP_NUM_THREADS=1 python benchmarks/bench_ce.py --models resnet18 --classes 0 1 2 --scenarios class --limit 2000 --variants 'Fast-NTK (default)' --baselines --name ce_stop02_r18"),
    ("ce_seeds_vit", "Cross-entropy, three classes (seed = class index) with the baselines, stopping threshold 0.05 (the previous default): ViT with visual prompts",
     "OMP_NUM_THREADS=1 python benchmarks/bench_ce.py --models fastntk_vit_tiny --classes 0 1 2 --scenarios class --limit 2000 --variants 'Fast-NTK (default)' --name ce_seeds_vit"),
    ("ce_seeds_r10", "Cross-entropy, three classes with the baselines, stopping threshold 0.05: resnet10t (BN + head)",
     "OMP_NUM_THREADS=1 python benchmarks/bench_ce.py --models resnet10t --classes 0 1 2 --scenarios class --limit 2000 --variants 'Fast-NTK (default)' --name ce_seeds_r10"),
    ("ce_seeds_r18", "Cross-entropy, three classes with the baselines, stopping threshold 0.05: resnet18 (BN + head)",
     "OMP_NUM_THREADS=1 python benchmarks/bench_ce.py --models resnet18 --classes 0 1 2 --scenarios class --limit 2000 --variants 'Fast-NTK (default)' --name ce_seeds_r18"),
    ("ce_random_r18", "Cross-entropy, random 10 % with the baselines (stopping threshold 0.05; the random request stopped by the growth test after one step): resnet18 (BN + head)",
     "OMP_NUM_THREADS=1 python benchmarks/bench_ce.py --models resnet18 --random-seeds 0 --scenarios random --limit 2000 --variants 'Fast-NTK (default)' --name ce_random_r18"),
    ("ce_random_seeds_vit", "Cross-entropy, random 10 %, three seeds with the baselines, stopping threshold 0.05 (the ViT's tilted iterations took 2–4 steps; not rerun with 0.2): ViT",
     "OMP_NUM_THREADS=1 python benchmarks/bench_ce.py --models fastntk_vit_tiny --random-seeds 0 1 2 --scenarios random --limit 2000 --variants 'Fast-NTK (default)' --name ce_random_seeds_vit"),
    ("ce_random_seeds_cnn", "Cross-entropy, the current default, random 10 %, three seeds with the baselines: small CNN (one step each, stopped by the growth test)",
     "OMP_NUM_THREADS=1 python benchmarks/bench_ce.py --models fastntk_cnn_small --random-seeds 0 1 2 --scenarios random --variants 'Fast-NTK (default)' --name ce_random_seeds_cnn"),
    ("trace_ce_cnn", "What the stopping rule buys: class requests scored after every Newton step (run to 16 steps), small CNN",
     "OMP_NUM_THREADS=1 python benchmarks/trace_ce_steps.py --models fastntk_cnn_small --classes 0 1 2 --name trace_ce_cnn"),
    ("trace_ce_vit", "What the stopping rule buys: class requests scored after every Newton step, ViT",
     "OMP_NUM_THREADS=1 python benchmarks/trace_ce_steps.py --models fastntk_vit_tiny --classes 0 1 2 --limit 2000 --name trace_ce_vit"),
    ("trace_ce_r10", "What the stopping rule buys: class requests scored after every Newton step, resnet10t",
     "OMP_NUM_THREADS=1 python benchmarks/trace_ce_steps.py --models resnet10t --classes 0 1 --limit 2000 --name trace_ce_r10"),
    ("trace_ce_r18", "What the stopping rule buys: class requests scored after every Newton step (10 steps), resnet18 — out of sample for the threshold study",
     "OMP_NUM_THREADS=1 python benchmarks/trace_ce_steps.py --models resnet18 --classes 0 1 --limit 2000 --max-steps 10 --name trace_ce_r18"),
    ("trace_threshold", "The stopping threshold replayed on every traced class request (CNN, ViT, resnet10t, resnet18)",
     "python benchmarks/trace_ce_steps.py --threshold-study benchmarks/results/trace_ce_cnn.json benchmarks/results/trace_ce_vit.json benchmarks/results/trace_ce_r10.json benchmarks/results/trace_ce_r18.json --name trace_threshold"),
    ("ce_rsketch_cnn", "Random requests (tilted route, first step = the answer): exact vs sketched curvature, small CNN",
     "OMP_NUM_THREADS=1 python benchmarks/bench_ce.py --models fastntk_cnn_small --random-seeds 0 1 --scenarios random --variants 'Fast-NTK (default)' 'sketch k=2, m=n' 'sketch k=1, m=n' --baselines --name ce_rsketch_cnn"),
    ("ce_rsketch_other", "Random requests: exact vs sketched curvature, ViT and resnet10t",
     "OMP_NUM_THREADS=1 python benchmarks/bench_ce.py --models fastntk_vit_tiny resnet10t --random-seeds 0 --scenarios random --limit 2000 --variants 'Fast-NTK (default)' 'sketch k=2, m=n' 'sketch k=1, m=n' --baselines --name ce_rsketch_other"),
    ("scaling_ce_resnet18_series", "One-shot CE unlearning of resnet18 BN + head against n = 15k / 30k / 60k (random 10 %, sketch m = 8192, k = 2), 2 threads, with the matrix-free half-sketch estimate",
     "OMP_NUM_THREADS=2 python benchmarks/bench_scaling.py --ns 15000 30000 60000 --models resnet18 --trained-with ce --sketch-m 8192 --budget 3e9 --threads 2 --name scaling_ce_resnet18_series"),
    ("scaling_ce_resnet18_n", "The same at 15k / 30k before the half-sketch estimate went matrix-free (dense float64 Grams: ~10 GB whatever n), 1 thread on a loaded machine",
     "OMP_NUM_THREADS=1 python benchmarks/bench_scaling.py --ns 15000 30000 --models resnet18 --trained-with ce --sketch-m 8192 --budget 3e9 --threads 1 --name scaling_ce_resnet18_n"),
    ("ce_ps_cnn", "Cross-entropy, the default before the stopping threshold 0.2 (per-sample ridge, LM-damped steps, preconditioning sketch): small BN CNN, 3 classes + random 10 %; the prepared Unlearner",
     "OMP_NUM_THREADS=1 python benchmarks/bench_ce.py --models fastntk_cnn_small --classes 0 1 2 --random-seeds 0 1 --variants 'ridge per-sample' 'Fast-NTK (prepared)' --baselines --name ce_ps_cnn  # baselines: ce_final_cnn (same fine-tuned models)"),
    ("ce_ps_r10", "Cross-entropy, the default before the stopping threshold 0.2: resnet10t (BN + head), two classes + random 10 %",
     "OMP_NUM_THREADS=1 python benchmarks/bench_ce.py --models resnet10t --classes 0 1 --random-seeds 0 --limit 2000 --variants 'ridge per-sample' --baselines --name ce_ps_r10  # baselines: ce_final_resnet10t"),
    ("ce_ps_vit", "Cross-entropy, the default before the stopping threshold 0.2: ViT with visual prompts, one class + random 10 %; the prepared Unlearner",
     "OMP_NUM_THREADS=1 python benchmarks/bench_ce.py --models fastntk_vit_tiny --classes 0 --random-seeds 0 --limit 2000 --variants 'ridge per-sample' 'Fast-NTK (prepared)' --baselines --name ce_ps_vit  # baselines: ce_final_vit"),
    ("ce_resnet18", "Cross-entropy, the default before the stopping threshold 0.2: resnet18 (BN + head), one class (one seed; its per-sample rules fell back to vmap)",
     "OMP_NUM_THREADS=1 python benchmarks/bench_ce.py --models resnet18 --classes 0 --scenarios class --limit 2000 --variants 'Fast-NTK (default)' --name ce_resnet18"),
    ("ce_prep_cnn", "Cross-entropy, the prepared CE Unlearner (frozen curvature, LM, per-sample ridge, stopping threshold 0.05): small CNN, 3 classes",
     "OMP_NUM_THREADS=1 python benchmarks/bench_ce.py --models fastntk_cnn_small --classes 0 1 2 --scenarios class --variants 'Fast-NTK (prepared)' --baselines --name ce_prep_cnn"),
    ("ce_prep_vit", "Cross-entropy, the prepared CE Unlearner (stopping threshold 0.05): ViT, one class",
     "OMP_NUM_THREADS=1 python benchmarks/bench_ce.py --models fastntk_vit_tiny --classes 0 --scenarios class --limit 2000 --variants 'Fast-NTK (prepared)' --baselines --name ce_prep_vit"),
    ("ce_final_cnn", "Cross-entropy, LM-damped steps + preconditioning sketch with the relative ridge (the default before the per-sample ridge): small BN CNN",
     "OMP_NUM_THREADS=1 python benchmarks/bench_ce.py --models fastntk_cnn_small --classes 0 1 2 --random-seeds 0 1 --variants 'Fast-NTK (default)' --name ce_final_cnn"),
    ("ce_final_vit", "Cross-entropy, LM + sketch with the relative ridge: ViT with visual prompts, one class + random 10 %",
     "OMP_NUM_THREADS=1 python benchmarks/bench_ce.py --models fastntk_vit_tiny --classes 0 --random-seeds 0 --limit 2000 --variants 'Fast-NTK (default)' --name ce_final_vit"),
    ("ce_final_resnet10t", "Cross-entropy, LM + sketch with the relative ridge: resnet10t (BN + head), two classes + random 10 %",
     "OMP_NUM_THREADS=1 python benchmarks/bench_ce.py --models resnet10t --classes 0 1 --random-seeds 0 --limit 2000 --variants 'Fast-NTK (default)' --name ce_final_resnet10t"),
    ("ce_sketch_cnn", "Cross-entropy, class requests: the curvature of every Newton step exact vs sketched (k rows, m of n_r samples; no damping)",
     "OMP_NUM_THREADS=1 python benchmarks/bench_ce.py --models fastntk_cnn_small --classes 0 1 2 --scenarios class --variants 'Fast-NTK (default)' 'sketch k=1, m=n/4' 'sketch k=2, m=n/2' 'exact, m=n/4' 'MC Fisher k=1, m=n/4' --baselines --name ce_sketch_cnn"),
    ("ce_lm_cnn", "Cross-entropy, class requests: Levenberg-Marquardt damping, exact and sketched curvature",
     "OMP_NUM_THREADS=1 python benchmarks/bench_ce.py --models fastntk_cnn_small --classes 0 1 2 --scenarios class --variants 'LM' 'sketch k=1, m=n/4, LM' --baselines --name ce_lm_cnn"),
    ("ce_kappa_cnn", "Cross-entropy, class requests: the relative ridge κ (λ = κ·tr(G_r)/p), small CNN (κ = 0.1 is the default row above)",
     "OMP_NUM_THREADS=1 python benchmarks/bench_ce.py --models fastntk_cnn_small --classes 0 1 2 --scenarios class --variants 'κ = 0.3' 'κ = 1' 'κ = 3' --baselines --name ce_kappa_cnn"),
    ("ce_kappa_vit", "Cross-entropy, class requests: the relative ridge κ, ViT (resnet10t class 0: benchmarks/results/ce_kappa_r10_partial.log)",
     "OMP_NUM_THREADS=1 python benchmarks/bench_ce.py --models fastntk_vit_tiny --classes 0 --scenarios class --limit 2000 --variants 'κ = 0.3' 'κ = 1' 'κ = 3' --baselines --name ce_kappa_vit"),
    ("scaling_ce_resnet18", "One-shot CE unlearning at scale: resnet18 BN + head, all 60,000 Fashion-MNIST images, random 10 % (cost)",
     "OMP_NUM_THREADS=2 python benchmarks/bench_scaling.py --ns 60000 --models resnet18 --trained-with ce --sketch-m 8192 --threads 2 --name scaling_ce_resnet18"),
    ("ce_cnn", "Cross-entropy fine-tuning (what users have): small BN CNN, 3 classes + random 10 %, every CE variant",
     "OMP_NUM_THREADS=1 python benchmarks/bench_ce.py --models fastntk_cnn_small --classes 0 1 2 --random-seeds 0 1 --name ce_cnn"),
    ("ce_other", "Cross-entropy fine-tuning: resnet10t (BN + head) and a ViT with visual prompts",
     "OMP_NUM_THREADS=1 python benchmarks/bench_ce.py --models resnet10t fastntk_vit_tiny --classes 0 1 --random-seeds 0 --limit 2000 "
     "--variants 'Fast-NTK (default)' 'Fast-NTK relinearized curvature' 'MSE kernel at trained (previous default)' 'Fast-NTK (prepared)' --name ce_other"),
    ("ce_cnn_steps16", "Cross-entropy, one class, the default after max_steps 8 → 16: small CNN (the tables above ran with 8)",
     "OMP_NUM_THREADS=1 python benchmarks/bench_ce.py --models fastntk_cnn_small --classes 0 1 2 --scenarios class --variants 'Fast-NTK (default)' --name ce_cnn_steps16"),
    ("ce_vit_steps16", "Cross-entropy, one class, the default after max_steps 8 → 16: ViT with prompts",
     "OMP_NUM_THREADS=1 python benchmarks/bench_ce.py --models fastntk_vit_tiny --classes 0 --scenarios class --limit 2000 --variants 'Fast-NTK (default)' --name ce_vit_steps16"),
    ("indist_ce_class", "Indistinguishability as the field measures it: KLoM and the NeurIPS 2023 challenge F (CE, one class, N = 32)",
     "OMP_NUM_THREADS=1 python benchmarks/bench_indistinguishable.py --n 32 --scenarios class --finetune standard --name indist_ce_class"),
    ("indist_ce_random", "Indistinguishability: KLoM and challenge F (CE, random 10 %, N = 32)",
     "OMP_NUM_THREADS=1 python benchmarks/bench_indistinguishable.py --n 32 --scenarios random --finetune standard --name indist_ce_random"),
    ("indist_lin_class", "Indistinguishability: KLoM and challenge F (linearized MSE fine-tuning, one class, N = 32)",
     "OMP_NUM_THREADS=1 python benchmarks/bench_indistinguishable.py --n 32 --scenarios class --finetune linearized --name indist_lin_class"),
    ("indist_lin_random", "Indistinguishability: KLoM and challenge F (linearized MSE fine-tuning, random 10 %, N = 32)",
     "OMP_NUM_THREADS=1 python benchmarks/bench_indistinguishable.py --n 32 --scenarios random --finetune linearized --name indist_lin_random"),
    ("indist_ce_class_now", "Indistinguishability: KLoM and challenge F (CE, one class, N = 32) with the current CE default",
     "OMP_NUM_THREADS=1 python benchmarks/bench_indistinguishable.py --n 32 --scenarios class --finetune standard --name indist_ce_class_now"),
    ("jacobian_build", "Per-sample Jacobian build and sketches, in gradient passes (C = 10, 100, 1000)",
     "OMP_NUM_THREADS=1 python benchmarks/bench_jacobian_build.py --n 32 --repeats 3 --budget-mb 512"),
    ("demo", "End to end: `fastntk demo` (digits, CE fine-tuning; one class and random 10 %)",
     "fastntk demo --out /tmp/demo  (then copy demo.md to benchmarks/results/demo.md)"),
    ("pipeline", "End to end: Fashion-MNIST, linearized fine-tuning (3 seeds)", "python benchmarks/bench_pipeline.py --seeds 0 1 2 --limit 10000 --epochs 4"),
    ("pipeline_standard_random", "End to end: Fashion-MNIST, ordinary fine-tuning, random 10 % (3 seeds)",
     "OMP_NUM_THREADS=1 python benchmarks/bench_pipeline.py --finetune standard --scenarios random --name pipeline_standard_random"),
    ("pipeline_standard_class", "End to end: Fashion-MNIST, ordinary fine-tuning, one class (3 seeds)",
     "OMP_NUM_THREADS=1 python benchmarks/bench_pipeline.py --finetune standard --scenarios class --name pipeline_standard_class"),
    ("variants", "Which variant after ordinary fine-tuning? Every variant on the same fine-tuned models (Fashion-MNIST, 10k)",
     "python benchmarks/bench_variants.py --scenarios class random --random-seeds 0"),
    ("unlearn_vs_retrain", "Headline: unlearning time ÷ retraining time at the quality reached (Fashion-MNIST, 10k)",
     "python benchmarks/bench_unlearn_vs_retrain.py"),
    ("forget_size", "Forget-set size at fixed n: the form auto chooses vs every forced form (Fashion-MNIST, 10k)",
     "python benchmarks/bench_forget_size.py"),
    ("scaling", "Scaling with n (to all 60k Fashion-MNIST training images)", "python benchmarks/bench_scaling.py"),
    ("scaling_resnet18", "Scaling with n: resnet18 BN-only (p = 9,610 with head)",
     "python benchmarks/bench_scaling.py --models resnet18 --ns 1000 5000 --name scaling_resnet18"),
    ("unlearn_phases", "Per-phase cost of one unlearning (resnet18 BN-only, Fashion-MNIST)", "python benchmarks/bench_unlearn_phases.py"),
    ("matvec", "Primal matvec ÷ PEFT gradient pass", "python benchmarks/bench_matvec.py"),
    ("solvers_real", "Solvers on the real Gauss-Newton / NTK operators", "python benchmarks/bench_solvers_real.py --n 250"),
    ("solvers_quick", "Solvers on synthetic spectra (quick)", "python benchmarks/bench_solvers.py --quick"),
    ("numba_kernels", "Numba kernels vs NumPy", "python benchmarks/bench_numba_kernels.py"),
    ("precision", "Precision: error of Δ under float32 / TF32 / bfloat16 against float64", "python benchmarks/bench_precision.py"),
    ("distributed", "Data-parallel (gloo, CPU): 2 vs 1 processes", "python benchmarks/bench_distributed.py"),
]


def main() -> int:
    from fastntk.io import atomic_write_text

    parts = [
        "# BENCHMARKS\n",
        "Generated by `python benchmarks/make_benchmarks_md.py` from `benchmarks/results/*.md`; the raw numbers are in the",
        "matching `*.json`. Machine: 2 CPU cores, no GPU, shared with other jobs while these ran (each table says the load",
        "where its script recorded it), so wall times are noisy; ratios measured in one process are the reliable part.\n",
    ]
    summary = os.path.join(RESULTS, "summary.md")  # the findings of the latest session, written by hand from the tables
    if os.path.isfile(summary):
        parts.append(open(summary, encoding="utf-8").read().strip() + "\n")
    for name, title, cmd in SECTIONS:
        path = os.path.join(RESULTS, f"{name}.md")
        if not os.path.isfile(path):
            continue
        body = open(path, encoding="utf-8").read().strip()
        others = [n for n, _, _ in SECTIONS if n != name and n.startswith(f"{name}_")]  # their plots are theirs
        pngs = sorted(f for f in os.listdir(RESULTS) if f == f"{name}.png" or (f.startswith(f"{name}_") and f.endswith(".png")
                                                                            and not f.startswith(f"{name}_quick")
                                                                            and not any(f.startswith(o) for o in others)))
        for png in pngs:  # the script's plots, next to its table
            body += f"\n\n![{png[:-4]}](benchmarks/results/{png})"
        parts.append(f"## {title}\n\n`{cmd}`\n\n{body}\n")
    atomic_write_text(os.path.join(os.path.dirname(HERE), "BENCHMARKS.md"), "\n".join(parts))
    print("wrote BENCHMARKS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
