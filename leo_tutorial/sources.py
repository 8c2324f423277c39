"""Every data source by name: the one registry the CLI, ``prepare``, ``compare`` and the
notebooks use (a JSON-able spec in, a :class:`~leo_tutorial.data.FeatureBank` out).

A run directory stores the spec of its data (``run.json["data"]``) so that ``evaluate`` and
``info`` can rebuild exactly the same bank later. Image sources go through stage 1 here
(:func:`leo_tutorial.features.image_bank`), so the data layer never imports the backbone.

To add a source: write its reader or generator in ``leo_tutorial/data/``, a ``*_spec``
function and a :class:`DataSource` entry in :data:`SOURCES` below (CONTRIBUTING.md has the
checklist).

Example::

    bank = load_bank(synthetic_spec())               # what `--data synthetic` trains on
    bank = load_bank(SOURCES["glyphs"].from_flags(args))   # from parsed CLI flags
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from .assets import ASSETS
from .config import PRESETS
from .data import FeatureBank, GlyphConfig, ImageDataset, SyntheticConfig
from .data.glyphs import render_glyphs
from .data.leo_pickles import CROPS, DATASETS, load_leo_pickles
from .data.omniglot import read_omniglot
from .data.synthetic import bayes_accuracy, make_synthetic_bank
from .errors import UserError
from .features import image_bank

__all__ = [
    "ASSETS",
    "DATA_FLAGS",
    "SOURCES",
    "DataSource",
    "glyphs_spec",
    "image_dataset",
    "leo_pickles_spec",
    "load_bank",
    "omniglot_spec",
    "source_of",
    "synthetic_spec",
]

Log = Callable[[str], None]


# ------------------------------------------------------------------------------ specs
def synthetic_spec(config: SyntheticConfig | None = None) -> dict[str, Any]:
    return {"source": "synthetic", "synthetic": dataclasses.asdict(config or SyntheticConfig())}


def leo_pickles_spec(
    data_dir: str | os.PathLike,
    dataset: str = "miniImageNet",
    crop: str = "center",
    train_on_val: bool = False,
) -> dict[str, Any]:
    return {
        "source": "leo-pickles",
        "data_dir": str(Path(data_dir).expanduser().resolve()),
        "dataset": dataset,
        "crop": crop,
        "train_on_val": train_on_val,
    }


def glyphs_spec(config: GlyphConfig | None = None) -> dict[str, Any]:
    return {"source": "glyphs", "glyphs": dataclasses.asdict(config or GlyphConfig())}


def omniglot_spec(
    data_dir: str | os.PathLike, image_size: int = 28, rotations: bool = False
) -> dict[str, Any]:
    return {
        "source": "omniglot",
        "data_dir": str(Path(data_dir).expanduser().resolve()),
        "image_size": image_size,
        "rotations": rotations,
    }


def _tuples(values: dict[str, Any]) -> dict[str, Any]:
    """JSON turned the config's tuples into lists; frozen configs need them back."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}


# --------------------------------------------------------------------- the CLI's data flags
# name -> (argparse keyword arguments, default). Defaults are applied by the source that reads
# the flag, so a flag given to a source that does not read it can be refused.
DATA_FLAGS: dict[str, tuple[dict[str, Any], Any]] = {
    "data_dir": (
        {
            "type": Path,
            "metavar": "DIR",
            "help": "folder of the data (leo-pickles: holds "
            "<dataset>/<crop>/<split>_embeddings.pkl; omniglot: holds images_background/ and "
            "images_evaluation/)",
        },
        None,
    ),
    "dataset": (
        {
            "help": f"leo-pickles: {' or '.join(DATASETS)}, or the folder name of embeddings "
            "exported in the same layout (default: miniImageNet)"
        },
        "miniImageNet",
    ),
    "crop": ({"choices": CROPS, "help": "leo-pickles: embedding crop (default: center)"}, "center"),
    "train_on_val": (
        {
            "action": "store_true",
            "help": "leo-pickles: add the meta-val classes to meta-train "
            "(the paper's final protocol)",
        },
        False,
    ),
    "synthetic_seed": (
        {"type": int, "metavar": "SEED", "help": "synthetic: seed of the generator (default: 0)"},
        0,
    ),
}


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def _value(args: argparse.Namespace, name: str) -> Any:
    value = getattr(args, name, None)
    return DATA_FLAGS[name][1] if value in (None, False) else value


def _need_dir(args: argparse.Namespace, source: str, holds: str) -> Path:
    data_dir = getattr(args, "data_dir", None)
    if data_dir is None:
        raise UserError(f"--data {source} needs --data-dir DIR, the folder that holds {holds}")
    return Path(data_dir)


# ------------------------------------------------------------------------------ registry
@dataclass(frozen=True)
class DataSource:
    """One data source: how the CLI names and builds its spec, and how the spec is loaded.

    ``flags``: the data flags of :data:`DATA_FLAGS` it reads; ``from_flags(args)`` makes its
    spec from parsed flags (errors name the flag to fix). Feature sources have ``load(spec)``;
    image sources have ``images(spec, log, progress)`` and are embedded by their stage-1
    backbone. ``label(spec)`` names the data in tables; ``preset(spec, way, shot, steps)`` is
    the LEO preset ``--preset auto`` picks (default: :func:`cpu_preset`); ``notes(spec, way,
    shot)`` are extra lines ``train`` prints after the test accuracy (e.g. the best accuracy
    possible, when known).
    """

    name: str
    summary: str
    flags: tuple[str, ...]
    from_flags: Callable[[argparse.Namespace], dict[str, Any]]
    load: Callable[[dict[str, Any]], FeatureBank] | None = None
    images: Callable[[dict[str, Any], Log, bool], ImageDataset] | None = None
    label: Callable[[dict[str, Any]], str] = lambda spec: spec["source"]
    preset: Callable[[dict[str, Any], int, int, int], str] = lambda spec, way, shot, steps: (
        cpu_preset(shot)
    )
    notes: Callable[[dict[str, Any], int, int], list[str]] | None = None

    @property
    def has_images(self) -> bool:
        return self.images is not None


@lru_cache(maxsize=2)
def _synthetic_bank(config: SyntheticConfig) -> FeatureBank:
    return make_synthetic_bank(config)


def _synthetic_notes(spec: dict[str, Any], way: int, shot: int) -> list[str]:
    config = SyntheticConfig(**_tuples(spec.get("synthetic", {})))
    bayes, ci = bayes_accuracy(config, way, shot)
    no_bias, ci_nb = bayes_accuracy(config, way, shot, bias=False)
    return [
        f"Bayes-optimal accuracy of the synthetic generator: {100 * bayes:.2f}% "
        f"+- {100 * ci:.2f}%; its rule without the bias term (the form of LEO's "
        f"classifier): {100 * no_bias:.2f}% +- {100 * ci_nb:.2f}%"
    ]


# The official schedule (num_steps_limit, LEO_SPEC §4.1): the paper's tuned settings are for it.
OFFICIAL_STEPS = 100_000


def cpu_preset(shot: int) -> str:
    """Ours for CPU budgets (hundreds to a few thousand steps), chosen by
    benchmarks/bench_robustness.py on some embedding distributions and checked on others:
    ``cpu-1shot`` for 1-shot tasks, ``cpu-5shot`` for more shots."""
    return "cpu-1shot" if shot == 1 else "cpu-5shot"


def _paper_preset(spec: dict[str, Any], way: int, shot: int, steps: int) -> str:
    """The paper's tuned setting for 5-way 1/5-shot on the official files on the official
    schedule (>= 100 000 steps); otherwise, and for any other embeddings, :func:`cpu_preset`
    (the paper's values were tuned at 100 000 steps on WRN features and train poorly in a few
    thousand steps)."""
    prefix = {"miniImageNet": "mini", "tieredImageNet": "tiered"}.get(spec.get("dataset"))
    tuned = f"{prefix}-{shot}shot"
    official = prefix and way == 5 and tuned in PRESETS and steps >= OFFICIAL_STEPS
    return tuned if official else cpu_preset(shot)


SOURCES: dict[str, DataSource] = {
    "synthetic": DataSource(
        "synthetic",
        "Gaussian classes in a 16-d subspace of 640-d, miniImageNet-shaped, known Bayes accuracy",
        ("synthetic_seed",),
        lambda args: synthetic_spec(SyntheticConfig(seed=_value(args, "synthetic_seed"))),
        load=lambda spec: _synthetic_bank(SyntheticConfig(**_tuples(spec.get("synthetic", {})))),
        notes=_synthetic_notes,
    ),
    "leo-pickles": DataSource(
        "leo-pickles",
        "the official miniImageNet / tieredImageNet embedding pickles (--data-dir)",
        ("data_dir", "dataset", "crop", "train_on_val"),
        lambda args: leo_pickles_spec(
            _need_dir(
                args,
                "leo-pickles",
                f"{_value(args, 'dataset')}/{_value(args, 'crop')}/train_embeddings.pkl",
            ),
            _value(args, "dataset"),
            _value(args, "crop"),
            _value(args, "train_on_val"),
        ),
        load=lambda spec: load_leo_pickles(
            spec["data_dir"], spec["dataset"], spec["crop"], spec.get("train_on_val", False)
        ),
        label=lambda spec: spec["dataset"],
        preset=_paper_preset,
    ),
    "glyphs": DataSource(
        "glyphs",
        "characters rendered from matplotlib's fonts, embedded by the shipped stage-1 ConvNet",
        (),
        lambda args: glyphs_spec(),
        images=lambda spec, log, progress: render_glyphs(
            GlyphConfig(**_tuples(spec.get("glyphs", {}))), log=log, progress=progress
        ),
    ),
    "omniglot": DataSource(
        "omniglot",
        "your Omniglot folder (--data-dir); the backbone is pre-trained on first use",
        ("data_dir",),
        lambda args: omniglot_spec(
            _need_dir(args, "omniglot", "images_background/ and images_evaluation/")
        ),
        images=lambda spec, log, progress: read_omniglot(
            spec["data_dir"],
            spec.get("image_size", 28),
            spec.get("rotations", False),
            log=log,
            progress=progress,
        ),
    ),
}


def source_of(spec: dict[str, Any]) -> DataSource:
    """The registry entry of a spec (a clear error for a spec from elsewhere)."""
    name = spec.get("source") if isinstance(spec, dict) else None
    if name not in SOURCES:
        raise UserError(f"unknown data source {name!r}; choose one of: {', '.join(SOURCES)}")
    return SOURCES[name]


def spec_from_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The spec that ``--data NAME`` and its flags name; a data flag the source does not read
    is an error (it would be ignored silently otherwise)."""
    source = SOURCES[args.data]
    unused = [
        flag_name(f)
        for f in DATA_FLAGS
        if f not in source.flags and getattr(args, f, None) not in (None, False)
    ]
    if unused:
        reads = ", ".join(map(flag_name, source.flags)) or "no data flags"
        raise UserError(
            f"{', '.join(unused)} does not apply to --data {source.name} (it reads {reads}); "
            "drop it or choose another --data"
        )
    return source.from_flags(args)


def image_dataset(spec: dict[str, Any], log: Log = print, progress: bool = True) -> ImageDataset:
    """The images behind an image source's spec (before stage 1)."""
    source = source_of(spec)
    if not source.has_images:
        images = ", ".join(s.name for s in SOURCES.values() if s.has_images)
        raise UserError(f"{source.name!r} is not an image source; use {images}")
    return source.images(spec, log, progress)


def load_bank(spec: dict[str, Any], log: Log = print, progress: bool = True) -> FeatureBank:
    """The feature bank a spec names (see the ``*_spec`` functions). Image sources are embedded
    by their stage-1 backbone (:func:`leo_tutorial.features.image_bank`)."""
    source = source_of(spec)
    if source.has_images:
        return image_bank(image_dataset(spec, log, progress), log=log)
    return source.load(spec)
