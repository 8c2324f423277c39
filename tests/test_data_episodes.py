"""Episode sampling: the official semantics of LEO_SPEC §1.4, vectorised over tasks."""

import numpy as np
import pytest
import torch

from leo_tutorial.data import EpisodeSampler, FeatureSplit, TaskBatch, l2_normalise
from leo_tutorial.errors import UserError


def make_split(counts=(20, 25, 30, 22, 21, 40, 26, 23), dim=6, seed=0) -> FeatureSplit:
    """Eight classes of unequal sizes (smallest 20), rows shuffled."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(counts)), counts)
    rng.shuffle(labels)
    emb = rng.standard_normal((labels.size, dim)) + 3.0
    return FeatureSplit(emb, labels, [f"class{c}" for c in range(len(counts))])


def test_l2_normalise_numpy_and_torch():
    x = np.array([[3.0, 4.0], [0.0, 0.0]], dtype=np.float32)
    out = l2_normalise(x)
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0]])
    assert out.dtype == np.float32
    t = l2_normalise(torch.from_numpy(x).double())
    assert t.dtype == torch.float64
    torch.testing.assert_close(t, torch.tensor([[0.6, 0.8], [0.0, 0.0]], dtype=torch.float64))
    # tf.nn.l2_normalize semantics: x / sqrt(max(sum x^2, eps)) -> tiny vectors are not blown up
    np.testing.assert_allclose(l2_normalise(np.array([1e-7, 0.0])), [1e-7 / 1e-6, 0.0], rtol=1e-6)


def test_batch_shapes_labels_and_norms():
    split = make_split()
    batch = EpisodeSampler(split, n_way=5, k_shot=3, n_query=4).sample(7, seed=0)
    assert batch.support_x.shape == (7, 5, 3, 6) and batch.support_x.dtype == torch.float32
    assert batch.query_x.shape == (7, 5, 4, 6) and batch.query_x.dtype == torch.float32
    assert batch.support_y.shape == (7, 5, 3) and batch.support_y.dtype == torch.int64
    assert batch.query_y.shape == (7, 5, 4) and batch.query_y.dtype == torch.int64
    assert batch.classes.shape == (7, 5) and batch.classes.dtype == torch.int64
    sizes = (batch.batch_size, batch.n_way, batch.k_shot, batch.n_query, batch.dim)
    assert sizes == (7, 5, 3, 4, 6)
    positions = torch.arange(5).view(1, 5, 1)
    assert torch.equal(batch.support_y, positions.expand(7, 5, 3))
    assert torch.equal(batch.query_y, positions.expand(7, 5, 4))
    # the official label sanity check: sum(labels) / K == N (N - 1) / 2 per task
    assert (batch.support_y.sum(dim=(1, 2)) / 3 == 5 * 4 / 2).all()
    assert (batch.query_y.sum(dim=(1, 2)) / 4 == 5 * 4 / 2).all()
    for x in (batch.support_x, batch.query_x):
        torch.testing.assert_close(x.norm(dim=-1), torch.ones(x.shape[:-1]))


def test_indices_disjoint_class_consistent_and_distinct():
    split = make_split()
    sampler = EpisodeSampler(split, n_way=4, k_shot=5, n_query=10)
    classes, rows = sampler.sample_indices(50, seed=3)
    assert classes.shape == (50, 4) and rows.shape == (50, 4, 15)
    for b in range(50):
        assert len(set(classes[b].tolist())) == 4  # distinct classes within a task
        assert len(set(rows[b].ravel().tolist())) == 4 * 15  # no image twice: support ∩ query = ∅
        for n in range(4):
            assert (split.labels[rows[b, n]] == classes[b, n]).all()


def test_sample_uses_the_sampled_indices():
    split = make_split()
    sampler = EpisodeSampler(split, n_way=3, k_shot=2, n_query=5)
    classes, rows = sampler.sample_indices(4, seed=[1, 2])
    batch = sampler.sample(4, seed=[1, 2])
    expected = l2_normalise(split.embeddings[rows])
    assert torch.equal(batch.classes, torch.from_numpy(classes))
    np.testing.assert_allclose(batch.support_x.numpy(), expected[:, :, :2], rtol=1e-6)
    np.testing.assert_allclose(batch.query_x.numpy(), expected[:, :, 2:], rtol=1e-6)
    raw = EpisodeSampler(split, 3, 2, 5, normalise=False).sample(4, seed=[1, 2])
    np.testing.assert_array_equal(raw.support_x.numpy(), split.embeddings[rows[:, :, :2]])


def test_determinism_under_seed():
    sampler = EpisodeSampler(make_split(), n_way=5, k_shot=1, n_query=3)
    a, b = sampler.sample(6, seed=[7, 0, 11]), sampler.sample(6, seed=[7, 0, 11])
    for name in ("support_x", "query_x", "classes"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    c = sampler.sample(6, seed=[7, 0, 12])
    assert not torch.equal(a.support_x, c.support_x)
    assert not torch.equal(a.classes, c.classes)


def test_n_query_none_takes_every_remaining_image():
    counts = (12,) * 6
    split = make_split(counts=counts)
    sampler = EpisodeSampler(split, n_way=6, k_shot=2, n_query=None)
    assert sampler.n_query == 10
    classes, rows = sampler.sample_indices(3, seed=0)
    for b in range(3):
        for n in range(6):  # all 12 images of the class, each exactly once
            assert sorted(rows[b, n].tolist()) == sorted(split.class_indices()[classes[b, n]])
    # unequal sizes: V = smallest class - K
    assert EpisodeSampler(make_split(), 2, 5, None).n_query == 20 - 5


def test_every_class_picked_and_positions_uniform():
    split = make_split()
    sampler = EpisodeSampler(split, n_way=4, k_shot=1, n_query=1)
    classes, rows = sampler.sample_indices(4000, seed=123)
    counts = np.zeros((split.n_classes, 4))
    np.add.at(counts, (classes, np.arange(4)[None, :]), 1)
    expected = 4000 / split.n_classes  # per (class, position) cell: 500
    assert counts.min() > 0.85 * expected and counts.max() < 1.15 * expected
    # images within a class are drawn uniformly too: every image of the split gets used
    assert np.unique(rows).size == split.n_images


def test_iter_batches_sizes_and_determinism():
    sampler = EpisodeSampler(make_split(), n_way=3, k_shot=1, n_query=2)
    batches = list(sampler.iter_batches(n_tasks=25, batch_size=10, seed=5))
    assert [b.batch_size for b in batches] == [10, 10, 5]
    again = list(sampler.iter_batches(n_tasks=25, batch_size=10, seed=[5]))
    assert all(torch.equal(x.query_x, y.query_x) for x, y in zip(batches, again, strict=True))
    assert torch.equal(batches[1].classes, sampler.sample(10, [5, 1]).classes)


def test_taskbatch_slicing_and_to():
    batch = EpisodeSampler(make_split(), 3, 2, 2).sample(5, seed=0)
    one = batch.task(2)
    assert isinstance(one, TaskBatch) and one.batch_size == 1
    assert torch.equal(one.support_x[0], batch.support_x[2])
    assert torch.equal(batch[-1].classes[0], batch.classes[4])
    assert batch[1:4].batch_size == 3
    with pytest.raises(IndexError):
        batch.task(5)
    d = batch.to(dtype=torch.float64)
    assert d.support_x.dtype == torch.float64 and d.query_x.dtype == torch.float64
    assert d.support_y.dtype == torch.int64 and d.classes.dtype == torch.int64


def test_error_paths():
    split = make_split()  # 8 classes, smallest has 20 images
    with pytest.raises(UserError, match="has only 8 classes; use --way <= 8"):
        EpisodeSampler(split, n_way=9, k_shot=1)
    with pytest.raises(UserError, match="smallest class has only 20; use fewer shots/queries"):
        EpisodeSampler(split, n_way=5, k_shot=6, n_query=15)
    with pytest.raises(UserError, match="use fewer shots"):
        EpisodeSampler(split, n_way=5, k_shot=20, n_query=None)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(UserError, match="integer >= 1"):
            EpisodeSampler(split, n_way=bad, k_shot=1)
    sampler = EpisodeSampler(split, 2, 1, 1)
    with pytest.raises(UserError, match="seed"):
        sampler.sample(2, seed=-1)
    with pytest.raises(UserError, match="seed"):
        sampler.sample(2, seed=None)
    with pytest.raises(UserError, match="batch_size"):
        sampler.sample(0, seed=0)
