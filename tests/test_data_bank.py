"""FeatureSplit / FeatureBank: conversion, derived sizes and validation errors."""

import numpy as np
import pytest

from leo_tutorial.data import FeatureBank, FeatureSplit
from leo_tutorial.errors import UserError


def make_split(n_per_class=(3, 2, 4), dim=5, seed=0) -> FeatureSplit:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(n_per_class)), n_per_class)
    rng.shuffle(labels)
    emb = rng.standard_normal((labels.size, dim))  # float64 on purpose
    return FeatureSplit(emb, labels, [f"c{i}" for i in range(len(n_per_class))])


def test_split_converts_and_counts():
    split = make_split()
    assert split.embeddings.dtype == np.float32
    assert split.labels.dtype == np.int64
    assert (split.n_images, split.n_classes, split.dim) == (9, 3, 5)
    assert split.images_per_class.tolist() == [3, 2, 4]
    assert split.min_images_per_class == 2
    assert "n_classes=3" in repr(split)


def test_class_indices_partition_rows_and_are_cached():
    split = make_split()
    idx = split.class_indices()
    assert [len(i) for i in idx] == [3, 2, 4]
    for c, rows in enumerate(idx):
        assert (split.labels[rows] == c).all()
        assert (np.diff(rows) > 0).all()
    assert sorted(np.concatenate(idx).tolist()) == list(range(9))
    assert split.class_indices() is idx


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(embeddings=np.zeros(6)), "2-D"),
        (dict(embeddings=np.zeros((6, 2), dtype=object)), "real numbers"),
        (dict(embeddings=np.full((6, 2), np.nan)), "NaN"),
        (dict(embeddings=np.full((6, 2), 1e39)), "infinite"),  # overflows float32
        (dict(labels=np.array([0, 1, 2, 0, 1])), r"shape \[6\]"),
        (dict(labels=np.array([0, 1, 2, 0, 1, 2.0])), "integers"),
        (dict(labels=np.array([0, 1, 3, 0, 1, 2])), r"0\.\.2"),
        (dict(labels=np.array([0, 1, 0, 0, 1, 1])), "'c' has no images"),
        (dict(class_names=["a", "a", "c"]), "duplicates"),
        (dict(image_names=["x"]), "one name per row"),
    ],
)
def test_split_validation_errors(kwargs, match):
    args = dict(
        embeddings=np.zeros((6, 2)), labels=np.array([0, 1, 2] * 2), class_names=["a", "b", "c"]
    )
    args.update(kwargs)
    with pytest.raises(UserError, match=match):
        FeatureSplit(**args)


def test_bank_dim_and_split_lookup():
    bank = FeatureBank({"train": make_split(), "test": make_split(seed=1)}, name="toy")
    assert bank.dim == 5
    assert bank.split("test") is bank.splits["test"]
    with pytest.raises(UserError, match="no 'val' split; available: train, test"):
        bank.split("val")


def test_bank_validation_errors():
    with pytest.raises(UserError, match="different embedding dimensions"):
        FeatureBank({"train": make_split(dim=5), "val": make_split(dim=4)}, name="toy")
    with pytest.raises(UserError, match="unknown split name 'valid'"):
        FeatureBank({"valid": make_split()}, name="toy")
    with pytest.raises(UserError, match="no splits"):
        FeatureBank({}, name="toy")
    with pytest.raises(UserError, match="not a FeatureSplit"):
        FeatureBank({"train": np.zeros((3, 2))}, name="toy")
