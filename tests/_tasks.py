"""Random task batches for model tests (plain tensors; no data package needed)."""

from types import SimpleNamespace

import torch


def random_batch(b=3, n=5, k=2, v=4, d=12, dtype=torch.float64, seed=0):
    """A TaskBatch-like object with unit-norm embeddings and labels = class position."""
    g = torch.Generator().manual_seed(seed)
    sx = torch.nn.functional.normalize(torch.randn(b, n, k, d, generator=g, dtype=dtype), dim=-1)
    qx = torch.nn.functional.normalize(torch.randn(b, n, v, d, generator=g, dtype=dtype), dim=-1)
    sy = torch.arange(n).view(1, n, 1).expand(b, n, k).clone()
    qy = torch.arange(n).view(1, n, 1).expand(b, n, v).clone()
    return SimpleNamespace(support_x=sx, support_y=sy, query_x=qx, query_y=qy)


def task(batch, i):
    """Task i of a batch, as a batch of one."""
    return SimpleNamespace(**{k: t[i : i + 1] for k, t in vars(batch).items()})
