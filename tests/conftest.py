"""Shared test setup: progress bars off (set before any leo_tutorial/tqdm import) and one
torch thread: the tests use small tensors, for which a second OpenMP thread only adds
synchronisation (and, on a busy 2-core machine, spin-waiting that makes them 10x slower)."""

import os

os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402

torch.set_num_threads(1)
