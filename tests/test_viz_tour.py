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
