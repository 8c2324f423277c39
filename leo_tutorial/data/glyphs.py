"""Glyphs: an Omniglot-like few-shot image dataset rendered offline from matplotlib's fonts.

A **class** is one Unicode character; a **sample** is that character drawn by one of the fonts
that ship inside matplotlib (DejaVu Sans / Serif / Mono, STIX, Computer Modern) — the "drawers" —
with a random affine distortion (rotation, shear, scale, translation) and a random stroke-width
change (dilation / erosion). Images are ``[n, S, S]`` uint8, 0 = background, 255 = ink.

Which characters become classes (:func:`glyph_classes`):

1. Candidates are the characters of the blocks in :data:`GLYPH_BLOCKS`, in table order, that are
   letters, digits or symbols (Unicode categories L*, N*, S*, P*), have no Unicode decomposition
   (so no "e with acute" next to "e", no bold-math "A" next to "A": a class is an atomic
   character, as in Omniglot) and are covered by at least ``min_fonts`` fonts with visible ink.
2. Look-alikes are dropped greedily, in table order of the blocks, then code point order. Each
   candidate is drawn in its reference font (the first font of :data:`GLYPH_FONTS` that covers
   it) twice — placed on the em box as in text, and fitted to the box (its shape at any size) —
   and pooled to 28 x 28 ink masks (the fitted one dilated by a pixel, so stroke width does not
   count). It is kept only if, against every character kept before it, the intersection over
   union (IoU) of the placed masks is at most ``lookalike_threshold`` (0.75), that of the fitted
   masks at most ``shape_threshold`` (0.8), and they share no group
   of :data:`CONFUSABLES` (the obvious cases: O / 0, I / l / 1 / |, dashes, dots, ...). Latin
   "A", Greek "Alpha" and Cyrillic "A" (IoU 1) thus become one class — Latin, which comes
   first — and since no kept pair exceeds a threshold, no two classes, in particular no two
   classes of different splits, look the same in the reference fonts. Dropped, not merged: the
   kept class already has its own fonts.
3. Splits are by block (as Omniglot splits by alphabet): meta-train, meta-val and meta-test
   classes come from disjoint blocks, listed with their split in :data:`GLYPH_BLOCKS`.

Rendering (:func:`render_glyphs`) draws every (character, font) base bitmap once with
``FT2Font``, placed on the em box (see :func:`render_base`), then applies batched random
affines (``grid_sample``) and max-/min-pool stroke changes at twice the output resolution, and
average-pools down. The result is cached under the user's cache directory
(``$XDG_CACHE_HOME/leo-tutorial`` or ``~/.cache/leo-tutorial``) with the format version and a hash
of the configuration in the file name; a damaged cache is detected by a checksum and re-rendered.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..errors import UserError
from ..io import atomic_write
from ..runtime import default_cache_dir
from .images import ImageDataset, ImageSplit

CACHE_VERSION = 1
"""Bump when the rendering recipe changes: old cache files are then simply ignored."""

RENDER_PX = 64
"""Pixels per em at which the fonts are rasterised before a glyph is fitted into its box."""

GLYPH_BOX = 0.75
"""The longer side of a glyph's ink box, as a fraction of the image side (before distortion)."""

_CHUNK = 4096
"""Samples distorted per batch (about 50 MB of float32 at 56 x 56)."""

FEATURE_CANVAS = 56
"""Canvas of the reference renderings the look-alike detector compares (pooled to 28 x 28)."""


class Block(NamedTuple):
    """A Unicode block (code points ``first``..``last``) and the meta-split its classes go to."""

    name: str
    first: int
    last: int
    split: str


GLYPH_BLOCKS: tuple[Block, ...] = (
    # 1811 classes with the default thresholds: meta-train 1117 (62 %), meta-val 273 (15 %),
    # meta-test 421 (23 %).
    # meta-train: Latin, Cyrillic, phonetics, mathematics, technical symbols, Canadian
    # syllabics, Armenian, Braille
    Block("Basic Latin", 0x0020, 0x007F, "train"),
    Block("Latin-1 Supplement", 0x0080, 0x00FF, "train"),
    Block("Latin Extended-A", 0x0100, 0x017F, "train"),
    Block("Latin Extended-B", 0x0180, 0x024F, "train"),
    Block("IPA Extensions", 0x0250, 0x02AF, "train"),
    Block("Phonetic Extensions", 0x1D00, 0x1D7F, "train"),
    Block("Latin Extended-C", 0x2C60, 0x2C7F, "train"),
    Block("Latin Extended-D", 0xA720, 0xA7FF, "train"),
    Block("Cyrillic", 0x0400, 0x04FF, "train"),
    Block("Cyrillic Supplement", 0x0500, 0x052F, "train"),
    Block("Cyrillic Extended-B", 0xA640, 0xA69F, "train"),
    Block("Letterlike Symbols", 0x2100, 0x214F, "train"),
    Block("Mathematical Operators", 0x2200, 0x22FF, "train"),
    Block("Supplemental Mathematical Operators", 0x2A00, 0x2AFF, "train"),
    Block("Miscellaneous Mathematical Symbols-A", 0x27C0, 0x27EF, "train"),
    Block("Miscellaneous Mathematical Symbols-B", 0x2980, 0x29FF, "train"),
    Block("Miscellaneous Technical", 0x2300, 0x23FF, "train"),
    Block("Unified Canadian Aboriginal Syllabics", 0x1400, 0x167F, "train"),
    Block("Armenian", 0x0530, 0x058F, "train"),
    Block("Braille Patterns", 0x2800, 0x28FF, "train"),
    # meta-val: Greek, Georgian, arrows
    Block("Greek and Coptic", 0x0370, 0x03FF, "val"),
    Block("Georgian", 0x10A0, 0x10FF, "val"),
    Block("Georgian Supplement", 0x2D00, 0x2D2F, "val"),
    Block("Arrows", 0x2190, 0x21FF, "val"),
    Block("Supplemental Arrows-A", 0x27F0, 0x27FF, "val"),
    Block("Supplemental Arrows-B", 0x2900, 0x297F, "val"),
    Block("Miscellaneous Symbols and Arrows", 0x2B00, 0x2BFF, "val"),
    # meta-test: Hebrew, Arabic, N'Ko, Lao, Tifinagh, Ogham, Lisu, Old Italic, shapes,
    # pictographs, dingbats
    Block("Hebrew", 0x0590, 0x05FF, "test"),
    Block("Arabic", 0x0600, 0x06FF, "test"),
    Block("NKo", 0x07C0, 0x07FF, "test"),
    Block("Lao", 0x0E80, 0x0EFF, "test"),
    Block("Tifinagh", 0x2D30, 0x2D7F, "test"),
    Block("Ogham", 0x1680, 0x169F, "test"),
    Block("Lisu", 0xA4D0, 0xA4FF, "test"),
    Block("Old Italic", 0x10300, 0x1032F, "test"),
    Block("Geometric Shapes", 0x25A0, 0x25FF, "test"),
    Block("Miscellaneous Symbols", 0x2600, 0x26FF, "test"),
    Block("Dingbats", 0x2700, 0x27BF, "test"),
    # Not used: Yijing hexagrams and Tai Xuan Jing monograms differ only by gaps in their bars,
    # below the detector's resolution (all but one dropped), and the phonetic supplement's only
    # undecomposed letter looks like another one.
)

_ALNUM = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")

GLYPH_FONTS: tuple[tuple[str, frozenset[str] | None], ...] = (
    # (file in matplotlib's fonts/ttf, characters it may draw or None for its whole charmap).
    # The Computer Modern files use TeX encodings: only their letters and digits are trusted.
    ("DejaVuSans.ttf", None),
    ("DejaVuSans-Bold.ttf", None),
    ("DejaVuSans-Oblique.ttf", None),
    ("DejaVuSans-BoldOblique.ttf", None),
    ("DejaVuSerif.ttf", None),
    ("DejaVuSerif-Bold.ttf", None),
    ("DejaVuSerif-Italic.ttf", None),
    ("DejaVuSerif-BoldItalic.ttf", None),
    ("DejaVuSansMono.ttf", None),
    ("DejaVuSansMono-Bold.ttf", None),
    ("DejaVuSansMono-Oblique.ttf", None),
    ("DejaVuSansMono-BoldOblique.ttf", None),
    ("STIXGeneral.ttf", None),
    ("STIXGeneralBol.ttf", None),
    ("STIXGeneralItalic.ttf", None),
    ("STIXGeneralBolIta.ttf", None),
    ("cmr10.ttf", _ALNUM),
    ("cmb10.ttf", _ALNUM),
    ("cmss10.ttf", _ALNUM),
    ("cmti10.ttf", _ALNUM),
    ("cmtt10.ttf", _ALNUM),
)

CONFUSABLES: tuple[str, ...] = (
    # Groups of characters of which at most one (the first in table order) becomes a class,
    # whatever the detector says: it compares one reference font only, and these differ there
    # but are drawn alike in other fonts or by hand.
    "O0\u039f\u03bf\u041e\u043e\u0585\u05e1",  # O, zero, Greek/Cyrillic O o, Armenian oh, samekh
    "Il1|\u0399\u0406\u04c0\u05c0\u05d5\u2223\u01c0",  # I, l, one, bar, Iota, Ukrainian I, ...
    "S5\u0405",  # S, five, Cyrillic DZE (the classic OCR confusions: digits come first, so
    "Z2",  # the digit is kept)
    "B8\u0392\u0412",
    "\u00d7xX\u03c7\u0425\u0445\u2715\u2716\u2573",  # multiplication sign, x, chi, ha, crosses
    "-\u2013\u2014\u2212\u2010\u2011\u2012\u2015\u23af\u2500\u2501",  # dashes, minus, rules
    ".\u00b7\u2022\u2219\u22c5\u25cf\u2981\u26ab",  # dots and bullets
    "'`\u00b4\u2019\u2018\u02bc\u02b9",  # apostrophes and primes
    "\u03bc\u00b5",  # micro sign, mu
    "\u2126\u03a9",  # ohm sign, Omega
    "\u212b\u00c5",  # angstrom sign, A with ring
    "\u2205\u00d8\u2300",  # empty set, O with stroke, diameter
    "\u2211\u03a3",  # n-ary summation, Sigma
    "\u220f\u03a0",  # n-ary product, Pi
    "\u2206\u0394",  # increment, Delta
)

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class GlyphConfig:
    """How the glyph dataset is chosen and drawn.

    ``blocks`` restricts it to those block names of :data:`GLYPH_BLOCKS` and
    ``max_classes_per_block`` keeps the first classes of each block (small test datasets);
    ``stroke_steps`` is the range (inclusive) of 3x3 erosions (< 0) or dilations (> 0) at twice
    the output resolution, one step being half an output pixel on each side.
    """

    samples_per_class: int = 20
    image_size: int = 28
    seed: int = 0
    max_rotation_deg: float = 12.0
    max_shear: float = 0.2
    scale_range: tuple[float, float] = (0.85, 1.1)
    max_translation: float = 0.08
    stroke_steps: tuple[int, int] = (-1, 1)
    lookalike_threshold: float = 0.75
    shape_threshold: float = 0.8
    min_fonts: int = 2
    blocks: tuple[str, ...] | None = None
    max_classes_per_block: int | None = None

    def __post_init__(self) -> None:
        if self.samples_per_class < 1 or self.image_size < 8:
            raise UserError("GlyphConfig needs samples_per_class >= 1 and image_size >= 8")
        if not (0.0 < self.lookalike_threshold <= 1.0 and 0.0 < self.shape_threshold <= 1.0):
            raise UserError(
                "lookalike_threshold and shape_threshold are IoUs: choose them in (0, 1]"
            )
        known = {b.name for b in GLYPH_BLOCKS}
        unknown = sorted(set(self.blocks or ()) - known)
        if unknown:
            raise UserError(
                f"unknown glyph blocks {unknown}; choose from GLYPH_BLOCKS, e.g. "
                f"'Basic Latin', 'Greek and Coptic', 'Arrows'"
            )


# --- fonts and rendering of base bitmaps -------------------------------------------------------


def font_path(file: str) -> Path:
    """Where matplotlib keeps the font ``file``."""
    return Path(matplotlib.get_data_path()) / "fonts" / "ttf" / file


@lru_cache(maxsize=1)
def _font_coverage() -> dict[str, frozenset[int]]:
    """For each font of :data:`GLYPH_FONTS`, the code points it may draw."""
    from matplotlib.ft2font import FT2Font

    coverage = {}
    for file, allowed in GLYPH_FONTS:
        path = font_path(file)
        if not path.exists():  # a matplotlib without this font: use the others
            continue
        points = frozenset(FT2Font(str(path)).get_charmap())
        if allowed is not None:
            points = points & frozenset(ord(c) for c in allowed)
        coverage[file] = points
    if not coverage:
        raise UserError("matplotlib ships none of the glyph fonts; reinstall matplotlib")
    return coverage


def render_base(file: str, chars: Sequence[str], canvas: int, fit: bool = False) -> np.ndarray:
    """Draw ``chars`` in font ``file`` as on a line of text: uint8 ``[len(chars), canvas, canvas]``.

    The central box of side ``GLYPH_BOX * canvas`` spans one em: from 0.8 em above the baseline to
    0.2 em below it, horizontally centred on the glyph's advance, so size and position are part of
    a character's look (``o`` vs ``O``, ``⠁`` vs ``⠂``). A glyph larger than the box is shrunk
    (aspect kept) and centred; one sticking out of it is shifted back in. Empty glyphs stay 0.
    ``fit=True`` fits every glyph's ink box to the box (its shape alone, whatever its size).
    """
    from matplotlib.ft2font import FT2Font

    font = FT2Font(str(font_path(file)))
    font.set_size(RENDER_PX, 72)
    box = round(GLYPH_BOX * canvas)
    margin = (canvas - box) / 2
    out = np.zeros((len(chars), canvas, canvas), dtype=np.uint8)
    for i, ch in enumerate(chars):
        font.set_text(ch)
        font.draw_glyphs_to_bitmap(antialiased=True)
        img = np.asarray(font.get_image())
        rows, cols = np.flatnonzero(img.max(1)), np.flatnonzero(img.max(0))
        if len(rows) == 0:
            continue
        crop = img[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        glyph = font.load_char(ord(ch))
        scale = box / RENDER_PX
        h, w = crop.shape[0] * scale, crop.shape[1] * scale
        if fit or max(h, w) > box:  # fit it into the box and centre it
            scale *= box / max(h, w)
            h, w = crop.shape[0] * scale, crop.shape[1] * scale
            top, left = (canvas - h) / 2, (canvas - w) / 2
        else:
            top = margin + 0.8 * box - glyph.horiBearingY / 64 * scale
            left = canvas / 2 + (glyph.horiBearingX - glyph.horiAdvance / 2) / 64 * scale
            top = min(max(top, margin), margin + box - h)
            left = min(max(left, margin), margin + box - w)
        hi, wi = max(1, round(h)), max(1, round(w))
        ti, li = round(top), round(left)
        fitted = F.interpolate(
            torch.from_numpy(crop.astype(np.float32))[None, None],
            size=(hi, wi),
            mode="bilinear",
            antialias=True,
            align_corners=False,
        )[0, 0]
        out[i, ti : ti + hi, li : li + wi] = fitted.round().clamp(0, 255).to(torch.uint8).numpy()
    return out


def lookalike_masks(bitmaps: np.ndarray, dilate: int = 0) -> np.ndarray:
    """Ink masks of base bitmaps ``[n, 56, 56]`` for the look-alike detector: average-pooled to
    28 x 28, thresholded at 30 % ink and grown by ``dilate`` 3 x 3 dilations (which makes the
    comparison blind to stroke width, as the stroke distortion is): ``[n, 784]`` float32 0 / 1."""
    x = torch.from_numpy(bitmaps).float()[:, None] / 255.0
    x = (F.adaptive_avg_pool2d(x, 28) > 0.3).float()
    for _ in range(dilate):
        x = _dilate(x)
    return x.flatten(1).numpy()


def mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of every mask of ``a`` [n, D] with every mask of ``b`` [m, D]:
    ``[n, m]`` (1 = the same ink, 0 = no ink in common)."""
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    return inter / np.maximum(union, 1.0)


# --- choosing the classes ------------------------------------------------------------------------


class _Candidate(NamedTuple):
    char: str
    block: Block
    fonts: tuple[str, ...]


def _is_atomic_symbol(ch: str) -> bool:
    """A letter, digit, symbol or punctuation character without a Unicode decomposition."""
    return (
        unicodedata.category(ch)[0] in "LNSP"
        and not unicodedata.decomposition(ch)
        and not ch.isspace()
    )


def _candidates(blocks: Sequence[Block], min_fonts: int) -> list[_Candidate]:
    coverage = _font_coverage()
    out = []
    for block in blocks:
        for cp in range(block.first, block.last + 1):
            ch = chr(cp)
            if not _is_atomic_symbol(ch):
                continue
            fonts = tuple(f for f, points in coverage.items() if cp in points)
            if len(fonts) >= min_fonts:
                out.append(_Candidate(ch, block, fonts))
    return out


def _reference_bitmaps(cands: Sequence[_Candidate], fit: bool = False) -> np.ndarray:
    """Each candidate drawn in its reference font (its first covering font): [n, 56, 56]
    (placed on the em box, or with ``fit=True`` fitted to the box: see :func:`render_base`)."""
    out = np.zeros((len(cands), FEATURE_CANVAS, FEATURE_CANVAS), dtype=np.uint8)
    by_font: dict[str, list[int]] = {}
    for i, c in enumerate(cands):
        by_font.setdefault(c.fonts[0], []).append(i)
    for file, idx in by_font.items():
        out[idx] = render_base(file, [cands[i].char for i in idx], FEATURE_CANVAS, fit=fit)
    return out


def _drop_lookalikes(chars: Sequence[str], tests: Sequence[tuple[np.ndarray, float]]) -> list[int]:
    """Greedy look-alike filter: indices (in order) of the kept characters. ``tests`` are pairs
    of masks ``[n, D]`` and an IoU threshold; ``i`` is kept iff no kept ``j < i`` has an IoU
    above the threshold with it in any test, or shares a :data:`CONFUSABLES` group with it."""
    n = len(chars)
    earlier: list[list[int]] = [[] for _ in range(n)]
    for masks, threshold in tests:
        for start in range(0, n, 1024):  # the n x n IoU matrix, 1024 rows at a time
            iou = mask_iou(masks[start : start + 1024], masks)
            for r, j in zip(*np.nonzero(iou > threshold), strict=True):
                if j < start + r:
                    earlier[start + r].append(int(j))
    members: dict[int, list[int]] = {}
    for i, ch in enumerate(chars):
        for g, group in enumerate(CONFUSABLES):
            if ch in group:
                earlier[i].extend(members.setdefault(g, []))
                members[g].append(i)
    kept: list[int] = []
    is_kept = np.zeros(n, dtype=bool)
    for i in range(n):
        if not is_kept[earlier[i]].any():
            kept.append(i)
            is_kept[i] = True
    return kept


def _blocks_of(config: GlyphConfig) -> list[Block]:
    if config.blocks is None:
        return list(GLYPH_BLOCKS)
    return [b for b in GLYPH_BLOCKS if b.name in config.blocks]


@lru_cache(maxsize=8)
def _selected(
    blocks: tuple[Block, ...],
    min_fonts: int,
    threshold: float,
    shape_threshold: float,
    max_per_block: int | None,
) -> tuple[_Candidate, ...]:
    cands = _candidates(blocks, min_fonts)
    bitmaps = _reference_bitmaps(cands)
    has_ink = bitmaps.reshape(len(cands), -1).max(1) > 0
    cands = [c for c, ok in zip(cands, has_ink, strict=True) if ok]
    tests = [
        (lookalike_masks(bitmaps[has_ink]), threshold),
        (lookalike_masks(_reference_bitmaps(cands, fit=True), dilate=1), shape_threshold),
    ]
    kept = [cands[i] for i in _drop_lookalikes([c.char for c in cands], tests)]
    if max_per_block is not None:
        count: dict[str, int] = {}
        limited = []
        for c in kept:
            count[c.block.name] = count.get(c.block.name, 0) + 1
            if count[c.block.name] <= max_per_block:
                limited.append(c)
        kept = limited
    return tuple(kept)


def _selection(config: GlyphConfig) -> tuple[_Candidate, ...]:
    return _selected(
        tuple(_blocks_of(config)),
        config.min_fonts,
        config.lookalike_threshold,
        config.shape_threshold,
        config.max_classes_per_block,
    )


def glyph_classes(config: GlyphConfig = GlyphConfig()) -> dict[str, list[str]]:
    """The characters of each meta-split (``train``, ``val``, ``test``) after dropping
    look-alikes, in block-table then code-point order. Independent of ``seed``."""
    out: dict[str, list[str]] = {s: [] for s in SPLITS}
    for c in _selection(config):
        out[c.block.split].append(c.char)
    return out


def class_name(ch: str) -> str:
    """``"U+0041 LATIN CAPITAL LETTER A"``."""
    return f"U+{ord(ch):04X} {unicodedata.name(ch, '')}".rstrip()


# --- distortion ---------------------------------------------------------------------------------


def _random_affines(n: int, config: GlyphConfig, rng: np.random.Generator) -> torch.Tensor:
    """``[n, 2, 3]`` matrices for ``affine_grid``: output -> input coordinates in [-1, 1] of the
    random forward map ``x -> scale * R(angle) @ Shear(shear) @ x + t``."""
    angle = np.deg2rad(rng.uniform(-config.max_rotation_deg, config.max_rotation_deg, n))
    shear = rng.uniform(-config.max_shear, config.max_shear, n)
    scale = rng.uniform(*config.scale_range, n)
    shift = rng.uniform(-config.max_translation, config.max_translation, (n, 2)) * 2.0
    cos, sin = np.cos(angle), np.sin(angle)
    rot = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)
    sh = np.zeros((n, 2, 2))
    sh[:, 0, 0] = sh[:, 1, 1] = 1.0
    sh[:, 0, 1] = shear
    forward = scale[:, None, None] * rot @ sh
    inverse = np.linalg.inv(forward)
    theta = np.concatenate([inverse, -(inverse @ shift[:, :, None])], axis=2)
    return torch.from_numpy(theta).float()


def _dilate(x: torch.Tensor) -> torch.Tensor:
    """3 x 3 grey-level dilation of ``x`` [n, 1, H, W] (a max-pool with stride 1, written as
    shifted maxima: several times faster than ``max_pool2d`` on CPU)."""
    p = F.pad(x, (1, 1, 1, 1))
    rows = torch.maximum(torch.maximum(p[..., :-2], p[..., 1:-1]), p[..., 2:])
    return torch.maximum(torch.maximum(rows[..., :-2, :], rows[..., 1:-1, :]), rows[..., 2:, :])


def _change_strokes(x: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """Dilate (``steps > 0``) or erode (``< 0``) each image of ``x`` [n, 1, H, W] by ``|steps|``
    3x3 max- / min-pool passes (erosion = dilation of the background). An erosion that would
    remove more than half of a glyph's ink (a hairline font) is skipped."""
    x = x.clone()
    for k in range(1, int(steps.abs().max()) + 1 if len(steps) else 1):
        grow, shrink = steps >= k, steps <= -k
        if grow.any():
            x[grow] = _dilate(x[grow])
        if shrink.any():
            before = x[shrink]
            after = 1.0 - _dilate(1.0 - before)
            thin = after.sum((1, 2, 3)) < 0.5 * before.sum((1, 2, 3))
            x[shrink] = torch.where(thin[:, None, None, None], before, after)
    return x


def _sample_grid(theta: torch.Tensor, size: int) -> torch.Tensor:
    """``affine_grid(theta, [n, 1, size, size], align_corners=False)`` as one batched matmul
    (faster on CPU): ``[n, size, size, 2]``."""
    c = (torch.arange(size, dtype=theta.dtype) + 0.5) * (2.0 / size) - 1.0
    gy, gx = torch.meshgrid(c, c, indexing="ij")
    base = torch.stack([gx, gy, torch.ones_like(gx)], -1).reshape(-1, 3)
    return torch.matmul(base, theta.transpose(1, 2)).view(len(theta), size, size, 2)


def distort(base: np.ndarray, config: GlyphConfig, rng: np.random.Generator) -> np.ndarray:
    """One random drawing of each base bitmap ``[n, 2S, 2S]`` uint8 -> ``[n, S, S]`` uint8
    (``S = config.image_size``): affine warp and stroke change at 2S, then 2x2 average pooling."""
    n, size = len(base), base.shape[-1]
    theta = _random_affines(n, config, rng)
    lo, hi = config.stroke_steps
    steps = torch.from_numpy(rng.integers(lo, hi + 1, n))
    x = torch.from_numpy(base).float()[:, None] / 255.0
    x = F.grid_sample(
        x, _sample_grid(theta, size), mode="bilinear", padding_mode="zeros", align_corners=False
    )
    x = F.avg_pool2d(_change_strokes(x, steps), 2)
    return (x[:, 0] * 255.0).round().clamp(0, 255).to(torch.uint8).numpy()


# --- the dataset and its cache ------------------------------------------------------------------


def cache_path(
    config: GlyphConfig = GlyphConfig(), cache_dir: str | os.PathLike | None = None
) -> Path:
    """``<cache_dir>/glyphs-v<version>-<hash>.npz``; the hash covers the configuration and the
    matplotlib and Unicode database versions (fonts and character properties come from them)."""
    key = json.dumps(
        {
            "config": dataclasses.asdict(config),
            "version": CACHE_VERSION,
            "matplotlib": matplotlib.__version__,
            "unicode": unicodedata.unidata_version,
        },
        sort_keys=True,
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return folder / f"glyphs-v{CACHE_VERSION}-{digest}.npz"


def _checksum(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for key in sorted(arrays):
        a = np.ascontiguousarray(arrays[key])
        h.update(f"{key}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _to_arrays(dataset: ImageDataset) -> dict[str, np.ndarray]:
    arrays = {}
    for name, split in dataset.splits.items():
        arrays[f"{name}_images"] = split.images
        arrays[f"{name}_labels"] = split.labels
        arrays[f"{name}_names"] = np.array(split.class_names, dtype=str)
    return arrays


def _save(path: Path, dataset: ImageDataset) -> None:
    arrays = _to_arrays(dataset)
    arrays["checksum"] = np.array(_checksum(arrays))
    atomic_write(path, lambda f: np.savez_compressed(f, **arrays))


def _load(path: Path, config: GlyphConfig) -> ImageDataset:
    """Read a cache file; raise ``ValueError`` (with the reason) if it is damaged."""
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    stored = str(arrays.pop("checksum", ""))
    if stored != _checksum(arrays):
        raise ValueError("checksum mismatch")
    s = config.image_size
    splits = {}
    for name in SPLITS:
        images, labels = arrays[f"{name}_images"], arrays[f"{name}_labels"]
        names = [str(n) for n in arrays[f"{name}_names"]]
        if images.dtype != np.uint8 or images.shape != (
            len(names) * config.samples_per_class,
            s,
            s,
        ):
            raise ValueError(f"{name} images have dtype {images.dtype}, shape {images.shape}")
        splits[name] = ImageSplit(images, labels, names)
    return ImageDataset(splits, name="glyphs")


def _render(config: GlyphConfig, progress: bool = True) -> ImageDataset:
    """Render the dataset (no cache). Each class gets ``samples_per_class`` drawings; sample
    ``i`` of a class uses font ``perm[i % n_fonts]`` of a random permutation of its fonts."""
    selection = _selection(config)
    rng = np.random.default_rng(config.seed)
    canvas = 2 * config.image_size
    # one base bitmap per (character, font), rendered font by font
    by_font: dict[str, list[int]] = {}
    for i, c in enumerate(selection):
        for f in c.fonts:
            by_font.setdefault(f, []).append(i)
    k = config.samples_per_class
    n_chunks = -(-len(selection) * k // _CHUNK)
    bar = tqdm(total=len(by_font) + n_chunks, desc="rendering glyphs", disable=not progress)
    base_index: dict[tuple[int, str], int] = {}
    chunks = []
    for f, idx in by_font.items():
        for i in idx:
            base_index[(i, f)] = len(base_index)
        chunks.append(render_base(f, [selection[i].char for i in idx], canvas))
        bar.update()
    bases = np.concatenate(chunks) if chunks else np.zeros((0, canvas, canvas), np.uint8)
    # which base each sample draws from, class by class
    which = np.empty(len(selection) * k, dtype=np.int64)
    for i, c in enumerate(selection):
        perm = rng.permutation(len(c.fonts))
        which[i * k : (i + 1) * k] = [
            base_index[(i, c.fonts[perm[j % len(perm)]])] for j in range(k)
        ]
    images = np.empty((len(which), config.image_size, config.image_size), dtype=np.uint8)
    for start in range(0, len(which), _CHUNK):
        stop = start + _CHUNK
        images[start:stop] = distort(bases[which[start:stop]], config, rng)
        bar.update()
    bar.close()
    splits = {}
    split_of = np.array([c.block.split for c in selection])
    for name in SPLITS:
        classes = np.flatnonzero(split_of == name)
        rows = (classes[:, None] * k + np.arange(k)).ravel()
        labels = np.repeat(np.arange(len(classes)), k)
        splits[name] = ImageSplit(
            images[rows], labels, [class_name(selection[i].char) for i in classes]
        )
    return ImageDataset(splits, name="glyphs")


def render_glyphs(
    config: GlyphConfig = GlyphConfig(),
    cache_dir: str | os.PathLike | None = None,
    log: Callable[[str], None] = print,
    progress: bool = True,
) -> ImageDataset:
    """The glyph dataset for ``config``: read from the cache, or rendered and cached.

    A damaged cache file (truncated, not an npz, wrong checksum or shapes) is reported with one
    line through ``log`` and re-rendered. Images ``[n, S, S]`` uint8, 0 = background, 255 = ink.
    """
    path = cache_path(config, cache_dir)
    if path.exists():
        try:
            return _load(path, config)
        except Exception as err:  # any unreadable file is rebuilt, never trusted
            log(f"glyph cache {path} is damaged ({type(err).__name__}: {err}); re-rendering it")
    dataset = _render(config, progress)
    try:
        _save(path, dataset)
    except OSError as err:  # a read-only or full disk: still usable, just not cached
        log(f"could not write the glyph cache {path} ({err}); continuing without it")
    return dataset
