"""Glyph dataset: class choice (look-alikes, block splits), rendering, determinism and the cache."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest

from leo_tutorial.data import glyphs
from leo_tutorial.data.glyphs import (
    CONFUSABLES,
    GLYPH_BLOCKS,
    GlyphConfig,
    cache_path,
    glyph_classes,
    render_glyphs,
)
from leo_tutorial.errors import UserError

REPO = Path(__file__).resolve().parents[1]
SMALL = GlyphConfig(
    blocks=("Basic Latin", "Cyrillic", "Greek and Coptic", "Arrows", "Hebrew"),
    max_classes_per_block=12,
)


def block_of(ch: str) -> glyphs.Block:
    return next(b for b in GLYPH_BLOCKS if b.first <= ord(ch) <= b.last)


@pytest.fixture(autouse=True)
def no_user_cache(tmp_path, monkeypatch):
    """Never touch the real user cache: the default cache dir lives in a tmp dir."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return render_glyphs(SMALL, cache_dir=tmp_path_factory.mktemp("glyphs"), log=lambda m: None)


def chars_of(split) -> list[str]:
    return [chr(int(re.match(r"U\+([0-9A-F]+)", n).group(1), 16)) for n in split.class_names]


def test_shapes_dtypes_and_names(small):
    assert small.name == "glyphs" and set(small.splits) == {"train", "val", "test"}
    for split in small.splits.values():
        assert split.images.dtype == np.uint8 and split.images.shape[1:] == (28, 28)
        assert split.n_classes >= 10
        assert np.array_equal(np.bincount(split.labels), np.full(split.n_classes, 20))
        # ink on a mostly empty background
        assert split.images.max() >= 250 and np.median(split.images) == 0
        assert (split.images.reshape(len(split.images), -1).max(1) > 100).all()
    assert small.split("train").class_names[0] == "U+0021 EXCLAMATION MARK"
    for split in small.splits.values():
        assert all(re.fullmatch(r"U\+[0-9A-F]{4,5} [A-Z][A-Z0-9 -]+", n) for n in split.class_names)


def test_deterministic_and_seeded(small, tmp_path):
    again = render_glyphs(SMALL, cache_dir=tmp_path / "a", log=print)
    other = render_glyphs(dataclasses.replace(SMALL, seed=1), cache_dir=tmp_path / "b")
    for name, split in small.splits.items():
        assert np.array_equal(split.images, again.split(name).images)
        assert split.class_names == other.split(name).class_names
        assert not np.array_equal(split.images, other.split(name).images)


def test_samples_vary_within_a_class_but_resemble_each_other(small):
    split = small.split("train")
    x = split.images.reshape(split.n_classes, 20, -1).astype(np.float64)
    assert all(len({s.tobytes() for s in cls}) == 20 for cls in x)  # 20 different drawings
    x = x - x.mean(-1, keepdims=True)
    x /= np.linalg.norm(x, axis=-1, keepdims=True)
    flat = x.reshape(-1, x.shape[-1])
    corr = flat @ flat.T
    same = np.kron(np.eye(split.n_classes), np.ones((20, 20))).astype(bool)
    np.fill_diagonal(corr, np.nan)
    within, between = np.nanmean(corr[same]), np.nanmean(corr[~same])
    assert within > between + 0.1, (within, between)
    # raw pixels: the class of a drawing is the one whose other drawings it correlates with most
    np.fill_diagonal(corr, 0.0)
    counts = np.where(np.eye(split.n_classes)[split.labels] == 1, 19, 20)  # not itself
    predicted = (corr.reshape(len(flat), split.n_classes, 20).sum(-1) / counts).argmax(1)
    accuracy = (predicted == split.labels).mean()
    assert accuracy > 0.3, accuracy  # chance: 1 / n_classes (24 here); measured 0.48


def test_lookalikes_dropped():
    config = GlyphConfig(blocks=("Basic Latin", "Greek and Coptic", "Cyrillic"))
    classes = glyph_classes(config)
    kept = [c for split in classes.values() for c in split]
    assert "A" in kept and "\u0391" not in kept and "\u0410" not in kept  # Greek, Cyrillic A
    for group in CONFUSABLES:
        assert sum(c in group for c in kept) <= 1, group
    # no two kept classes have reference renderings above the threshold
    selection = glyphs._selection(config)
    for fit, threshold in [(False, config.lookalike_threshold), (True, config.shape_threshold)]:
        masks = glyphs.lookalike_masks(glyphs._reference_bitmaps(selection, fit=fit), int(fit))
        iou = glyphs.mask_iou(masks, masks)
        np.fill_diagonal(iou, 0.0)
        assert 0.3 < iou.max() <= threshold


def test_lookalike_filter_is_greedy_in_order():
    a = np.zeros((4, 16), np.float32)
    a[0, :8] = 1  # kept
    a[1, :7] = 1  # IoU 7/8 with 0: dropped
    a[2, 8:] = 1  # new: kept
    a[3, :8] = 1  # a copy of 0 under another name: dropped
    assert glyphs._drop_lookalikes("pqrs", [(a, 0.75)]) == [0, 2]
    assert glyphs._drop_lookalikes("pqrs", [(a, 0.9)]) == [0, 1, 2]
    assert glyphs._drop_lookalikes("pqrs", [(a, 0.9), (a[[0, 2, 1, 3]], 0.1)]) == [0, 1]
    b = np.eye(4, dtype=np.float32)  # all different, but O, 0 and Cyrillic O are confusables
    assert glyphs._drop_lookalikes("Ox0\u041e", [(b, 0.75)]) == [0, 1]
    c = np.zeros((4, 4), np.float32)
    c[[0, 1], 0] = 1  # "1" copies "x"; "I" and "l" are confusable with "1", and with each other
    c[2, 1] = c[3, 2] = 1
    assert glyphs._drop_lookalikes("x1Il", [(c, 0.75)]) == [0, 2]


def test_splits_disjoint_by_block(small):
    seen: dict[str, str] = {}
    for name, split in small.splits.items():
        for ch in chars_of(split):
            block = block_of(ch)
            assert block.split == name
            assert seen.setdefault(block.name, name) == name


@pytest.mark.slow
def test_full_class_list_is_large_and_split_by_block():
    classes = glyph_classes(GlyphConfig())
    sizes = {name: len(chars) for name, chars in classes.items()}
    total = sum(sizes.values())
    assert total >= 1000
    all_chars = [c for chars in classes.values() for c in chars]
    assert len(set(all_chars)) == total
    for name, chars in classes.items():
        assert {block_of(c).split for c in chars} == {name}
    fractions = {name: n / total for name, n in sizes.items()}
    assert fractions["train"] == pytest.approx(0.60, abs=0.07)
    assert fractions["val"] == pytest.approx(0.15, abs=0.05)
    assert fractions["test"] == pytest.approx(0.25, abs=0.07)
    assert glyph_classes(dataclasses.replace(GlyphConfig(), seed=5)) == classes


def test_cache_round_trip_in_user_cache_dir(tmp_path):
    messages: list[str] = []
    config = dataclasses.replace(SMALL, samples_per_class=3)
    first = render_glyphs(config, log=messages.append)
    path = cache_path(config)
    assert path.exists() and path.is_relative_to(tmp_path / "xdg" / "leo-tutorial")
    assert re.fullmatch(r"glyphs-v\d+-[0-9a-f]{16}\.npz", path.name)
    assert not path.resolve().is_relative_to(REPO)
    stamp = path.stat().st_mtime_ns
    second = render_glyphs(config, log=messages.append)
    assert path.stat().st_mtime_ns == stamp and messages == []  # read, not re-rendered
    for name in first.splits:
        assert np.array_equal(first.split(name).images, second.split(name).images)
        assert first.split(name).class_names == second.split(name).class_names
    assert cache_path(dataclasses.replace(config, seed=1)) != path


def _rewrite(path: Path, change) -> None:
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    change(arrays)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _flip_pixel(arrays):
    arrays["train_images"][0, 0, 0] ^= 1


def _crop_images(arrays):
    arrays["val_images"] = arrays["val_images"][:, :27, :27].copy()
    arrays.pop("checksum")
    arrays["checksum"] = np.array(glyphs._checksum(arrays))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "checksum", "shape"])
def test_damaged_cache_is_rebuilt(tmp_path, damage):
    config = dataclasses.replace(SMALL, samples_per_class=2)
    good = render_glyphs(config, cache_dir=tmp_path)
    path = cache_path(config, tmp_path)
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "garbage":
        path.write_bytes(b"not an npz file")
    elif damage == "checksum":
        _rewrite(path, _flip_pixel)
    else:
        _rewrite(path, _crop_images)
    messages: list[str] = []
    rebuilt = render_glyphs(config, cache_dir=tmp_path, log=messages.append)
    assert len(messages) == 1 and "damaged" in messages[0] and "\n" not in messages[0]
    assert np.array_equal(rebuilt.split("val").images, good.split("val").images)
    assert np.array_equal(rebuilt.split("train").images, good.split("train").images)
    messages.clear()
    render_glyphs(config, cache_dir=tmp_path, log=messages.append)  # repaired on disk
    assert messages == []


def test_config_errors():
    with pytest.raises(UserError, match="unknown glyph blocks"):
        GlyphConfig(blocks=("Klingon",))
    with pytest.raises(UserError, match="samples_per_class"):
        GlyphConfig(samples_per_class=0)


def test_default_cache_dir_follows_xdg_then_home(tmp_path, monkeypatch):
    assert glyphs.default_cache_dir() == tmp_path / "xdg" / "leo-tutorial"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert glyphs.default_cache_dir() == tmp_path / "home" / ".cache" / "leo-tutorial"


def test_other_image_size(tmp_path):
    config = dataclasses.replace(SMALL, image_size=20, samples_per_class=2)
    dataset = render_glyphs(config, cache_dir=tmp_path)
    assert dataset.split("val").images.shape == (2 * dataset.split("val").n_classes, 20, 20)
    assert dataset.split("val").class_names == small_names(SMALL, "val")


def small_names(config: GlyphConfig, split: str) -> list[str]:
    return [glyphs.class_name(c) for c in glyph_classes(config)[split]]


def test_unwritable_cache_dir_still_returns_the_dataset(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache folder should be")
    messages: list[str] = []
    config = dataclasses.replace(SMALL, samples_per_class=2)
    dataset = render_glyphs(config, cache_dir=blocker / "cache", log=messages.append)
    assert dataset.split("train").n_classes > 0
    assert len(messages) == 1 and "could not write" in messages[0]
