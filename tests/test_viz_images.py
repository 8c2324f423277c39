"""Figures of image datasets and episodes (viz.show_classes, viz.show_episode)."""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402

from leo_tutorial.data import EpisodeSampler, FeatureSplit  # noqa: E402
from leo_tutorial.data.images import ImageSplit  # noqa: E402
from leo_tutorial.viz import show_classes, show_episode  # noqa: E402


def image_split(n_classes=6, per_class=8, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n_classes * per_class, 28, 28), dtype=np.uint8)
    labels = np.repeat(np.arange(n_classes), per_class)
    return ImageSplit(images, labels, [f"class {c}" for c in range(n_classes)])


def test_show_classes_draws_one_row_per_class_grouped_by_split():
    splits = {"train": image_split(), "val": image_split(4, seed=1)}
    fig = show_classes(splits, n_classes=3, per_class=5)
    assert len(fig.axes) == (3 + 3) * 5
    titles = [ax.get_title(loc="left") for ax in fig.axes if ax.get_title(loc="left")]
    assert len(titles) == 6 and titles[0].startswith("train: class") and "val" in titles[-1]
    assert "meta-split" in fig._suptitle.get_text()


def test_show_episode_marks_predictions_from_sampled_rows():
    split = image_split()
    features = FeatureSplit(
        split.images.reshape(len(split.images), -1).astype(np.float32),
        split.labels,
        split.class_names,
    )
    classes, rows = EpisodeSampler(features, 3, 1, 4).sample_indices(1, seed=0)
    predictions = np.array([[0, 1, 0, 0], [1, 1, 1, 2], [2, 2, 2, 2]])
    fig = show_episode(
        split.images[rows[0]],
        k_shot=1,
        predictions=predictions,
        class_names=[split.class_names[c] for c in classes[0]],
    )
    assert len(fig.axes) == 3 * 5
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0] == "support, label 0" and titles[2] == "label 0, pred 1"
    wrong = [ax for ax in fig.axes if ax.get_title() == "label 0, pred 1"][0]
    assert matplotlib.colors.to_hex(wrong.title.get_color()).lower() == "#d55e00"
