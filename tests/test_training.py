"""Meta-training: clipping, NaN guard, checkpoints, determinism, exact resume, evaluation."""

import math

import numpy as np
import pytest
import torch

from leo_tutorial import LEO, LEOConfig, TrainConfig, UserError
from leo_tutorial.data import EpisodeSampler, SyntheticConfig, make_synthetic_bank
from leo_tutorial.io import atomic_write
from leo_tutorial.rundir import load_run
from leo_tutorial.training import (
    clip_gradients,
    evaluate,
    mean_ci95,
    meta_step,
    train,
)

SMALL = SyntheticConfig(
    n_train_classes=20,
    n_val_classes=8,
    n_test_classes=8,
    images_per_class=40,
    dim=32,
    subspace_dim=4,
    class_scale=1.5,
)
MODEL = LEOConfig(num_latents=8, outer_lr=3e-3)
SCHEDULE = TrainConfig(
    k_shot=1,
    n_query=5,
    eval_n_query=10,
    steps=30,
    val_every=10,
    val_tasks=40,
    test_tasks=60,
    eval_batch_size=20,
    batch_size=6,
)


@pytest.fixture(scope="module")
def bank():
    return make_synthetic_bank(SMALL)


def run(bank, out, **changes):
    return train(
        MODEL,
        SCHEDULE.replace(**changes),
        bank,
        out,
        device="cpu",
        progress=False,
        log=lambda message: None,
    )


def test_clipping_is_per_element_then_per_tensor_norm():
    g = [torch.tensor([0.3, -0.05, 0.02]), torch.tensor([0.01])]
    clipped = clip_gradients(g, value=0.1, norm=0.1)
    v = torch.tensor([0.1, -0.05, 0.02])  # clamped to +-0.1 first
    torch.testing.assert_close(clipped[0], v * 0.1 / v.norm())  # then its own norm -> 0.1
    torch.testing.assert_close(clipped[1], torch.tensor([0.01]))  # small tensors untouched
    assert clip_gradients(g, 0, 0)[0] is g[0]  # thresholds <= 0 switch clipping off


def test_nan_guard_skips_the_update(bank):
    model = LEO(MODEL, embedding_dim=32).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    batch = EpisodeSampler(bank.split("train"), 5, 1, 5).sample(4, seed=0)
    with torch.no_grad():
        model.g_d.weight[0, 0] = float("nan")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _, applied = meta_step(model, optimizer, batch)
    assert not applied
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]) or torch.isnan(v).any()
    assert not optimizer.state  # Adam never stepped


def test_training_learns_and_writes_a_complete_run(bank, tmp_path):
    result = run(bank, tmp_path / "run", steps=60, val_every=20)
    assert result.test.accuracy > 0.5  # chance is 0.2 on these 5-way tasks
    names = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert names == ["best.pt", "checkpoint.pt", "metrics.json", "run.json", "test.json"]
    for name in ("best.pt", "checkpoint.pt"):  # plain tensors: safe to load
        state = torch.load(tmp_path / "run" / name, weights_only=True)
        assert set(state["model"]) == {n for n, _ in result.model.named_parameters()}
    val = result.history["val"]
    assert [h["step"] for h in val] == [0, 20, 40, 60]
    best = max(val, key=lambda h: h["accuracy"])
    assert (result.best_step, result.best_val_accuracy) == (best["step"], best["accuracy"])
    model, record = load_run(tmp_path / "run")
    assert record["train_config"]["steps"] == 60
    for (name, p), q in zip(model.named_parameters(), result.model.parameters(), strict=True):
        assert torch.equal(p, q), name


def test_training_is_deterministic_under_a_seed(bank, tmp_path):
    a = run(bank, tmp_path / "a", steps=12)
    b = run(bank, tmp_path / "b", steps=12)
    c = run(bank, tmp_path / "c", steps=12, seed=1)
    for (name, p), q in zip(a.model.named_parameters(), b.model.parameters(), strict=True):
        assert torch.equal(p, q), name
    assert a.test.accuracy == b.test.accuracy
    assert not all(
        torch.equal(p, r) for p, r in zip(a.model.parameters(), c.model.parameters(), strict=True)
    )


class Interrupt(Exception):
    pass


@pytest.mark.slow
@pytest.mark.parametrize("stop_at", [10, 20])
def test_resume_ends_exactly_where_an_uninterrupted_run_ends(bank, tmp_path, stop_at):
    full = run(bank, tmp_path / "full")

    def interrupt(step, metrics):
        if step == stop_at:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(
            MODEL,
            SCHEDULE,
            bank,
            tmp_path / "cut",
            device="cpu",
            progress=False,
            callback=interrupt,
            log=lambda m: None,
        )
    assert torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["step"] == stop_at
    with pytest.raises(UserError, match="--resume"):
        run(bank, tmp_path / "cut")  # an existing run is never overwritten silently
    resumed = train(
        MODEL,
        SCHEDULE,
        bank,
        tmp_path / "cut",
        device="cpu",
        progress=False,
        resume=True,
        log=lambda m: None,
    )
    for (name, p), q in zip(full.model.named_parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(p, q), name
    assert resumed.test.accuracy == full.test.accuracy
    assert resumed.history["val"] == full.history["val"]
    last = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    for key, value in torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)[
        "model"
    ].items():
        assert torch.equal(value, last["model"][key])


def test_resume_refuses_different_settings(bank, tmp_path):
    run(bank, tmp_path / "r", steps=10)
    with pytest.raises(UserError, match="k_shot"):
        train(
            MODEL,
            SCHEDULE.replace(steps=10, k_shot=2),
            bank,
            tmp_path / "r",
            resume=True,
            progress=False,
            device="cpu",
        )


def test_evaluate_is_deterministic_with_a_correct_ci(bank):
    model = LEO(MODEL, embedding_dim=32)
    split = bank.split("test")
    a = evaluate(model, split, n_way=5, k_shot=1, n_query=10, tasks=30, batch_size=7, seed=3)
    b = evaluate(model, split, n_way=5, k_shot=1, n_query=10, tasks=30, batch_size=7, seed=3)
    assert a.per_task.shape == (30,) and np.array_equal(a.per_task, b.per_task)
    assert a.ci95 == pytest.approx(1.96 * a.per_task.std(ddof=1) / math.sqrt(30))
    assert model.training  # evaluate restores the mode it found
    assert mean_ci95(np.array([0.5, 0.5])) == (0.5, 0.0)


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "file.json"
    target.write_text("old")

    def failing(f):
        f.write("partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, failing, mode="w")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["file.json"]  # no temporary left behind
