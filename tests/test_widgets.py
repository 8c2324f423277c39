"""Explorers driven headlessly (set values, click, read results) and the live training curves."""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from leo_tutorial import LEO, LEOConfig, TrainConfig, UserError, latent, viz  # noqa: E402
from leo_tutorial.data import EpisodeSampler, SyntheticConfig, make_synthetic_bank  # noqa: E402
from leo_tutorial.training import train  # noqa: E402
from leo_tutorial.viz import figure_png  # noqa: E402
from leo_tutorial.widgets import LatentExplorer  # noqa: E402

SMALL = SyntheticConfig(
    n_train_classes=12,
    n_val_classes=8,
    n_test_classes=8,
    images_per_class=20,
    dim=16,
    subspace_dim=4,
    class_scale=1.5,
)
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def bank():
    return make_synthetic_bank(SMALL)


@pytest.fixture(scope="module")
def explorer(bank):
    torch.manual_seed(0)
    model = LEO(LEOConfig(num_latents=6), embedding_dim=16, n_way=4)
    tasks = EpisodeSampler(bank.split("val"), n_way=4, k_shot=1, n_query=5).sample(3, seed=0)
    return LatentExplorer(model, tasks, steps=4)


def test_explorer_starts_at_the_encoders_code(explorer):
    explorer.task.value, explorer.step.value = 0, 0
    assert explorer.result["task"] == 0 and explorer.result["step"] == 0
    assert bytes(explorer.image.value).startswith(PNG)
    assert "inner step 0" in explorer.summary.value


@pytest.mark.slow
def test_explorer_slider_and_button_step_the_inner_loop(explorer):
    explorer.task.value = 1
    reference = latent.task_trajectory(explorer.model, explorer.tasks.task(1), steps=4)
    explorer.step.value = 2
    assert explorer.result["step"] == 2
    assert explorer.result["support_loss"] == pytest.approx(reference.support_loss[2])
    assert explorer.result["query_accuracy"] == pytest.approx(reference.query_accuracy[2])
    np.testing.assert_array_equal(
        explorer.result["predictions"], reference.query_probs[2].argmax(-1)
    )
    before = explorer.image.value
    explorer.next_step.click()
    assert explorer.result["step"] == explorer.step.value == 3
    assert explorer.image.value != before
    for _ in range(3):  # stops at the last step
        explorer.next_step.click()
    assert explorer.result["step"] == 4
    assert explorer.result["support_loss"] < reference.support_loss[0]


def test_explorer_changing_task_recomputes(explorer):
    explorer.step.value = 4
    explorer.task.value = 2
    reference = latent.task_trajectory(explorer.model, explorer.tasks.task(2), steps=4)
    assert explorer.result["task"] == 2 and explorer.result["step"] == 4
    assert explorer.result["support_loss"] == pytest.approx(reference.support_loss[4])
    assert "task 2" in explorer.summary.value


def test_explorer_needs_a_step(bank, explorer):
    with pytest.raises(UserError, match="steps"):
        LatentExplorer(explorer.model, explorer.tasks, steps=0)


def test_figure_png():
    from matplotlib.figure import Figure

    fig = Figure()
    fig.subplots().plot([0, 1])
    assert figure_png(fig).startswith(PNG)


@pytest.mark.slow
def test_live_curves_redraw_after_every_validation(bank, tmp_path, capsys):
    curves = viz.LiveTrainingCurves(total_steps=20)
    schedule = TrainConfig(
        n_way=4,
        n_query=5,
        eval_n_query=5,
        steps=20,
        val_every=5,
        val_tasks=10,
        test_tasks=10,
        batch_size=4,
    )
    result = train(
        LEOConfig(num_latents=6, outer_lr=3e-3),
        schedule,
        bank,
        tmp_path / "run",
        device="cpu",
        progress=False,
        test=False,
        callback=curves,
        log=lambda message: None,
    )
    assert curves.frames == len(result.history["val"]) == 5
    axes = viz.plot_training_curves(result.history, best_step=result.best_step)
    assert [ax.get_xlabel() for ax in axes] == ["meta-training step"] * 2
    assert len(axes[1].get_legend().get_texts()) == 3  # train, val, best step
