"""Run directories: what ``leo-tutorial train`` writes, and how it is read back.

A run directory holds::

    run.json         what was run: model + training config, data source, embedding dim
    checkpoint.pt    latest state (model, Adam, step, best so far): ``--resume`` continues here
    best.pt          the model with the best meta-validation accuracy so far
    metrics.json     history: training loss/accuracy, validation accuracy, skipped steps
    test.json        final meta-test accuracy with its 95% confidence interval
    .lock            held by the process writing the directory (see :class:`RunLock`)

Every file is written atomically (:mod:`leo_tutorial.io`); checkpoints hold tensors and plain
types only, so ``torch.load(path, weights_only=True)`` reads them without executing code.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import torch

from . import io
from .config import LEOConfig, TrainConfig, config_from_dict, config_to_dict
from .errors import UserError
from .model import LEO
from .runtime import resolve_device, torch_dtype

RUN_FORMAT = 1
RUN_FILE, CHECKPOINT_FILE, BEST_FILE = "run.json", "checkpoint.pt", "best.pt"
METRICS_FILE, TEST_FILE, LOCK_FILE = "metrics.json", "test.json", ".lock"


def read_json(path: Path, what: str) -> Any:
    """Parse a JSON file of a run directory; a missing or damaged file is a :class:`UserError`."""
    return io.read_json(
        path,
        missing=f"{path} not found: is {path.parent} a run directory written by "
        "`leo-tutorial train --out`?",
        invalid=f"{path} is not valid JSON ({{error}}); the {what} is damaged",
    )


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint without executing code (``weights_only=True``)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{path} not found: the run has no checkpoint yet") from None
    except Exception as e:  # noqa: BLE001 (any unpickling problem is a damaged file)
        raise UserError(
            f"{path} is not a readable leo-tutorial checkpoint ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:200]}); delete it or train again"
        ) from None


def run_record(
    leo_config: LEOConfig, train_config: TrainConfig, data_spec: dict[str, Any], embedding_dim: int
) -> dict[str, Any]:
    """The content of ``run.json``."""
    return {
        "format": RUN_FORMAT,
        "leo_config": config_to_dict(leo_config),
        "train_config": config_to_dict(train_config),
        "data": data_spec,
        "embedding_dim": embedding_dim,
    }


def build_model(record: dict[str, Any], device: torch.device | str = "cpu") -> LEO:
    """An untrained LEO shaped as in ``run.json``."""
    leo_config = config_from_dict(LEOConfig, record["leo_config"])
    train_config = config_from_dict(TrainConfig, record["train_config"])
    return LEO(
        leo_config,
        embedding_dim=record["embedding_dim"],
        n_way=train_config.n_way,
        dtype=torch_dtype(train_config.dtype),
    ).to(device)


def load_run(
    run_dir: str | Path, device: str | torch.device = "cpu", which: str = "best"
) -> tuple[LEO, dict[str, Any]]:
    """The ``best`` (or ``checkpoint``: latest) model of a run, and its run.json record."""
    run_dir = Path(run_dir)
    record = read_json(run_dir / RUN_FILE, "run record")
    model = build_model(record, resolve_device(device))
    state = load_checkpoint(run_dir / f"{which}.pt")
    model.load_state_dict(state["model"])
    return model, record


def steps_done(run_dir: str | Path) -> int | None:
    """Meta-steps completed by the run (from its checkpoint), or None without a checkpoint."""
    path = Path(run_dir) / CHECKPOINT_FILE
    return int(load_checkpoint(path)["step"]) if path.is_file() else None


def check_resume(saved: dict[str, Any], record: dict[str, Any]) -> None:
    """A resumed run must be the same run; only the number of steps may grow."""
    # compare today's form of the saved model settings (older keys upgraded, e.g. inner_gradient)
    upgraded = config_to_dict(config_from_dict(LEOConfig, saved["leo_config"]))
    saved = {**saved, "leo_config": upgraded}
    differences = []
    for section in ("train_config", "data", "leo_config"):  # a changed --shot before its preset
        for key in sorted(set(saved[section]) | set(record[section])):
            if key != "steps" and saved[section].get(key) != record[section].get(key):
                differences.append(
                    f"{key}: run has {saved[section].get(key)!r}, now {record[section].get(key)!r}"
                )
    if differences:
        raise UserError(
            "--resume needs the same settings as the interrupted run ("
            + "; ".join(differences[:3])
            + "); repeat the original command with "
            "--resume, or start a new run with another --out"
        )


def check_out_dir(path: str | Path, flag: str = "--out") -> Path:
    """An output folder that can be created (before any expensive work starts)."""
    path = Path(path)
    for parent in (path, *path.parents):
        if parent.exists():
            if not parent.is_dir():
                raise UserError(
                    f"{flag} {path}: {parent} is a file, not a folder; choose another {flag}"
                )
            if not os.access(parent, os.W_OK | os.X_OK):
                raise UserError(f"{flag} {path}: {parent} is not writable; choose another {flag}")
            break
    return path


# ---------------------------------------------------------------------------------- the lock
def _try_lock(fd: int) -> bool:
    """An exclusive, non-blocking lock on an open file; False when another process holds it.
    The operating system drops it when the holder exits, however it exits (kill -9 included)."""
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


class RunLock:
    """Exclusive ownership of a run directory by one process, taken before anything is written.

    ``with RunLock(out_dir): ...`` locks ``out_dir/.lock`` (an OS file lock; the file holds
    the owner's pid and host for the message); a second process asking for the same folder
    gets a :class:`UserError` naming it. The lock is released on exit, also after an exception,
    and the OS releases it when its process dies, so a lock of a killed process never blocks.
    """

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._fd: int | None = None
        self._created: list[Path] = []  # folders this lock made (removed again if left empty)

    def acquire(self) -> RunLock:
        missing = [p for p in (self.run_dir, *self.run_dir.parents) if not p.exists()]
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._created = missing
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            if not _try_lock(fd):
                owner = os.read(fd, 200).decode(errors="replace").split()
                os.close(fd)
                who = f"pid {owner[0]} on {owner[1]}" if len(owner) >= 2 else "another process"
                raise UserError(
                    f"{self.run_dir} is in use by another leo-tutorial process ({who}); wait "
                    "for it to finish or choose another --out"
                )
            try:  # the holder before us may have removed the file after we opened it
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        """Remove the lock file and drop the lock; folders the lock created are removed again
        when nothing was written into them."""
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)
        os.close(self._fd)  # closing drops the lock
        self._fd = None
        for folder in self._created:  # innermost first
            try:
                folder.rmdir()
            except OSError:  # not empty: something was written
                break

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
