"""Where computations run and how they are seeded: device, dtype, seeds.

Every random draw of a run derives from (run seed, purpose, step) through :func:`step_seed`,
so a run is reproducible and resumable, and every model is evaluated on the same tasks::

    sampler.sample(12, [seed, SeedPurpose.TRAIN, step])          # the meta-train batch of step t
    torch.manual_seed(step_seed(seed, SeedPurpose.TORCH, step))  # its dropout and samples
    evaluate(..., seed=[seed, SeedPurpose.TEST])                 # the meta-test tasks
"""

from __future__ import annotations

import os
from enum import IntEnum
from pathlib import Path

import numpy as np
import torch

from .errors import UserError


class SeedPurpose(IntEnum):
    """What a seed is for; the second number of every ``[seed, purpose, ...]`` seed list.

    The values are part of the run format (they fix which tasks a seed gives): never renumber.
    """

    TRAIN = 0  # meta-train task batches (S^tr)
    VAL = 1  # meta-validation tasks (S^val), model selection
    TEST = 2  # meta-test tasks (S^test)
    TORCH = 3  # torch's generator at each meta-step: dropout, z and w samples
    INIT = 4  # initial parameters of a model
    SEARCH = 5  # the hyper-parameter sampler of trial n of a search (leo_tutorial.tune)


def step_seed(seed: int, purpose: SeedPurpose, step: int) -> int:
    """A 63-bit torch seed for one (run seed, purpose, step)."""
    words = np.random.SeedSequence([seed, int(purpose), step]).generate_state(2, np.uint64)
    return int(words[0] >> 1)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else the CPU; asking for CUDA without it is an error."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except RuntimeError:
        raise UserError(f"unknown device {device!r}; use --device cpu, cuda or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(
            "--device cuda was asked for but no CUDA GPU is available; "
            "use --device cpu or --device auto"
        )
    return device


DTYPES = {"float32": torch.float32, "float64": torch.float64}


def torch_dtype(name: str) -> torch.dtype:
    """``"float32"`` / ``"float64"`` -> the torch dtype (the names run.json stores)."""
    if name not in DTYPES:
        raise UserError(f"dtype must be float32 or float64, got {name!r}")
    return DTYPES[name]


def default_cache_dir() -> Path:
    """Where caches go: ``$XDG_CACHE_HOME/leo-tutorial``, or ``~/.cache/leo-tutorial`` (never
    the repository or site-packages)."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "leo-tutorial"
