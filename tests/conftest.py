"""Shared test setup: progress bars off (set before any leo_tutorial/tqdm import) and one
torch thread: the tests use small tensors, for which a second OpenMP thread only adds
synchronisation (and, on a busy 2-core machine, spin-waiting that makes them 10x slower)."""

import os

os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402

torch.set_num_threads(1)


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_bank():
    """A small synthetic bank (12/6/6 classes x 12 images, 32-d, class means in 4-d) for tests
    that fit several methods quickly; read-only: tests must not change it."""
    from leo_tutorial.data import SyntheticConfig, make_synthetic_bank

    return make_synthetic_bank(
        SyntheticConfig(
            n_train_classes=12,
            n_val_classes=6,
            n_test_classes=6,
            images_per_class=12,
            dim=32,
            subspace_dim=4,
        )
    )
