"""Smoke test of the notebook-00 schematic in leo_tutorial.viz."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from leo_tutorial.viz import leo_vs_maml_schematic  # noqa: E402


def test_leo_vs_maml_schematic_draws_two_titled_panels():
    axes = leo_vs_maml_schematic()
    assert len(axes) == 2
    assert all(isinstance(ax, matplotlib.axes.Axes) for ax in axes)
    assert axes[0].get_title().startswith("MAML")
    assert axes[1].get_title().startswith("LEO")
    assert axes[0].figure._suptitle.get_text() == "LEO vs MAML in one figure"
    plt.close(axes[0].figure)


def test_leo_vs_maml_schematic_draws_on_given_axes():
    fig, given = plt.subplots(1, 2)
    assert list(leo_vs_maml_schematic(given)) == list(given)
    plt.close(fig)


def test_training_curves_skip_log_windows_whose_loss_is_missing():
    """A window holding a skipped update logs loss NaN, written to JSON as null (None)."""
    import matplotlib

    matplotlib.use("Agg")
    from leo_tutorial import viz

    history = {
        "train": [
            {"step": 9, "loss": 1.5, "accuracy": 0.3},
            {"step": 19, "loss": None, "accuracy": 0.4},
            {"step": 29, "loss": float("nan"), "accuracy": 0.5},
            {"step": 39, "loss": 1.2, "accuracy": 0.6},
        ],
        "val": [{"step": 0, "accuracy": 0.2, "ci95": 0.01}],
        "skipped": [{"step": 15, "loss": None}],
    }
    loss_ax, _ = viz.plot_training_curves(history, best_step=0)
    assert list(loss_ax.lines[0].get_ydata()) == [1.5, 1.2]
