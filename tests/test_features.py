"""Stage 1 (LEO_SPEC §1.3): ConvNet4 pre-training, embeddings, the official pickle export,
backbone files. Runs on a synthetic dataset of stroke shapes generated here."""

import numpy as np
import pytest
import torch

from leo_tutorial import LEOConfig, TrainConfig, UserError
from leo_tutorial.data import (
    EpisodeSampler,
    FeatureBank,
    FeatureSplit,
    export_leo_pickles,
    load_leo_pickles,
    read_exported_pickles,
    read_leo_split,
)
from leo_tutorial.data.images import ImageDataset, ImageSplit
from leo_tutorial.features import (
    ConvNet4,
    embed,
    embed_dataset,
    load_backbone,
    random_shift,
    save_backbone,
    train_backbone,
)
from leo_tutorial.training import train

SIZE = 28


def draw_strokes(points: np.ndarray, width: float) -> np.ndarray:
    """A polyline through ``points`` [P, 2] (pixel coordinates) drawn ``width`` thick, uint8."""
    yy, xx = np.mgrid[:SIZE, :SIZE].astype(np.float32)
    dist = np.full((SIZE, SIZE), np.inf, dtype=np.float32)
    for a, b in zip(points[:-1], points[1:], strict=True):
        ab = b - a
        t = ((yy - a[0]) * ab[0] + (xx - a[1]) * ab[1]) / max(float(ab @ ab), 1e-6)
        t = np.clip(t, 0, 1)
        dist = np.minimum(dist, np.hypot(yy - a[0] - t * ab[0], xx - a[1] - t * ab[1]))
    return (np.clip(width - dist + 0.5, 0, 1) * 255).astype(np.uint8)


def stroke_split(
    n_classes: int, per_class: int, rng: np.random.Generator, prefix: str
) -> ImageSplit:
    """Each class: a random 4-point polyline; each sample jitters its points and width."""
    images, labels = [], []
    for c in range(n_classes):
        template = rng.uniform(7, SIZE - 7, size=(4, 2))
        for _ in range(per_class):
            shift = rng.integers(-3, 4, size=2)  # where on the page: pixels differ, shapes not
            points = template + shift + rng.normal(0, 1.0, size=template.shape)
            images.append(draw_strokes(points, rng.uniform(0.8, 1.8)))
            labels.append(c)
    return ImageSplit(
        np.stack(images), np.array(labels), [f"{prefix}_{c}-x" for c in range(n_classes)]
    )


@pytest.fixture(scope="module")
def shapes() -> ImageDataset:
    rng = np.random.default_rng(0)
    return ImageDataset(
        {
            "train": stroke_split(10, 20, rng, "tr"),
            "val": stroke_split(5, 20, rng, "va"),
            "test": stroke_split(6, 20, rng, "te"),
        },
        name="shapes",
    )


@pytest.fixture(scope="module")
def trained(shapes):
    return train_backbone(
        shapes,
        epochs=12,
        channels=32,
        batch_size=64,
        seed=0,
        progress=False,
        log=lambda message: None,
    )


def test_shapes_and_embedding_dims():
    net = ConvNet4(channels=16)
    x = torch.rand(3, 1, 28, 28)
    assert net(x).shape == (3, 16)  # 28 -> 14 -> 7 -> 3 -> 1
    assert net.features(x, "prepool").shape == (3, 16 * 3 * 3)
    assert net.embedding_dim((28, 28)) == 16 and net.embedding_dim((84, 84)) == 16 * 25
    assert net.embedding_dim((28, 28), "prepool") == 144
    images = np.zeros((5, 28, 28), np.uint8)
    out = embed(net, images, batch_size=2)
    assert out.shape == (5, 16) and out.dtype == np.float32
    with pytest.raises(UserError, match="uint8"):
        embed(net, images.astype(np.float32))
    with pytest.raises(UserError, match="too small"):
        embed(net, np.zeros((2, 12, 12), np.uint8))


def test_random_shift_moves_ink_within_bounds():
    img = torch.zeros(50, 28, 28, dtype=torch.uint8)
    img[:, 14, 14] = 255
    out = random_shift(img, 2, torch.Generator().manual_seed(0))
    ys, xs = np.nonzero(out.numpy().max(0))
    assert out.dtype == torch.uint8 and int(out.sum()) == int(img.sum())  # nothing falls off
    assert ys.min() >= 12 and ys.max() <= 16 and len(set(ys)) > 1 and len(set(xs)) > 1


def test_training_is_deterministic_under_a_seed(shapes):
    def run(seed):
        net, hist = train_backbone(
            shapes,
            epochs=1,
            channels=8,
            batch_size=64,
            seed=seed,
            progress=False,
            log=lambda m: None,
        )
        return net.state_dict(), hist

    (a, ha), (b, hb), (c, _) = run(3), run(3), run(4)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert ha["epochs"][0]["loss"] == hb["epochs"][0]["loss"]
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_backbone_learns_and_history_is_plain(trained, shapes):
    net, hist = trained
    assert not net.training
    assert hist["classes"] == shapes.split("train").class_names and hist["image_size"] == [28, 28]
    assert len(hist["epochs"]) == 12
    assert hist["epochs"][-1]["loss"] < hist["epochs"][0]["loss"]
    assert hist["train_accuracy"] > 0.6  # chance is 0.1


def nearest_centroid_accuracy(split: FeatureSplit, tasks: int = 300) -> float:
    batch = EpisodeSampler(split, n_way=5, k_shot=1, n_query=10).sample(tasks, seed=0)
    centroids = batch.support_x.mean(2)  # [B, N, D]
    query = batch.query_x.flatten(1, 2)  # [B, N*V, D]
    predicted = torch.cdist(query, centroids).argmin(-1)
    return float((predicted == batch.query_y.flatten(1)).float().mean())


def test_embeddings_cluster_better_than_pixels_and_leo_trains(trained, shapes, tmp_path):
    net, _ = trained
    bank = embed_dataset(net, shapes)
    assert bank.name == "shapes/convnet4" and bank.dim == 32
    assert set(bank.splits) == {"train", "val", "test"}
    test_images = shapes.split("test")
    pixels = FeatureSplit(
        test_images.images.reshape(len(test_images.images), -1).astype(np.float32),
        test_images.labels,
        test_images.class_names,
    )
    acc_emb = nearest_centroid_accuracy(bank.split("test"))
    acc_pix = nearest_centroid_accuracy(pixels)
    assert acc_emb > acc_pix + 0.1, (acc_emb, acc_pix)  # measured 0.56 vs 0.35

    result = train(
        LEOConfig(num_latents=8, outer_lr=3e-3),
        TrainConfig(
            k_shot=1,
            n_query=5,
            eval_n_query=5,
            steps=4,
            val_every=2,
            val_tasks=4,
            test_tasks=4,
            eval_batch_size=4,
            batch_size=2,
        ),
        bank,
        tmp_path / "run",
        device="cpu",
        progress=False,
        log=lambda m: None,
    )
    assert 0.0 <= result.test.accuracy <= 1.0


def test_export_reads_back_through_the_official_reader(trained, shapes, tmp_path):
    bank = embed_dataset(trained[0], shapes)
    folder = export_leo_pickles(bank, tmp_path)
    assert folder == tmp_path / "shapes" / "center"
    for name, split in bank.splits.items():
        raw = read_leo_split(folder / f"{name}_embeddings.pkl")  # the leo-pickles reader as is
        np.testing.assert_array_equal(raw.embeddings, split.embeddings)
        np.testing.assert_array_equal(raw.labels, split.labels)  # id order == label order
    assert read_leo_split(folder / "val_embeddings.pkl").class_names[0] == "c00010"
    official = load_leo_pickles(tmp_path, dataset="shapes")  # what --data leo-pickles reads
    for name, split in bank.splits.items():
        np.testing.assert_array_equal(official.split(name).embeddings, split.embeddings)
        np.testing.assert_array_equal(official.split(name).labels, split.labels)
    back = read_exported_pickles(folder)
    assert back.name == bank.name
    for name, split in bank.splits.items():
        assert back.split(name).class_names == split.class_names  # "tr_0-x": '_' and '-' kept
        np.testing.assert_array_equal(back.split(name).labels, split.labels)


def test_backbone_save_load_round_trip(trained, shapes, tmp_path):
    net, hist = trained
    path = save_backbone(tmp_path / "backbone.pt", net, hist)
    loaded, meta = load_backbone(path)
    assert meta == hist and loaded.config == net.config and not loaded.training
    images = shapes.split("val").images
    np.testing.assert_array_equal(embed(loaded, images), embed(net, images))
    with pytest.raises(UserError, match="plain data"):
        save_backbone(tmp_path / "bad.pt", net, {"x": object()})


def test_damaged_or_mismatched_backbone_files_raise_user_errors(trained, tmp_path):
    net, _ = trained
    path = save_backbone(tmp_path / "backbone.pt", net, {})
    data = path.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="damaged"):
        load_backbone(tmp_path / "cut.pt")
    with pytest.raises(UserError, match="no backbone file"):
        load_backbone(tmp_path / "missing.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="not a ConvNet4 backbone"):
        load_backbone(tmp_path / "other.pt")
    saved = torch.load(path, weights_only=True)
    saved["config"]["channels"] = 16  # weights of a 32-channel net
    torch.save(saved, tmp_path / "mismatch.pt")
    with pytest.raises(UserError, match="does not match"):
        load_backbone(tmp_path / "mismatch.pt")


def test_prepool_embeddings(trained, shapes):
    bank = embed_dataset(trained[0], shapes, layer="prepool")
    assert isinstance(bank, FeatureBank) and bank.name == "shapes/convnet4-prepool"
    assert bank.dim == 32 * 3 * 3 and (bank.split("val").embeddings >= 0).all()  # after ReLU
