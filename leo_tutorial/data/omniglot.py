"""Reader for a user-provided Omniglot folder (Lake et al., 2015), as an :class:`ImageDataset`.

Expected layout (the two zips of github.com/brendenlake/omniglot, ``python/``, unzipped side by
side)::

    <root>/images_background/<alphabet>/<character>/<drawing>.png    30 alphabets, 964 characters
    <root>/images_evaluation/<alphabet>/<character>/<drawing>.png    20 alphabets, 659 characters

Every character has 20 drawings (105 x 105 binary PNGs, black ink on white): 32 460 images.

Split, by alphabet (no alphabet is in two splits):

* meta_train = every alphabet of ``images_background`` (Lake's background set);
* meta_val   = the first half (``n // 2``) of the ``images_evaluation`` alphabets, sorted by name;
* meta_test  = the rest of the ``images_evaluation`` alphabets.

On the official release that is 964 / 307 / 352 characters (19 280 / 6 140 / 7 040 images):
val = Angelic ... Keble, test = Malayalam ... ULOG (10 alphabets each). This is our own
deterministic split, *not* the character-level split of Vinyals et al. (2016) (1 200 training
characters drawn from both sets), which needs their list file; :func:`omniglot_alphabet_split`
shows it.

Pre-processing: any PNG mode (1-bit, grayscale, 16-bit, palette, RGB, with alpha composited on
white) -> grayscale -> inverted, so ink = 255 and background = 0 -> resized to
``image_size`` x ``image_size`` with Lanczos filtering (antialiased; the resampling of the MAML
Omniglot pre-processing). With ``rotations=True`` each character gives four classes, rotated by
0 / 90 / 180 / 270 degrees counter-clockwise (``np.rot90`` after resizing, so exact), as in
Santoro et al. (2016) and Vinyals et al. (2016), in every split.

Speed (measured on 2 040 synthetic 105 x 105 1-bit PNGs, 2-core CPU, warm file cache): about
0.2 ms per image, so roughly 7-8 s for the full 32 460 images at 28 x 28 (rotations add almost
nothing: they are ``np.rot90`` of the resized images).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..errors import UserError
from .images import ImageDataset, ImageSplit

BACKGROUND = "images_background"
EVALUATION = "images_evaluation"
ROTATIONS = (0, 90, 180, 270)
_SOURCE_URL = "github.com/brendenlake/omniglot (python/)"
_IGNORED = ("__MACOSX",)


def _visible(path: Path) -> bool:
    return not path.name.startswith(".") and path.name not in _IGNORED


def _subfolders(folder: Path) -> list[Path]:
    """Visible subfolders of ``folder``, sorted by name (deterministic on every platform)."""
    return sorted((p for p in folder.iterdir() if p.is_dir() and _visible(p)), key=lambda p: p.name)


def _pngs(folder: Path) -> list[Path]:
    """Visible ``*.png`` files of ``folder`` (any case), sorted by name."""
    return sorted(
        (p for p in folder.iterdir() if p.is_file() and _visible(p) and p.suffix.lower() == ".png"),
        key=lambda p: p.name,
    )


def _split_folder(root: Path, name: str) -> Path:
    """``root / name``, checked to exist and to hold alphabet folders."""
    folder = root / name
    if not folder.is_dir():
        if (root / f"{name}.zip").is_file():
            raise UserError(f"{root / (name + '.zip')} is not unzipped; unzip it inside {root}")
        if (root / "python" / name).is_dir():
            raise UserError(
                f"{root} holds no {name}/ but {root / 'python'} does; "
                f"pass {root / 'python'} as the Omniglot folder"
            )
        raise UserError(
            f"{root} has no {name}/ folder; unzip {name}.zip from {_SOURCE_URL} inside it"
        )
    alphabets = _subfolders(folder)
    if not alphabets:
        raise UserError(
            f"{folder} holds no alphabet folders; unzip {name}.zip from "
            f"{_SOURCE_URL} so that {folder}/<alphabet>/<character>/*.png exist"
        )
    if [a.name for a in alphabets] == [name]:
        raise UserError(
            f"{folder} was unzipped one level too deep; move the alphabet folders "
            f"of {folder / name} up into {folder}"
        )
    return folder


def _check_root(root: str | Path) -> Path:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UserError(
            f"Omniglot folder {root} does not exist; pass the folder that holds "
            f"{BACKGROUND}/ and {EVALUATION}/ (from {_SOURCE_URL})"
        )
    if root.name in (BACKGROUND, EVALUATION):
        raise UserError(
            f"{root} is one half of Omniglot; pass its parent {root.parent}, "
            f"which should hold both {BACKGROUND}/ and {EVALUATION}/"
        )
    return root


def omniglot_alphabet_split(root: str | Path) -> dict[str, list[str]]:
    """The alphabets of each meta-split: ``{"train": [...], "val": [...], "test": [...]}``.

    train = the ``images_background`` alphabets; val / test = the first ``n // 2`` / the other
    ``images_evaluation`` alphabets, in sorted order (see the module docstring).
    """
    root = _check_root(root)
    background = [a.name for a in _subfolders(_split_folder(root, BACKGROUND))]
    evaluation = [a.name for a in _subfolders(_split_folder(root, EVALUATION))]
    if len(evaluation) < 2:
        raise UserError(
            f"{root / EVALUATION} needs at least 2 alphabets (one for meta-val, one "
            f"for meta-test) but holds {len(evaluation)}; restore the full folder"
        )
    shared = sorted(set(background) & set(evaluation))
    if shared:
        raise UserError(
            f"alphabet {shared[0]!r} is in both {BACKGROUND}/ and {EVALUATION}/; "
            f"keep it in only one of them"
        )
    half = len(evaluation) // 2
    return {"train": background, "val": evaluation[:half], "test": evaluation[half:]}


def load_omniglot_image(path: str | Path, image_size: int) -> np.ndarray:
    """One drawing as ``[image_size, image_size]`` uint8, ink = 255, background = 0."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            gray = _grayscale(im)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise UserError(
            f"cannot read image {path} ({type(err).__name__}: {err}); "
            f"replace it with the original file or delete it"
        ) from err
    ink = Image.fromarray(255 - gray)
    if ink.size != (image_size, image_size):
        ink = ink.resize((image_size, image_size), Image.Resampling.LANCZOS)
    return np.asarray(ink, dtype=np.uint8)


def _grayscale(im: Image.Image) -> np.ndarray:
    """Any PNG mode -> ``[H, W]`` uint8 grayscale, 0 = black, 255 = white (alpha on white)."""
    if im.mode in ("I", "I;16", "I;16B", "I;16L"):  # 16-bit grayscale PNG
        return (
            np.round(np.asarray(im, dtype=np.float64) * (255 / 65535)).clip(0, 255).astype(np.uint8)
        )
    if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return np.asarray(im.convert("L"), dtype=np.uint8)


def _characters(root: Path, folder: str, alphabets: list[str]) -> list[tuple[str, list[Path]]]:
    """``[(\"alphabet/character\", drawings)]`` of the given alphabets, every list non-empty."""
    out = []
    for alphabet in alphabets:
        characters = _subfolders(root / folder / alphabet)
        if not characters:
            raise UserError(
                f"alphabet folder {root / folder / alphabet} holds no character "
                f"folders; restore its characters or delete it"
            )
        for character in characters:
            drawings = _pngs(character)
            if not drawings:
                raise UserError(
                    f"character folder {character} holds no PNG images; restore "
                    f"its drawings or delete it"
                )
            out.append((f"{alphabet}/{character.name}", drawings))
    return out


def read_omniglot(
    root: str | Path,
    image_size: int = 28,
    rotations: bool = False,
    log: Callable[[str], None] = print,
    progress: bool = True,
) -> ImageDataset:
    """Read an Omniglot folder into train / val / test :class:`ImageSplit` s.

    root: the folder holding ``images_background/`` and ``images_evaluation/``.
    image_size: side S of the returned images ``[n, S, S]`` (28 is the usual few-shot size).
    rotations: if True, every character gives 4 classes (``"alphabet/character"`` and
        ``".../rot90"``, ``".../rot180"``, ``".../rot270"``, consecutive labels).
    Returns ``ImageDataset(name="omniglot")``; labels follow the sorted
    (alphabet, character) order, images the sorted drawing file names.
    """
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise UserError(f"image_size must be a positive integer, got {image_size!r}")
    root = _check_root(root)
    alphabets = omniglot_alphabet_split(root)
    folders = {"train": BACKGROUND, "val": EVALUATION, "test": EVALUATION}
    characters = {s: _characters(root, folders[s], a) for s, a in alphabets.items()}
    angles = ROTATIONS if rotations else (0,)
    total = sum(len(d) for chars in characters.values() for _, d in chars)
    bar = tqdm(total=total, desc="omniglot", unit="img", disable=not progress)
    splits = {}
    for split, chars in characters.items():
        n = sum(len(d) for _, d in chars) * len(angles)
        images = np.empty((n, image_size, image_size), dtype=np.uint8)
        labels = np.empty(n, dtype=np.int64)
        names: list[str] = []
        i = 0
        for name, drawings in chars:
            base = np.stack([load_omniglot_image(p, image_size) for p in drawings])
            bar.update(len(drawings))
            for angle in angles:
                images[i : i + len(base)] = np.rot90(base, k=angle // 90, axes=(1, 2))
                labels[i : i + len(base)] = len(names)
                names.append(name if angle == 0 else f"{name}/rot{angle}")
                i += len(base)
        splits[split] = ImageSplit(images, labels, names)
    bar.close()
    counts = ", ".join(
        f"{s} {len(alphabets[s])} alphabets / {splits[s].n_classes} classes / "
        f"{len(splits[s].images)} images"
        for s in splits
    )
    log(f"omniglot: {counts} ({image_size}x{image_size}, rotations {'on' if rotations else 'off'})")
    return ImageDataset(splits, name="omniglot")
