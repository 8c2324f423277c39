"""Omniglot reader on a tiny fake folder: layout, alphabet splits, labels, pixel values,
resizing, rotations, PNG modes, determinism and every user error."""

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from leo_tutorial.data.images import ImageDataset
from leo_tutorial.data.omniglot import (
    load_omniglot_image,
    omniglot_alphabet_split,
    read_omniglot,
)
from leo_tutorial.errors import UserError

SIZE = 28  # side of the fake drawings (the real ones are 105)
BACKGROUND = ("Beta", "Alpha", "Gamma")  # 3 characters each (created unsorted on purpose)
EVALUATION = ("Epsilon", "Delta")  # 2 characters each
DRAWINGS = 4


def strokes(rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """A random pen drawing: ``[size, size]`` bool, True = ink (a few 2-pixel-wide walks)."""
    ink = np.zeros((size, size), dtype=bool)
    for _ in range(rng.integers(2, 4)):
        y, x = rng.integers(4, size - 4, size=2)
        for _ in range(rng.integers(10, 25)):
            y = int(np.clip(y + rng.integers(-1, 2), 1, size - 3))
            x = int(np.clip(x + rng.integers(-1, 2), 1, size - 3))
            ink[y : y + 2, x : x + 2] = True
    return ink


def make_fake_omniglot(root: Path, seed: int = 0) -> dict[str, list[np.ndarray]]:
    """Write Omniglot's layout as 1-bit PNGs (black ink on white, like the originals).

    Returns ``{"alphabet/character": [ink bool [SIZE, SIZE] per drawing, sorted by file]}``.
    """
    rng = np.random.default_rng(seed)
    drawings = {}
    for folder, alphabets, n_chars in (
        ("images_background", BACKGROUND, 3),
        ("images_evaluation", EVALUATION, 2),
    ):
        for alphabet in alphabets:
            for c in range(1, n_chars + 1):
                char_dir = root / folder / alphabet / f"character{c:02d}"
                char_dir.mkdir(parents=True)
                inks = [strokes(rng) for _ in range(DRAWINGS)]
                for d, ink in enumerate(inks):
                    Image.fromarray(~ink).save(char_dir / f"{c:02d}{d:02d}_{d + 1:02d}.png")
                drawings[f"{alphabet}/character{c:02d}"] = inks
    return drawings


@pytest.fixture()
def fake(tmp_path: Path) -> tuple[Path, dict[str, list[np.ndarray]]]:
    root = tmp_path / "omniglot"
    return root, make_fake_omniglot(root)


def read(root: Path, **kwargs) -> ImageDataset:
    return read_omniglot(root, log=lambda _: None, progress=False, **kwargs)


def test_alphabet_split_is_by_alphabet_and_sorted(fake):
    root, _ = fake
    split = omniglot_alphabet_split(root)
    assert split == {"train": ["Alpha", "Beta", "Gamma"], "val": ["Delta"], "test": ["Epsilon"]}


def test_layout_labels_and_exact_pixels_at_native_size(fake):
    root, drawings = fake
    data = read(root, image_size=SIZE)
    assert data.name == "omniglot" and set(data.splits) == {"train", "val", "test"}
    split_alphabets = omniglot_alphabet_split(root)
    seen = set()
    for name, n_classes in (("train", 9), ("val", 2), ("test", 2)):
        split = data.split(name)
        assert split.images.shape == (n_classes * DRAWINGS, SIZE, SIZE)
        assert split.images.dtype == np.uint8 and split.labels.dtype == np.int64
        alphabets = {c.split("/")[0] for c in split.class_names}
        assert alphabets == set(split_alphabets[name])
        assert not alphabets & seen  # no alphabet in two splits
        seen |= alphabets
        assert split.class_names == sorted(split.class_names)
        assert np.bincount(split.labels).tolist() == [DRAWINGS] * n_classes
        for label, class_name in enumerate(split.class_names):
            got = split.images[split.labels == label]
            # inverted: ink = 255, background = 0, exactly, in sorted file order
            want = np.stack(drawings[class_name]).astype(np.uint8) * 255
            np.testing.assert_array_equal(got, want)
    assert data.split("train").class_names[:2] == ["Alpha/character01", "Alpha/character02"]


def test_resizing_is_antialiased_and_keeps_the_drawing(fake):
    root, drawings = fake
    small = read(root, image_size=14).split("train")
    assert small.images.shape == (36, 14, 14)
    ink = np.stack(drawings["Alpha/character01"]).astype(np.float64) * 255
    box = ink.reshape(DRAWINGS, 14, 2, 14, 2).mean(axis=(2, 4))  # 2x2 area average
    got = small.images[small.labels == 0].astype(np.float64)
    assert np.abs(got - box).mean() < 6  # Lanczos ~ area average of the 2x2 blocks
    assert np.corrcoef(got.ravel(), box.ravel())[0, 1] > 0.95
    assert len(np.unique(got)) > 2  # antialiased: grey edge pixels, not just 0 / 255
    big = read(root, image_size=56).split("val")
    assert big.images.shape == (8, 56, 56)
    assert big.images[:, 0, 0].max() == 0  # background stays 0


def test_rotations_are_four_classes_per_character(fake):
    root, drawings = fake
    plain = read(root, image_size=20)
    rot = read(root, image_size=20, rotations=True)
    for name in ("train", "val", "test"):
        p, r = plain.split(name), rot.split(name)
        assert r.n_classes == 4 * p.n_classes and len(r.images) == 4 * len(p.images)
        for c, class_name in enumerate(p.class_names):
            assert r.class_names[4 * c : 4 * c + 4] == [
                class_name,
                f"{class_name}/rot90",
                f"{class_name}/rot180",
                f"{class_name}/rot270",
            ]
            base = p.images[p.labels == c]
            for k in range(4):
                np.testing.assert_array_equal(
                    r.images[r.labels == 4 * c + k], np.rot90(base, k, axes=(1, 2))
                )
    # at native size the rotated classes are exactly np.rot90 of the original drawing
    native = read(root, image_size=SIZE, rotations=True).split("test")
    original = np.stack(drawings["Epsilon/character01"]).astype(np.uint8) * 255
    for k in range(4):
        np.testing.assert_array_equal(
            native.images[native.labels == k], np.rot90(original, k, axes=(1, 2))
        )


def test_reading_is_deterministic_and_logs_a_summary(fake):
    root, _ = fake
    lines: list[str] = []
    a = read_omniglot(root, image_size=16, log=lines.append, progress=False)
    b = read(root, image_size=16)
    for name in ("train", "val", "test"):
        np.testing.assert_array_equal(a.split(name).images, b.split(name).images)
        np.testing.assert_array_equal(a.split(name).labels, b.split(name).labels)
        assert a.split(name).class_names == b.split(name).class_names
    assert lines == [
        "omniglot: train 3 alphabets / 9 classes / 36 images, val 1 alphabets / "
        "2 classes / 8 images, test 1 alphabets / 2 classes / 8 images "
        "(16x16, rotations off)"
    ]


def test_every_png_mode_reads_the_same(tmp_path):
    ink = strokes(np.random.default_rng(1))
    white_on_black = np.where(ink, 0, 255).astype(np.uint8)  # black ink on white
    rgb = np.repeat(white_on_black[..., None], 3, axis=2)
    alpha = np.zeros((SIZE, SIZE, 4), dtype=np.uint8)
    alpha[..., 3] = np.where(ink, 255, 0)  # black ink, transparent background
    images = {
        "bit.png": Image.fromarray(~ink),
        "gray.png": Image.fromarray(white_on_black),
        "gray16.png": Image.fromarray(white_on_black.astype(np.uint16) * 257),
        "rgb.png": Image.fromarray(rgb),
        "rgba.png": Image.fromarray(alpha),
        "palette.png": Image.fromarray(rgb).convert("P"),
    }
    want = ink.astype(np.uint8) * 255
    for name, image in images.items():
        image.save(tmp_path / name)
        np.testing.assert_array_equal(
            load_omniglot_image(tmp_path / name, SIZE), want, err_msg=name
        )


def test_hidden_and_non_png_files_are_ignored(fake):
    root, _ = fake
    char = root / "images_background" / "Alpha" / "character01"
    (char / ".DS_Store").write_bytes(b"junk")
    (char / "Thumbs.db").write_bytes(b"junk")
    (char / "._0101_01.png").write_bytes(b"macos resource fork")
    (root / "images_background" / ".hidden_alphabet").mkdir()
    (root / "images_evaluation" / "__MACOSX").mkdir()
    data = read(root, image_size=8)
    assert data.split("train").n_classes == 9 and len(data.split("train").images) == 36
    assert data.split("test").class_names == ["Epsilon/character01", "Epsilon/character02"]


def expect_error(root: Path, *fragments: str, **kwargs) -> None:
    with pytest.raises(UserError) as info:
        read(root, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def test_missing_root_and_wrong_level(fake, tmp_path):
    root, _ = fake
    expect_error(tmp_path / "nowhere", "does not exist", "images_background/")
    expect_error(root / "images_background", "pass its parent", str(root))
    clone = tmp_path / "omniglot_clone"  # a git clone of brendenlake/omniglot, unzipped
    clone.mkdir()
    root.rename(clone / "python")
    expect_error(clone, "pass", str(clone / "python"), "as the Omniglot folder")


def test_missing_or_zipped_halves(fake):
    root, _ = fake
    (root / "images_evaluation").rename(root / "elsewhere")
    expect_error(root, "no images_evaluation/", "unzip images_evaluation.zip")
    (root / "images_evaluation.zip").write_bytes(b"PK")
    expect_error(root, "not unzipped", "unzip it")
    (root / "elsewhere").rename(root / "images_evaluation")
    (root / "images_background").rename(root / "gone")
    expect_error(root, "no images_background/")


def test_empty_folders(fake):
    root, _ = fake
    (root / "images_background" / "Zeta").mkdir()
    expect_error(root, "Zeta holds no character folders")
    (root / "images_background" / "Zeta" / "character01").mkdir()
    (root / "images_background" / "Zeta" / "character01" / "notes.txt").write_text("x")
    expect_error(root, "character01 holds no PNG images")


def test_empty_split_folder_and_double_nesting(tmp_path):
    root = tmp_path / "omniglot"
    (root / "images_background").mkdir(parents=True)
    (root / "images_evaluation" / "A" / "c").mkdir(parents=True)
    expect_error(root, "images_background holds no alphabet folders", "unzip")
    (root / "images_background" / "images_background").mkdir()
    expect_error(root, "one level too deep")


def test_unreadable_png_is_named(fake):
    root, _ = fake
    bad = root / "images_evaluation" / "Delta" / "character02" / "0201_02.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    expect_error(root, "cannot read image", str(bad), "replace it")


def test_split_needs_two_evaluation_alphabets_and_disjoint_alphabets(fake):
    root, _ = fake
    (root / "images_evaluation" / "Alpha").mkdir()
    expect_error(root, "'Alpha' is in both")
    (root / "images_evaluation" / "Alpha").rmdir()
    shutil.rmtree(root / "images_evaluation" / "Delta")
    expect_error(root, "needs at least 2 alphabets", "holds 1")


@pytest.mark.parametrize("size", [0, -3, 2.5, True, "28"])
def test_bad_image_size(fake, size):
    root, _ = fake
    expect_error(root, "image_size must be a positive integer", image_size=size)
