"""The glyph pipeline from a cold cache, stage by stage, and LEO next to nearest centroid.

    python benchmarks/bench_glyph_pipeline.py [--steps 1000] [--tasks 2000]

Stages (each timed): render the glyphs into an empty cache, embed them with the shipped
stage-1 backbone, meta-train LEO (5-way 1-shot and 5-shot), evaluate on meta-test tasks. Nearest
centroid (the mean support embedding of each class, Euclidean distance on the L2-normalised
embeddings LEO also sees) is scored on exactly the same test tasks. Prints a table.

Glyphs are easy for both, like Omniglot. Two harder variants were tried (2026-11-28, 600 LEO
steps, 400 test tasks, 1-shot then 5-shot); nearest centroid kept pace with LEO in both:

variant                                                  nearest centroid   LEO
stronger distortions (rotation 20 deg, shear 0.3,
  scale 0.75-1.15, shift 0.12, stroke +-2), retrained    92.0 / 97.0 %      91.6 / 97.3 %
pre-pool features (288-d, not 32-d), shipped backbone    96.7 / 99.1 %      96.4 / 98.6 %

So the glyph data stay as they are. On features pre-trained with cross-entropy on the meta-train
classes, a nearest-centroid rule is a strong baseline (as for the paper's features, where the
comparison it reports is against Meta-SGD, not nearest centroid); the synthetic embeddings are
where LEO's latent bottleneck shows.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import torch

from leo_tutorial import TrainConfig, preset
from leo_tutorial.data import EpisodeSampler, GlyphConfig, render_glyphs
from leo_tutorial.features import image_bank
from leo_tutorial.runtime import SeedPurpose
from leo_tutorial.training import mean_ci95, train


def nearest_centroid(split, shot: int, tasks: int, seed: list[int], batch_size: int) -> tuple:
    """Accuracy +- CI of nearest centroid on the tasks ``evaluate`` draws with ``seed``."""
    sampler = EpisodeSampler(split, 5, shot, None)
    per_task = []
    for batch in sampler.iter_batches(tasks, batch_size, seed):
        centroids = batch.support_x.mean(dim=2)  # [B, N, D]
        distances = torch.cdist(batch.query_x.flatten(1, 2), centroids)  # [B, N*V, N]
        correct = distances.argmin(-1).view_as(batch.query_y) == batch.query_y
        per_task.append(correct.float().flatten(1).mean(1).numpy())
    return mean_ci95(np.concatenate(per_task))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--tasks", type=int, default=2000)
    args = parser.parse_args()
    os.environ["TQDM_DISABLE"] = "1"
    times = {}
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        dataset = render_glyphs(GlyphConfig(), cache_dir=cache, log=lambda m: None, progress=False)
        times["render (cold cache)"] = time.perf_counter() - start
    start = time.perf_counter()
    bank = image_bank(dataset, log=lambda m: None)
    times["embed (shipped backbone)"] = time.perf_counter() - start
    rows = []
    for shot in (1, 5):
        schedule = TrainConfig(
            k_shot=shot,
            steps=args.steps,
            val_every=max(1, args.steps // 5),
            val_tasks=500,
            test_tasks=args.tasks,
        )
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            result = train(
                preset("synthetic"), schedule, bank, out, progress=False, log=lambda m: None
            )
            times[f"LEO {shot}-shot: train {args.steps} steps + test"] = time.perf_counter() - start
        nc = nearest_centroid(
            bank.split("test"),
            shot,
            args.tasks,
            [schedule.seed, SeedPurpose.TEST],
            schedule.eval_batch_size,
        )
        rows.append((shot, result.test.accuracy, result.test.ci95, *nc))
    print(f"glyphs: {bank}\n")
    print("shot  LEO (test)          nearest centroid (same tasks)")
    for shot, acc, ci, nc, nc_ci in rows:
        print(
            f"{shot:>4}  {100 * acc:6.2f} +- {100 * ci:4.2f} %   {100 * nc:6.2f} +- "
            f"{100 * nc_ci:4.2f} %"
        )
    print("\nstage                                   seconds")
    for name, seconds in times.items():
        print(f"{name:38s} {seconds:8.1f}")
    print(f"{'total':38s} {sum(times.values()):8.1f}")


if __name__ == "__main__":
    main()
