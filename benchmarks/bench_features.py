"""Stage-1 speed on CPU: ConvNet4 pre-training time per epoch and embedding throughput.

The images are random uint8 noise of the glyph shape (28 x 28, 20 per class): the cost of a
ConvNet does not depend on what the pixels show. Each row trains
``leo_tutorial.features.train_backbone`` for one epoch on ``--classes`` classes (batch 256,
random shifts, Adam) and embeds the same images (the default batch of 128, eval mode); the last
column scales the measured epoch time to the issue's 1,000-class x 20-image dataset (the cost is
linear in the number of images; the head's share is negligible).

    python benchmarks/bench_features.py                 # 200 classes, 1 and 2 threads, C = 32/64
    python benchmarks/bench_features.py --classes 1000  # a full-size epoch per row
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from leo_tutorial.data.images import ImageDataset, ImageSplit
from leo_tutorial.features import embed, train_backbone

PER_CLASS, SIZE, TARGET_IMAGES = 20, 28, 1000 * 20


def noise_dataset(n_classes: int, seed: int = 0) -> ImageDataset:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n_classes * PER_CLASS, SIZE, SIZE), dtype=np.uint8)
    labels = np.repeat(np.arange(n_classes), PER_CLASS)
    split = ImageSplit(images, labels, [f"c{c}" for c in range(n_classes)])
    return ImageDataset({"train": split}, name="noise")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=200)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--channels", type=int, nargs="+", default=[32, 64])
    args = parser.parse_args()

    dataset = noise_dataset(args.classes)
    images = dataset.split("train").images
    n = len(images)
    print(
        f"{args.classes} classes x {PER_CLASS} images = {n} images of {SIZE}x{SIZE}; "
        f"torch {torch.__version__}"
    )
    header = (
        f"{'channels':>8} {'threads':>7} {'train s/epoch':>13} {'train img/s':>11} "
        f"{'embed img/s':>11} {'s/epoch @ 1000x20':>17}"
    )
    print(header)
    print("-" * len(header))
    for channels in args.channels:
        for threads in args.threads:
            torch.set_num_threads(threads)
            t0 = time.perf_counter()
            backbone, _ = train_backbone(
                dataset, epochs=1, channels=channels, progress=False, log=lambda message: None
            )
            seconds = time.perf_counter() - t0
            t0 = time.perf_counter()
            embed(backbone, images)
            embed_rate = n / (time.perf_counter() - t0)
            print(
                f"{channels:>8} {threads:>7} {seconds:>13.1f} {n / seconds:>11.0f} "
                f"{embed_rate:>11.0f} {seconds * TARGET_IMAGES / n:>17.1f}"
            )


if __name__ == "__main__":
    main()
