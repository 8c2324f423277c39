"""Few-shot image datasets (glyphs, Omniglot) before stage-1 embedding (LEO_SPEC §1.3).

Data flows one way: an image source -> :class:`ImageDataset` -> a backbone trained on the
meta-train classes (``leo_tutorial.features``) -> :class:`~leo_tutorial.data.FeatureBank`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UserError
from .bank import SPLIT_NAMES


@dataclass
class ImageSplit:
    """One meta-split of images: ``images`` [n, H, W] uint8 (0 = background, 255 = ink),
    ``labels`` [n] int64 in 0..n_classes-1 (every class has an image), ``class_names``."""

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]

    def __post_init__(self) -> None:
        self.images = np.asarray(self.images)
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if self.images.ndim != 3 or self.images.dtype != np.uint8:
            raise UserError(
                f"images must be a uint8 array [n, H, W], got {self.images.dtype} "
                f"{self.images.shape}"
            )
        if self.labels.shape != (len(self.images),):
            raise UserError(f"{len(self.images)} images but labels of shape {self.labels.shape}")
        n = len(self.class_names)
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= n):
            raise UserError(f"labels must lie in 0..{n - 1} (one per class name)")
        if len(set(self.class_names)) != n or (
            n and np.bincount(self.labels, minlength=n).min() == 0
        ):
            raise UserError("class names must be distinct and every class needs an image")

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int]:
        return self.images.shape[1], self.images.shape[2]

    def __repr__(self) -> str:
        return (
            f"ImageSplit(n_images={len(self.images)}, n_classes={self.n_classes}, "
            f"image_shape={self.image_shape})"
        )


@dataclass
class ImageDataset:
    """Train / val / test image splits with disjoint classes, and a name (e.g. ``"glyphs"``)."""

    splits: dict[str, ImageSplit]
    name: str

    def __post_init__(self) -> None:
        unknown = set(self.splits) - set(SPLIT_NAMES)
        if unknown:
            raise UserError(f"unknown splits {sorted(unknown)}; use {', '.join(SPLIT_NAMES)}")
        shapes = {s.image_shape for s in self.splits.values()}
        if len(shapes) > 1:
            raise UserError(f"all splits need one image size, got {sorted(shapes)}")

    def split(self, name: str) -> ImageSplit:
        if name not in self.splits:
            raise UserError(f"{self.name} has no {name!r} split; it has {', '.join(self.splits)}")
        return self.splits[name]
