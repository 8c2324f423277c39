"""Every data source by name: a JSON-able spec in, a :class:`FeatureBank` out.

A run directory stores the spec of its data (``run.json["data"]``) so that ``evaluate`` and
``info`` can rebuild exactly the same bank later.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

from leo_tutorial.data.bank import FeatureBank
from leo_tutorial.data.glyphs import GlyphConfig, default_cache_dir, render_glyphs
from leo_tutorial.data.images import ImageDataset
from leo_tutorial.data.leo_pickles import load_leo_pickles
from leo_tutorial.data.omniglot import read_omniglot
from leo_tutorial.data.synthetic import SyntheticConfig, make_synthetic_bank
from leo_tutorial.errors import UserError

SOURCES = ("synthetic", "leo-pickles", "glyphs", "omniglot")
ASSETS = Path(__file__).resolve().parent.parent / "assets"
SHIPPED_BACKBONES = {"glyphs": ASSETS / "glyphs_convnet4.pt"}  # trained on glyphs' meta-train


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


def backbone_cache_path(dataset: ImageDataset) -> Path:
    """Where a backbone trained here for ``dataset`` is cached (keyed by its meta-train set)."""
    train = dataset.split("train")
    digest = hashlib.sha256(train.images.tobytes() + "\n".join(train.class_names).encode())
    return default_cache_dir() / f"{dataset.name}-convnet4-{digest.hexdigest()[:16]}.pt"


def backbone_for(
    dataset: ImageDataset,
    retrain: bool = False,
    epochs: int = 6,
    log: Callable[[str], None] = print,
) -> Any:
    """The stage-1 backbone for an image dataset: one trained here before (cached under the
    user's cache directory), else the shipped one (glyphs), else one trained now on the
    meta-train classes and cached. ``retrain`` always trains (and replaces the cached one).

    Returns a :class:`leo_tutorial.features.ConvNet4` in eval mode.
    """
    from leo_tutorial.features import load_backbone, save_backbone, train_backbone

    path = backbone_cache_path(dataset)
    if path.is_file() and not retrain:  # a backbone trained here (first use or --retrain)
        return load_backbone(path)[0]
    shipped = SHIPPED_BACKBONES.get(dataset.name)
    if shipped is not None and shipped.is_file() and not retrain:
        return load_backbone(shipped)[0]
    train = dataset.split("train")
    log(
        f"pre-training the stage-1 backbone on {train.n_classes} {dataset.name} meta-train "
        f"classes ({epochs} epochs)"
    )
    backbone, history = train_backbone(dataset, epochs=epochs, channels=32, log=log)
    save_backbone(path, backbone, history)
    return backbone.eval()


def image_dataset(
    spec: dict[str, Any], log: Callable[[str], None] = print, progress: bool = True
) -> ImageDataset:
    """The images behind a ``glyphs`` or ``omniglot`` spec."""
    if spec.get("source") == "glyphs":
        return render_glyphs(
            GlyphConfig(**_tuples(spec.get("glyphs", {}))), log=log, progress=progress
        )
    if spec.get("source") == "omniglot":
        return read_omniglot(
            spec["data_dir"],
            spec.get("image_size", 28),
            spec.get("rotations", False),
            log=log,
            progress=progress,
        )
    raise UserError(f"{spec.get('source')!r} is not an image source; use glyphs or omniglot")


def image_bank(dataset: ImageDataset, log: Callable[[str], None] = print) -> FeatureBank:
    """Stage 1 applied: the dataset's images embedded by its backbone (LEO_SPEC §1.3)."""
    from leo_tutorial.features import embed_dataset

    return embed_dataset(backbone_for(dataset, log=log), dataset)


@lru_cache(maxsize=2)
def _synthetic(config: SyntheticConfig) -> FeatureBank:
    return make_synthetic_bank(config)


def load_bank(
    spec: dict[str, Any], log: Callable[[str], None] = print, progress: bool = True
) -> FeatureBank:
    """The feature bank a spec names (see the ``*_spec`` functions). Image sources are embedded
    by their stage-1 backbone (:func:`image_bank`)."""
    source = spec.get("source")
    if source == "synthetic":
        return _synthetic(SyntheticConfig(**spec.get("synthetic", {})))
    if source == "leo-pickles":
        return load_leo_pickles(
            spec["data_dir"], spec["dataset"], spec["crop"], spec.get("train_on_val", False)
        )
    if source in ("glyphs", "omniglot"):
        return image_bank(image_dataset(spec, log, progress), log=log)
    raise UserError(f"unknown data source {source!r}; choose one of: {', '.join(SOURCES)}")
