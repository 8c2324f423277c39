"""Saving and loading regression models (tensors and plain types only: no code runs on load),
and the model shipped with the package."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from ..assets import ASSETS
from ..errors import UserError
from ..io import atomic_torch_save
from .model import RegressionConfig, RegressionLEO

CHECKPOINT_FORMAT = 1
SHIPPED_CHECKPOINT = "regression_leo.pt"


def save_regression(
    model: RegressionLEO, path: str | Path, metrics: dict[str, Any] | None = None
) -> Path:
    """Write the model (config, weights, optional metrics) atomically, tensors and plain types
    only, so :func:`load_regression` reads it with ``weights_only=True``."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return atomic_torch_save(
        path,
        {
            "format": CHECKPOINT_FORMAT,
            "config": asdict(model.config),
            "dtype": str(model.dtype).removeprefix("torch."),
            "model": state,
            "metrics": metrics or {},
        },
    )


def shipped_checkpoint() -> Path:
    """Path of the checkpoint shipped with the package (``scripts/train_regression.py``)."""
    return ASSETS / SHIPPED_CHECKPOINT


def load_regression(path: str | Path | None = None) -> tuple[RegressionLEO, dict[str, Any]]:
    """(model, metrics) from a checkpoint written by :func:`save_regression`; the shipped one
    by default. Read with ``weights_only=True`` (no code runs); a damaged file is a UserError."""
    path = Path(path) if path is not None else shipped_checkpoint()
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(saved, dict) or saved.get("format") != CHECKPOINT_FORMAT:
            raise ValueError("not a regression checkpoint of format 1")
        with torch.random.fork_rng(devices=[]):  # initial weights are overwritten: keep the
            model = RegressionLEO(
                RegressionConfig(**saved["config"]),  # caller's random stream
                dtype=getattr(torch, saved["dtype"]),
            )
        model.load_state_dict(saved["model"])
    except FileNotFoundError:
        raise UserError(f"{path} not found; train one with scripts/train_regression.py") from None
    except Exception as e:  # noqa: BLE001 (any unpickling or shape problem: a damaged file)
        raise UserError(
            f"{path} is not a readable regression checkpoint ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:200] if str(e) else ''}); "
            "regenerate it with scripts/train_regression.py"
        ) from None
    return model, saved.get("metrics", {})
