"""Shared test setup: progress bars off (set before any leo_tutorial/tqdm import)."""

import os

os.environ.setdefault("TQDM_DISABLE", "1")
