"""The paper's curvature and coverage analysis (§4.6, Fig. 4) on trained models, as tables.

Meta-trains LEO, its gen+ft ablation (``inner_unroll_length=0``) and Meta-SGD with the protocol
of ``leo-tutorial compare`` (same steps, validation and model selection; LEO and gen+ft through
``training.train`` with a :class:`leo_tutorial.curvature.SubspaceTracker`, Meta-SGD through
``compare.fit``), then prints, over ``--tasks`` meta-test tasks:

- Fig. 4a: percentiles of the absolute Hessian eigenvalues of L^tr in z (LEO) and in theta;
- Fig. 4b: the singular values of the decoder's mean half;
- Fig. 4c: the theta step of each latent step (LEO) and of each Meta-SGD step;
- the preconditioning identity (predicted vs the model's own first latent step), the spectrum
  of P = W_mu diag(alpha) W_mu^T / K against Meta-SGD's rates, and how much of each
  preconditioner lands in the synthetic bank's class subspace;
- the principal angles between the decoder's column space and that subspace over meta-training
  (synthetic data only);
- the time of the factored spectrum against the full ``torch.func`` Hessian.

    python benchmarks/bench_curvature.py                      # synthetic, 5-way 1-shot
    python benchmarks/bench_curvature.py --shot 5 --out fig4_synthetic_5shot.npz
    python benchmarks/bench_curvature.py --data glyphs
    python benchmarks/bench_curvature.py --data glyphs-untrained   # the real-image teaching setting
    python benchmarks/bench_curvature.py --asset     # regenerate notebook 10's shipped arrays

``--asset`` writes ``leo_tutorial/assets/curvature_<data>_<shot>shot.npz`` (float32): the
statistics of :func:`leo_tutorial.curvature.curvature_statistics` per model plus, per model,
``test_accuracy`` and (synthetic) the subspace track ``track_steps`` [C], ``track_angles``
[C, r] (radians), ``track_alignment`` [C], ``track_val_accuracy`` [C], and ``alignment`` (the
fraction of the preconditioner's output inside the class subspace, mean over classes), and
``data/mean_direction_energy``: the fraction of the test embeddings' energy along their mean
direction.

Runs single-threaded on the CPU (about 5 minutes for 1 000 steps); timings depend on the
machine's load, say so when quoting them.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from leo_tutorial import curvature  # noqa: E402
from leo_tutorial.baselines import BaselineConfig  # noqa: E402
from leo_tutorial.cli import COMPARE_DEFAULTS  # noqa: E402
from leo_tutorial.compare import fit  # noqa: E402
from leo_tutorial.config import TrainConfig, preset  # noqa: E402
from leo_tutorial.data import EpisodeSampler, SyntheticConfig, subspace_basis  # noqa: E402
from leo_tutorial.runtime import SeedPurpose  # noqa: E402
from leo_tutorial.sources import (  # noqa: E402
    glyphs_spec,
    glyphs_untrained_spec,
    load_bank,
    synthetic_spec,
)
from leo_tutorial.training import evaluate, train  # noqa: E402

PERCENTILES = (5, 25, 50, 75, 95)
ASSETS = Path(__file__).resolve().parents[1] / "leo_tutorial" / "assets"


def row(name: str, values: np.ndarray) -> str:
    p = np.percentile(np.asarray(values).ravel(), PERCENTILES)
    return f"  {name:<28}" + "".join(f"{v:>11.3g}" for v in p)


def header(title: str) -> str:
    return f"\n{title}\n  {'':<28}" + "".join(f"{'p' + str(q):>11}" for q in PERCENTILES)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--data", choices=("synthetic", "glyphs", "glyphs-untrained"), default="synthetic"
    )
    parser.add_argument("--shot", type=int, default=1)
    parser.add_argument("--steps", type=int, default=COMPARE_DEFAULTS["steps"])
    parser.add_argument("--tasks", type=int, default=1000, help="meta-test tasks analysed")
    parser.add_argument("--out", default=None, help="also save the statistics to this .npz")
    parser.add_argument(
        "--asset", action="store_true", help="write notebook 10's asset (leo_tutorial/assets)"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()

    spec = {
        "synthetic": synthetic_spec,
        "glyphs": glyphs_spec,
        "glyphs-untrained": glyphs_untrained_spec,
    }[args.data]()
    bank = load_bank(spec, log=lambda _: None, progress=False)
    tc = TrainConfig(
        k_shot=args.shot,
        steps=args.steps,
        val_every=COMPARE_DEFAULTS["val_every"],
        val_tasks=COMPARE_DEFAULTS["val_tasks"],
        test_tasks=COMPARE_DEFAULTS["test_tasks"],
    )
    # the presets `--preset auto` picked when the README's numbers were measured (issue 15's
    # cpu-1shot / cpu-5shot would change them): synthetic for synthetic, the defaults for glyphs;
    # the teaching setting's own preset (weak-features, chosen on meta-val) for glyphs-untrained
    leo_config = preset(
        {"synthetic": "synthetic", "glyphs": "default", "glyphs-untrained": "weak-features"}[
            args.data
        ]
    )
    basis = subspace_basis(SyntheticConfig()) if args.data == "synthetic" else None

    models, trackers, accuracy = {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, config in (
            ("LEO", leo_config),
            ("gen+ft", leo_config.replace(inner_unroll_length=0)),
        ):
            tracker = curvature.SubspaceTracker(basis) if basis is not None else None
            result = train(
                config,
                tc,
                bank,
                os.path.join(tmp, name),
                data_spec=spec,
                device="cpu",
                progress=False,
                callback=tracker,
                log=lambda _: None,
            )
            models[name], trackers[name] = result.model.eval(), tracker
            accuracy[name] = result.test
    baseline_config = BaselineConfig(inner_unroll_length=leo_config.inner_unroll_length)
    meta_sgd, info = fit(
        "meta-sgd", bank, tc, leo_config, baseline_config, torch.device("cpu"), progress=False
    )
    models["Meta-SGD"] = meta_sgd.eval()
    accuracy["Meta-SGD"] = evaluate(
        meta_sgd,
        bank.split("test"),
        n_way=tc.n_way,
        k_shot=tc.k_shot,
        tasks=tc.test_tasks,
        batch_size=tc.eval_batch_size,
        seed=[tc.seed, SeedPurpose.TEST],
    )
    train_seconds = time.perf_counter() - start
    print(
        f"{args.data}, 5-way {args.shot}-shot, {args.steps} meta-training steps "
        f"({train_seconds:.0f} s); Meta-SGD's initial rate {info['inner_lr_init']}, "
        f"its best step on S^val {info['best_step']}"
    )
    for name, result in accuracy.items():
        print(f"  {name:<10} {result}")

    # ------------------------------------------------------------------ statistics over tasks
    test_split = bank.split("test")
    t0 = time.perf_counter()
    stats = {
        name: curvature.curvature_statistics(
            model, test_split, k_shot=args.shot, tasks=args.tasks, seed=[tc.seed, SeedPurpose.TEST]
        )
        for name, model in models.items()
    }
    stats_seconds = time.perf_counter() - t0
    if args.out:
        print(f"saved {curvature.save_statistics(args.out, stats)}")

    print(header(f"Fig. 4a: |eigenvalues| of the Hessian of L^tr, {args.tasks} test tasks"))
    print(row("LEO, in z", stats["LEO"]["hessian_latent"]))
    for name in models:
        print(row(f"{name}, in theta", stats[name]["hessian_weights"]))
    z_median = np.median(stats["LEO"]["hessian_latent"])
    for name in models:
        ratio = z_median / np.median(stats[name]["hessian_weights"])
        print(f"  median in z (LEO) / median in theta ({name}): {ratio:.3g}")

    print(header("Fig. 4b: singular values of the decoder's mean half W_mu [D, Z]"))
    for name in ("LEO", "gen+ft"):
        print(row(name, stats[name]["decoder_singular_values"]))
    print(header("decoder gain ||W_mu^T x||^2 / ||x||^2 of the support embeddings"))
    for name in ("LEO", "gen+ft"):
        print(row(name, stats[name]["decoder_gain"]))

    # how much of the test embeddings' energy lies along their common mean direction (the
    # top N-1 eigenvalues of the Hessian in theta come from it; non-negative ReLU features)
    embeddings = np.asarray(test_split.embeddings, dtype=np.float64)
    embeddings = embeddings.reshape(-1, embeddings.shape[-1])
    mean = embeddings.mean(axis=0) / np.linalg.norm(embeddings.mean(axis=0))
    mean_energy = float(((embeddings @ mean) ** 2).sum() / (embeddings**2).sum())
    print(f"test embeddings: {mean_energy:.1%} of their energy along their mean direction")

    print(header("Fig. 4c: ||Delta theta|| of each inner step (all steps, all tasks)"))
    for name in ("LEO", "Meta-SGD"):
        print(row(f"{name}, all steps", stats[name]["theta_steps"]))
        print(row(f"{name}, first step", stats[name]["theta_steps"][:, 0]))
    ratio = np.median(stats["LEO"]["theta_steps"]) / np.median(stats["Meta-SGD"]["theta_steps"])
    print(f"  median LEO step / median Meta-SGD step: {ratio:.3g}")

    # ------------------------------------------------------------- preconditioning identity
    print()
    leo = models["LEO"]
    sampler = EpisodeSampler(test_split, 5, args.shot, 1)
    batch = sampler.sample(200, [tc.seed, SeedPurpose.TEST])
    for dtype in (torch.float32, torch.float64):
        model, b = leo.to(dtype), batch.to(dtype=dtype)
        path = curvature.theta_trajectory(model, b)
        step = path[:, 1] - path[:, 0]
        error = (curvature.predicted_latent_step(model, b) - step).abs().max() / step.abs().max()
        print(f"identity, {dtype}: max |predicted - model's step| / max |step| = {error:.1e}")
    leo.float()
    print(header("preconditioners: eigenvalues of P (LEO) and Meta-SGD's rates alpha_n"))
    print(row("LEO P = W diag(a) W^T / K", stats["LEO"]["preconditioner"]))
    print(row("LEO alpha (latent rates)", leo.inner_lr.detach().numpy()))
    print(row("Meta-SGD alpha_n", stats["Meta-SGD"]["preconditioner"]))
    if basis is not None:
        k = args.shot
        p_leo = curvature.latent_preconditioner(leo, k)
        rates = models["Meta-SGD"].inner_lr.detach().double()
        diag = [curvature.subspace_alignment(torch.diag(r), basis) for r in rates]
        d, r = basis.shape
        print(
            "\nfraction of each preconditioner's output in the class subspace "
            "(||U U^T M||^2 / ||M||^2):\n"
            f"  LEO's P                  {curvature.subspace_alignment(p_leo, basis):.3f}\n"
            f"  Meta-SGD diag(alpha_n)   {np.mean(diag):.3f} (mean over classes)\n"
            f"  best any diagonal        {curvature.best_diagonal_alignment(basis):.3f}\n"
            f"  identity / random        {r / d:.3f} (r / D)"
        )
        print("\ndecoder column space vs the class subspace during meta-training")
        print(f"  {'':<8}{'step':>6}{'mean angle':>12}{'max angle':>11}{'in U':>8}{'val acc':>9}")
        for name in ("LEO", "gen+ft"):
            t = trackers[name]
            for s, a, f, v in zip(t.steps, t.angles, t.alignment, t.val_accuracy, strict=True):
                deg = np.degrees(a)
                print(
                    f"  {name:<8}{s:>6}{deg.mean():>11.1f}°{deg.max():>10.1f}°{f:>8.3f}"
                    f"{100 * v:>8.1f}%"
                )

    # --------------------------------------------------------------------------- timing
    print(f"\nstatistics of {args.tasks} tasks x 3 models (factored): {stats_seconds:.1f} s")
    one = batch.task(0)
    for name, space in (
        ("LEO z", curvature.latent_space(leo, one)),
        ("Meta-SGD theta", curvature.weight_space(models["Meta-SGD"], one)),
    ):
        times = {}
        for method in curvature.HESSIAN_METHODS:
            t0 = time.perf_counter()
            for _ in range(3):
                curvature.hessian_eigenvalues(space, method)
            times[method] = (time.perf_counter() - t0) / 3
        print(
            f"  one task, {name} (P = {space.point[0].numel()}): "
            f"factored {times['factored']:.4f} s, full {times['full']:.3f} s "
            f"({times['full'] / times['factored']:.0f}x)"
        )
    if args.asset:
        asset = {name: dict(values) for name, values in stats.items()}
        for name in models:
            asset[name]["test_accuracy"] = np.array(float(accuracy[name].accuracy))
        if basis is not None:
            asset["LEO"]["alignment"] = np.array(curvature.subspace_alignment(p_leo, basis))
            asset["Meta-SGD"]["alignment"] = np.array(np.mean(diag))
            for name in ("LEO", "gen+ft"):
                t = trackers[name]
                asset[name]["track_steps"] = np.array(t.steps)
                asset[name]["track_angles"] = np.stack(t.angles)
                asset[name]["track_alignment"] = np.array(t.alignment)
                asset[name]["track_val_accuracy"] = np.array(t.val_accuracy)
        asset["data"] = {"mean_direction_energy": np.array(mean_energy)}
        for values in asset.values():
            for key, value in values.items():
                if value.dtype.kind == "f":
                    values[key] = value.astype(np.float32)
        path = ASSETS / f"curvature_{args.data}_{args.shot}shot.npz"
        print(f"saved {curvature.save_statistics(path, asset)}")
    print(f"total {time.perf_counter() - start:.0f} s (load: {os.getloadavg()[0]:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
