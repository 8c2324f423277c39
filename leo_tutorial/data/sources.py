"""Every data source by name: a JSON-able spec in, a :class:`FeatureBank` out.

A run directory stores the spec of its data (``run.json["data"]``) so that ``evaluate`` and
``info`` can rebuild exactly the same bank later.
"""

from __future__ import annotations

import dataclasses
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from leo_tutorial.data.bank import FeatureBank
from leo_tutorial.data.leo_pickles import load_leo_pickles
from leo_tutorial.data.synthetic import SyntheticConfig, make_synthetic_bank
from leo_tutorial.errors import UserError

SOURCES = ("synthetic", "leo-pickles")


def synthetic_spec(config: SyntheticConfig | None = None) -> dict[str, Any]:
    return {"source": "synthetic", "synthetic": dataclasses.asdict(config or SyntheticConfig())}


def leo_pickles_spec(data_dir: str | os.PathLike, dataset: str = "miniImageNet",
                     crop: str = "center", train_on_val: bool = False) -> dict[str, Any]:
    return {"source": "leo-pickles", "data_dir": str(Path(data_dir).expanduser().resolve()),
            "dataset": dataset, "crop": crop, "train_on_val": train_on_val}


@lru_cache(maxsize=2)
def _synthetic(config: SyntheticConfig) -> FeatureBank:
    return make_synthetic_bank(config)


def load_bank(spec: dict[str, Any]) -> FeatureBank:
    """The feature bank a spec names (see :func:`synthetic_spec`, :func:`leo_pickles_spec`)."""
    source = spec.get("source")
    if source == "synthetic":
        return _synthetic(SyntheticConfig(**spec.get("synthetic", {})))
    if source == "leo-pickles":
        return load_leo_pickles(spec["data_dir"], spec["dataset"], spec["crop"],
                                spec.get("train_on_val", False))
    raise UserError(f"unknown data source {source!r}; choose one of: {', '.join(SOURCES)}")
