"""Synthetic feature bank: shapes, determinism, low-rank class means, Bayes accuracy."""

import numpy as np
import pytest

from leo_tutorial.data import (
    EpisodeSampler,
    SyntheticConfig,
    bayes_accuracy,
    make_synthetic_bank,
    subspace_basis,
)
from leo_tutorial.errors import UserError

SMALL = SyntheticConfig(
    n_train_classes=12, n_val_classes=5, n_test_classes=30, images_per_class=40, dim=64
)


def test_default_config_has_official_shapes():
    cfg = SyntheticConfig()
    assert (cfg.n_train_classes, cfg.n_val_classes, cfg.n_test_classes) == (64, 16, 20)
    assert (cfg.images_per_class, cfg.dim) == (600, 640)


def test_shapes_and_dtypes():
    bank = make_synthetic_bank(SMALL)
    assert bank.name == "synthetic" and bank.dim == 64
    for name, n_classes in (("train", 12), ("val", 5), ("test", 30)):
        split = bank.split(name)
        assert split.embeddings.shape == (n_classes * 40, 64)
        assert split.embeddings.dtype == np.float32
        assert split.images_per_class.tolist() == [40] * n_classes
        assert len(set(split.class_names)) == n_classes
    names = [set(bank.split(s).class_names) for s in ("train", "val", "test")]
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])


def test_determinism_and_seed_dependence():
    a, b = make_synthetic_bank(SMALL), make_synthetic_bank(SMALL)
    for s in ("train", "val", "test"):
        np.testing.assert_array_equal(a.split(s).embeddings, b.split(s).embeddings)
    c = make_synthetic_bank(SyntheticConfig(**{**SMALL.__dict__, "seed": 1}))
    assert not np.allclose(a.split("train").embeddings, c.split("train").embeddings)
    # different splits hold different classes (fresh means), not copies
    assert not np.allclose(a.split("val").embeddings[:40], a.split("test").embeddings[:40])


def test_class_means_lie_in_the_subspace():
    cfg = SyntheticConfig(**{**SMALL.__dict__, "images_per_class": 400})
    split = make_synthetic_bank(cfg).split("test")
    means = split.embeddings.reshape(30, 400, 64).mean(axis=1)  # [C, D]
    energy = np.linalg.svd(means, compute_uv=False) ** 2
    r = cfg.subspace_dim
    assert energy[:r].sum() / energy.sum() > 0.9  # concentrated in r directions
    assert energy[r] < 0.1 * energy[r - 1]  # sharp drop after the r-th
    u = subspace_basis(cfg)
    np.testing.assert_allclose(u.T @ u, np.eye(r), atol=1e-10)
    residual = means - (means @ u) @ u.T  # what is left outside span(U) is sampling noise
    noise_energy = 64 * cfg.noise**2 / 400 * 30
    assert (residual**2).sum() < 1.2 * noise_energy


def test_bayes_accuracy_range_and_monotone():
    cfg = SyntheticConfig()
    acc1, ci1 = bayes_accuracy(cfg, n_way=5, k_shot=1, n_tasks=1000, seed=0)
    acc5, ci5 = bayes_accuracy(cfg, n_way=5, k_shot=5, n_tasks=1000, seed=0)
    assert 0.65 < acc1 < 0.72 and 0.82 < acc5 < 0.90  # miniImageNet-like difficulty
    assert acc5 > acc1 + 0.1
    assert 0 < ci1 < 0.01 and 0 < ci5 < 0.01
    again = bayes_accuracy(cfg, 5, 1, n_tasks=1000, seed=0)
    assert again == (acc1, ci1)  # deterministic under the seed
    easier = SyntheticConfig(class_scale=1.2)
    assert bayes_accuracy(easier, 5, 1, n_tasks=1000)[0] > acc1 + 0.1
    assert bayes_accuracy(cfg, 2, 1, n_tasks=1000)[0] > acc1  # fewer ways -> easier


def test_dropping_the_bias_term_costs_accuracy_on_the_same_tasks():
    cfg = SyntheticConfig()
    for k in (1, 5):
        bayes, _ = bayes_accuracy(cfg, 5, k, n_tasks=1000)
        no_bias, _ = bayes_accuracy(cfg, 5, k, n_tasks=1000, bias=False)
        assert bayes - 0.08 < no_bias < bayes - 0.005  # same tasks (same seed): a paired gap


def nearest_centroid_accuracy(split, n_way, k_shot, n_tasks, seed):
    sampler = EpisodeSampler(split, n_way, k_shot, n_query=15)
    batch = sampler.sample(n_tasks, seed)
    centroids = batch.support_x.numpy().mean(axis=2)  # [B, N, D]
    q = batch.query_x.numpy()  # [B, N, V, D]
    dist = ((q[:, :, :, None, :] - centroids[:, None, None]) ** 2).sum(-1)
    return (dist.argmin(-1) == np.arange(n_way)[None, :, None]).mean()


def test_bayes_beats_nearest_centroid():
    """Nearest centroid on the L2-normalised features is well below the Bayes optimum: the
    noise outside the class subspace hurts it, so there is something to meta-learn."""
    cfg = SyntheticConfig(**{**SMALL.__dict__, "dim": 320, "images_per_class": 30})
    test = make_synthetic_bank(cfg).split("test")
    nc = nearest_centroid_accuracy(test, 5, 1, n_tasks=400, seed=0)
    bayes, _ = bayes_accuracy(cfg, 5, 1, n_tasks=1000)
    assert 0.25 < nc < bayes - 0.15


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n_train_classes=0), "n_train_classes must be an int >= 1"),
        (dict(subspace_dim=700), "exceeds dim"),
        (dict(noise=0.0), "positive"),
        (dict(class_scale=float("nan")), "positive"),
        (dict(seed=-1), "seed"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(UserError, match=match):
        SyntheticConfig(**kwargs)
    with pytest.raises(UserError, match="k_shot"):
        bayes_accuracy(SyntheticConfig(), 5, 0)
