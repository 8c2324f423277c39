"""Feature banks: frozen image embeddings grouped into meta-splits (LEO_SPEC §1.2).

A :class:`FeatureSplit` is one of the paper's S^tr / S^val / S^test: a matrix of embeddings and
one class label per row. A :class:`FeatureBank` holds the splits of one data source. Every data
source (official pickles, synthetic, ...) produces a bank; episodes are sampled from its splits.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import UserError

SPLIT_NAMES = ("train", "val", "test")


@dataclass(eq=False, repr=False)
class FeatureSplit:
    """One meta-split (S^tr, S^val or S^test): frozen embeddings and their class labels.

    embeddings: ``[n_images, D]`` float32 (converted on construction).
    labels: ``[n_images]`` int64 in ``0..n_classes-1``; every class has at least one image.
    class_names: ``n_classes`` distinct names; ``class_names[c]`` names label ``c``.
    image_names: optional, one name per row (e.g. the image file of an official pickle).
    """

    embeddings: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    image_names: list[str] | None = None
    _class_indices: list[np.ndarray] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        emb = np.asarray(self.embeddings)
        if emb.ndim != 2:
            raise UserError(
                f"embeddings must be a 2-D array [n_images, dim], got shape {emb.shape}; "
                "reshape them to one row per image"
            )
        if emb.dtype == bool or not np.issubdtype(emb.dtype, np.number) or np.iscomplexobj(emb):
            raise UserError(
                f"embeddings must be real numbers, got dtype {emb.dtype}; convert them to float32"
            )
        if emb.shape[0] < 1 or emb.shape[1] < 1:
            raise UserError(f"embeddings are empty (shape {emb.shape}); provide at least one image")
        with np.errstate(over="ignore"):  # overflow -> inf, reported just below
            emb = np.ascontiguousarray(emb, dtype=np.float32)
        if not np.isfinite(emb).all():
            raise UserError(
                "embeddings contain NaN or infinite values (after conversion to float32); "
                "remove or recompute those rows"
            )
        self.embeddings = emb

        labels = np.asarray(self.labels)
        if labels.ndim != 1 or labels.shape[0] != emb.shape[0]:
            raise UserError(
                f"labels must have shape [{emb.shape[0]}] (one per embedding row), "
                f"got {labels.shape}; pass one integer class label per image"
            )
        if not np.issubdtype(labels.dtype, np.integer):
            raise UserError(
                f"labels must be integers, got dtype {labels.dtype}; map class names to 0..C-1"
            )
        self.labels = labels.astype(np.int64)

        self.class_names = [str(c) for c in self.class_names]
        n_classes = len(self.class_names)
        if len(set(self.class_names)) != n_classes:
            raise UserError("class_names contain duplicates; give every class a distinct name")
        if self.labels.min() < 0 or self.labels.max() >= n_classes:
            raise UserError(
                f"labels must lie in 0..{n_classes - 1} (one per class name), found values in "
                f"{self.labels.min()}..{self.labels.max()}; fix the labels or the class_names"
            )
        empty = np.flatnonzero(np.bincount(self.labels, minlength=n_classes) == 0)
        if empty.size:
            raise UserError(
                f"class {self.class_names[empty[0]]!r} has no images ({empty.size} empty classes); "
                "drop empty classes from class_names"
            )
        if self.image_names is not None:
            self.image_names = [str(n) for n in self.image_names]
            if len(self.image_names) != emb.shape[0]:
                raise UserError(
                    f"image_names has {len(self.image_names)} entries for {emb.shape[0]} "
                    "embeddings; give one name per row or None"
                )

    def __repr__(self) -> str:
        return (
            f"FeatureSplit(n_images={self.n_images}, n_classes={self.n_classes}, dim={self.dim}, "
            f"images_per_class={self.min_images_per_class}..{int(self.images_per_class.max())})"
        )

    @property
    def n_images(self) -> int:
        return int(self.embeddings.shape[0])

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def dim(self) -> int:
        """Embedding dimension D."""
        return int(self.embeddings.shape[1])

    @property
    def images_per_class(self) -> np.ndarray:
        """``[n_classes]`` int64: number of images of each class."""
        return np.bincount(self.labels, minlength=self.n_classes)

    @property
    def min_images_per_class(self) -> int:
        return int(self.images_per_class.min())

    def class_indices(self) -> list[np.ndarray]:
        """Row indices of each class, ``[n_c]`` int64 arrays in row order (computed once)."""
        if self._class_indices is None:
            order = np.argsort(self.labels, kind="stable")
            bounds = np.cumsum(self.images_per_class)[:-1]
            self._class_indices = np.split(order, bounds)
        return self._class_indices


@dataclass(eq=False)
class FeatureBank:
    """The meta-splits of one data source; all splits share the embedding dimension D.

    splits: keys among ``"train"``, ``"val"``, ``"test"`` (S^tr, S^val, S^test).
    name: where the features come from, e.g. ``"synthetic"`` or ``"miniImageNet/center"``.
    """

    splits: dict[str, FeatureSplit]
    name: str

    def __post_init__(self) -> None:
        if not self.splits:
            raise UserError(f"feature bank {self.name!r} has no splits; give at least one")
        for key, split in self.splits.items():
            if key not in SPLIT_NAMES:
                raise UserError(
                    f"unknown split name {key!r} in feature bank {self.name!r}; "
                    f"use one of {', '.join(SPLIT_NAMES)}"
                )
            if not isinstance(split, FeatureSplit):
                raise UserError(
                    f"split {key!r} of feature bank {self.name!r} is a {type(split).__name__}, "
                    "not a FeatureSplit; wrap the arrays in FeatureSplit(...)"
                )
        dims = {key: split.dim for key, split in self.splits.items()}
        if len(set(dims.values())) > 1:
            raise UserError(
                f"splits of feature bank {self.name!r} have different embedding dimensions "
                f"{dims}; use features from the same backbone for every split"
            )

    @property
    def dim(self) -> int:
        """Embedding dimension D shared by all splits."""
        return next(iter(self.splits.values())).dim

    def split(self, name: str) -> FeatureSplit:
        """The split called ``name`` ("train", "val" or "test")."""
        if name not in self.splits:
            raise UserError(
                f"feature bank {self.name!r} has no {name!r} split; "
                f"available: {', '.join(self.splits)}"
            )
        return self.splits[name]
