"""Atomic file writes (a reader never sees a half-written file, even after a crash) and the one
JSON reader whose failures are a one-line :class:`~leo_tutorial.errors.UserError`."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import UserError


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "wb") -> Path:
    """Call ``write(fileobj)`` on a temporary file next to ``path``, then rename it into place.

    The rename is atomic on POSIX, so ``path`` holds either the old or the new content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def strict_json(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, +-inf) replaced by None, so that it is strict
    JSON (``json.dump`` would write the non-standard ``NaN`` / ``Infinity``)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    return obj


def read_json(path: str | os.PathLike, missing: str, invalid: str) -> Any:
    """The parsed content of a JSON file. A missing file raises :class:`UserError` with the
    message ``missing``; a file that is not valid JSON (or not UTF-8) raises it with
    ``invalid``, where ``{error}`` stands for the parser's own message."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(missing) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(invalid.replace("{error}", str(e))) from None


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented, strict JSON (non-finite numbers as ``null``), atomically."""
    text = json.dumps(strict_json(obj), indent=2, allow_nan=False)
    return atomic_write(path, lambda f: f.write(text), mode="w")


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> Path:
    """``torch.save`` atomically. Save only tensors and plain types so that
    ``torch.load(path, weights_only=True)`` can read it back without executing code."""
    import torch

    return atomic_write(path, lambda f: torch.save(obj, f))
