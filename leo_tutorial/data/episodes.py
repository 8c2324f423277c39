"""N-way K-shot episodes with the official LEO semantics (LEO_SPEC §1.4), batched over tasks.

Per task: shuffle the classes of the split and keep the first N; the label of a class is its
position in that shuffled list (a fresh random labelling per task). Per chosen class draw K + V
distinct images without replacement: the first K are the support set (the paper's D^tr), the
last V the query set (D^val). Every embedding is L2-normalised, the only preprocessing.

Sampling is vectorised over tasks and seeded explicitly: the same seed gives the same batch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import UserError
from .bank import FeatureSplit

Seed = int | Sequence[int]


def l2_normalise(x: np.ndarray | torch.Tensor, eps: float = 1e-12) -> np.ndarray | torch.Tensor:
    """``x * rsqrt(max(sum(x**2, -1), eps))`` along the last axis, like ``tf.nn.l2_normalize``.

    Works on numpy arrays and torch tensors of any shape ``[..., D]``; returns the same type.
    """
    if isinstance(x, torch.Tensor):
        sq = (x * x).sum(dim=-1, keepdim=True)
        return x * torch.rsqrt(torch.clamp(sq, min=eps))
    x = np.asarray(x)
    return x * _inverse_norms(x, eps)[..., None]


def _inverse_norms(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """``1 / sqrt(max(sum(x**2, -1), eps))`` ``[...]``, computed in x's dtype like TF."""
    sq = np.einsum("...d,...d->...", x, x)
    return (1.0 / np.sqrt(np.maximum(sq, eps))).astype(x.dtype, copy=False)


@dataclass
class TaskBatch:
    """A batch of B few-shot tasks, class-major (LEO_SPEC §1.4).

    support_x: ``[B, N, K, D]`` float, L2-normalised embeddings (the paper's D^tr inputs).
    support_y: ``[B, N, K]`` int64, ``support_y[b, n, k] == n`` (label = position of the class).
    query_x: ``[B, N, V, D]`` float (the paper's D^val inputs).
    query_y: ``[B, N, V]`` int64, ``== n``.
    classes: ``[B, N]`` int64, which class of the split sits at each position.
    """

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor
    classes: torch.Tensor

    @property
    def batch_size(self) -> int:
        return self.support_x.shape[0]

    @property
    def n_way(self) -> int:
        return self.support_x.shape[1]

    @property
    def k_shot(self) -> int:
        return self.support_x.shape[2]

    @property
    def n_query(self) -> int:
        return self.query_x.shape[2]

    @property
    def dim(self) -> int:
        return self.support_x.shape[3]

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> TaskBatch:
        """Move every tensor to ``device``; ``dtype`` changes the embeddings only (not labels)."""
        return TaskBatch(
            support_x=self.support_x.to(device=device, dtype=dtype),
            support_y=self.support_y.to(device=device),
            query_x=self.query_x.to(device=device, dtype=dtype),
            query_y=self.query_y.to(device=device),
            classes=self.classes.to(device=device),
        )

    def __getitem__(self, index: int | slice) -> TaskBatch:
        """Tasks ``index`` as a TaskBatch; an int gives a batch of size 1 (task axis kept)."""
        if isinstance(index, int):
            if not -self.batch_size <= index < self.batch_size:
                raise IndexError(f"task {index} out of range for a batch of {self.batch_size}")
            index %= self.batch_size
            index = slice(index, index + 1)
        if not isinstance(index, slice):
            raise TypeError(f"TaskBatch indices must be int or slice, not {type(index).__name__}")
        return TaskBatch(
            support_x=self.support_x[index],
            support_y=self.support_y[index],
            query_x=self.query_x[index],
            query_y=self.query_y[index],
            classes=self.classes[index],
        )

    def task(self, i: int) -> TaskBatch:
        """Task ``i`` alone, as a TaskBatch of batch size 1."""
        return self[i]


def _check_count(name: str, value: object, flag: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise UserError(f"{name} must be an integer >= 1, got {value!r}; use {flag} 1 or more")
    return int(value)


def _rng(seed: Seed) -> np.random.Generator:
    """``np.random.default_rng(seed)`` with a clear error for seeds it cannot take."""
    if seed is None:
        raise UserError("episode sampling needs an explicit seed (an int or a list of ints)")
    try:
        return np.random.default_rng(seed)
    except (TypeError, ValueError) as err:
        raise UserError(
            f"invalid seed {seed!r} ({err}); use a non-negative int or a list of them"
        ) from None


class EpisodeSampler:
    """Samples batches of N-way K-shot tasks from one split (LEO_SPEC §1.4).

    ``n_query=None`` takes every remaining image as a query: ``V = min_images_per_class - k_shot``
    (the official meta-val / meta-test protocol, V = 600 - K). With unequal class sizes the larger
    classes contribute a random V of their remaining images.
    """

    def __init__(
        self,
        split: FeatureSplit,
        n_way: int,
        k_shot: int,
        n_query: int | None = 15,
        normalise: bool = True,
    ) -> None:
        if not isinstance(split, FeatureSplit):
            raise UserError(f"EpisodeSampler needs a FeatureSplit, got {type(split).__name__}")
        self.split = split
        self.n_way = _check_count("n_way", n_way, "--way")
        self.k_shot = _check_count("k_shot", k_shot, "--shot")
        min_images = split.min_images_per_class
        if self.n_way > split.n_classes:
            raise UserError(
                f"{self.n_way}-way tasks are impossible: this split has only {split.n_classes} "
                f"classes; use --way <= {split.n_classes}"
            )
        if n_query is None:
            n_query = min_images - self.k_shot
            if n_query < 1:
                raise UserError(
                    f"{self.k_shot}-shot tasks leave no query images: the smallest class has "
                    f"{min_images} images; use fewer shots"
                )
        self.n_query = _check_count("n_query", n_query, "--queries")
        if self.k_shot + self.n_query > min_images:
            raise UserError(
                f"{self.k_shot} shots + {self.n_query} queries per class need "
                f"{self.k_shot + self.n_query} images, but the smallest class has only "
                f"{min_images}; use fewer shots/queries"
            )
        self.normalise = bool(normalise)

        # Padded index table [n_classes, max_images]: row c lists the image rows of class c,
        # padded with 0 (masked out by +inf sort keys in sample_indices).
        counts = split.images_per_class
        self._table = np.zeros((split.n_classes, int(counts.max())), dtype=np.int64)
        for c, rows in enumerate(split.class_indices()):
            self._table[c, : rows.size] = rows
        self._padding = np.arange(self._table.shape[1])[None, :] >= counts[:, None]
        # One inverse norm per image [n_images]: normalising a gathered batch is then one in-place
        # multiply (no normalised copy of the whole split, no temporaries of the batch's size).
        self._inv_norm = _inverse_norms(split.embeddings) if self.normalise else None

    def sample_indices(self, batch_size: int, seed: Seed) -> tuple[np.ndarray, np.ndarray]:
        """Classes ``[B, N]`` and image rows ``[B, N, K + V]`` of one batch (support first): what
        :meth:`sample` draws with the same seed (rows index the split, e.g. to show images).

        Vectorised over tasks: the N classes are the N smallest of B x C uniform keys (a random
        permutation, prefix N); the images of each chosen class are the K + V smallest of uniform
        keys over its padded row of the index table, padding keyed +inf (sampling without
        replacement, in random order).
        """
        batch_size = _check_count("batch_size", batch_size, "a batch size of")
        rng = _rng(seed)
        n_way, n_take = self.n_way, self.k_shot + self.n_query

        class_keys = rng.random((batch_size, self.split.n_classes))
        classes = _smallest_sorted(class_keys, n_way).astype(np.int64)  # [B, N]

        image_keys = rng.random((batch_size, n_way, self._table.shape[1]))
        image_keys[self._padding[classes]] = np.inf
        slots = _smallest_sorted(image_keys, n_take)  # [B, N, K+V] positions in the table row
        rows = self._table[classes[:, :, None], slots]
        return classes, rows

    def sample(self, batch_size: int, seed: Seed) -> TaskBatch:
        """One batch of ``batch_size`` tasks; the same ``seed`` always gives the same batch.

        ``seed`` is an int or a sequence of ints for ``np.random.default_rng`` (the trainer uses
        ``[run_seed, split_code, step]`` so that resuming needs no stored RNG state).
        """
        classes, rows = self.sample_indices(batch_size, seed)
        b, n, k, v = batch_size, self.n_way, self.k_shot, self.n_query
        positions = np.arange(n, dtype=np.int64)[None, :, None]
        return TaskBatch(
            support_x=torch.from_numpy(self._gather(rows[:, :, :k])),
            support_y=torch.from_numpy(np.broadcast_to(positions, (b, n, k)).copy()),
            query_x=torch.from_numpy(self._gather(rows[:, :, k:])),
            query_y=torch.from_numpy(np.broadcast_to(positions, (b, n, v)).copy()),
            classes=torch.from_numpy(classes),
        )

    def _gather(self, rows: np.ndarray) -> np.ndarray:
        """Embeddings of ``rows`` ``[...]`` -> ``[..., D]`` float32, L2-normalised if asked."""
        x = self.split.embeddings[rows]  # a fresh copy
        if self._inv_norm is not None:
            x *= self._inv_norm[rows][..., None]
        return x

    def iter_batches(self, n_tasks: int, batch_size: int, seed: Seed) -> Iterator[TaskBatch]:
        """``ceil(n_tasks / batch_size)`` batches totalling exactly ``n_tasks`` tasks.

        Batch ``i`` is sampled with seed ``[*seed, i]``, so the sequence is deterministic given
        ``(n_tasks, batch_size, seed)``; only one batch is held in memory at a time.
        """
        n_tasks = _check_count("n_tasks", n_tasks, "a task count of")
        batch_size = _check_count("batch_size", batch_size, "a batch size of")
        base = [seed] if isinstance(seed, (int, np.integer)) else list(seed)
        for i in range(math.ceil(n_tasks / batch_size)):
            size = min(batch_size, n_tasks - i * batch_size)
            yield self.sample(size, [*base, i])

    def __repr__(self) -> str:
        return (
            f"EpisodeSampler({self.n_way}-way {self.k_shot}-shot, {self.n_query} queries/class, "
            f"{self.split!r})"
        )


def _smallest_sorted(keys: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` smallest keys along the last axis, in increasing key order."""
    if k < keys.shape[-1]:
        part = np.argpartition(keys, k - 1, axis=-1)[..., :k]
        order = np.argsort(np.take_along_axis(keys, part, axis=-1), axis=-1)
        return np.take_along_axis(part, order, axis=-1)
    return np.argsort(keys, axis=-1)
