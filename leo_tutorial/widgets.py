"""Interactive explorers for the notebooks (ipywidgets).

Explorers are thin: a few controls wired to plain library functions (``leo_tutorial.latent``,
``leo_tutorial.viz``, ...) that do the work and are tested on their own. Each explorer keeps its
controls as attributes and its current answer in ``result``, so it can be driven without a
browser (set a slider's ``value``, call a button's ``click()``, read ``result``): that is how
the tests and the checked notebook cells use them.
"""

from __future__ import annotations

from typing import Any

import ipywidgets as widgets

from . import latent, regression, viz
from .data import TaskBatch
from .errors import UserError
from .model import LEO


class LatentExplorer:
    """Pick a task, step LEO's latent inner loop (the latent update, §2.3.2) with a slider, watch
    the class codes, the decoded weights and the query predictions change (notebook 08).

    Controls: ``task`` (which task of ``tasks``), ``step`` (inner step 0..``steps``) and
    ``next_step`` (a button: one step more). ``result`` holds the numbers on show; ``image``
    the picture (:func:`viz.explorer_figure`). Callback: :func:`latent.task_trajectory`.
    """

    def __init__(self, model: LEO, tasks: TaskBatch, steps: int = 10):
        if steps < 1:
            raise UserError(f"steps must be >= 1, got {steps}")
        self.model, self.tasks = model, tasks
        self.task = widgets.IntSlider(0, min=0, max=tasks.batch_size - 1, description="task")
        self.step = widgets.IntSlider(0, min=0, max=steps, description="inner step")
        self.next_step = widgets.Button(description="one step more")
        self.image = widgets.Image(format="png")
        self.summary = widgets.HTML()
        self.widget = widgets.VBox(
            [widgets.HBox([self.task, self.step, self.next_step]), self.image, self.summary]
        )
        self.trajectory: latent.TaskTrajectory | None = None
        self.projection: latent.PCA | None = None  # fitted on the current task's codes
        self.result: dict[str, Any] = {}
        self.task.observe(lambda _: self._load_task(), names="value")
        self.step.observe(lambda _: self._draw(), names="value")
        self.next_step.on_click(lambda _: self._advance())
        self._load_task()

    def _load_task(self) -> None:
        self.trajectory = latent.task_trajectory(
            self.model, self.tasks.task(self.task.value), self.step.max
        )
        self.projection = latent.fit_pca(self.trajectory.z)
        self._draw()

    def _advance(self) -> None:
        self.step.value = min(self.step.value + 1, self.step.max)

    def _draw(self) -> None:
        trajectory, step = self.trajectory, self.step.value
        self.result = {
            "task": self.task.value,
            "step": step,
            "support_loss": float(trajectory.support_loss[step]),
            "query_accuracy": float(trajectory.query_accuracy[step]),
            "predictions": trajectory.query_probs[step].argmax(-1),
        }
        self.image.value = viz.figure_png(viz.explorer_figure(trajectory, step, self.projection))
        self.summary.value = (
            f"task {self.task.value}, inner step {step}: support loss "
            f"{self.result['support_loss']:.3f}, query accuracy "
            f"{self.result['query_accuracy']:.2f}"
        )

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)


class RegressionExplorer:
    """Move the K support points of a regression task with sliders and watch the functions
    sampled from regression LEO change, before and after adaptation (notebook 09, paper Fig. 2).

    Controls: ``xs`` and ``ys``, one slider per point. ``result`` holds the current
    :class:`leo_tutorial.regression.FunctionSamples` (``samples``), the points and the fraction
    of adapted samples closer to a line than to a sine; ``image`` the picture
    (:func:`viz.function_samples_figure`). Callbacks: :func:`regression.sample_functions`,
    :func:`regression.line_fraction`.
    """

    def __init__(
        self,
        model: regression.RegressionLEO,
        support_x: list[float],
        support_y: list[float],
        n_samples: int = 30,
        seed: int = 0,
    ):
        if len(support_x) != len(support_y) or not support_x:
            raise UserError(
                f"need as many x as y values (at least one), got {len(support_x)} "
                f"and {len(support_y)}"
            )
        self.model, self.n_samples, self.seed = model, n_samples, seed
        slider = dict(step=0.1, continuous_update=False, readout_format=".1f")
        self.xs = [
            widgets.FloatSlider(float(x), min=-5, max=5, description=f"x{k}", **slider)
            for k, x in enumerate(support_x)
        ]
        self.ys = [
            widgets.FloatSlider(float(y), min=-6, max=6, description=f"y{k}", **slider)
            for k, y in enumerate(support_y)
        ]
        self.image = widgets.Image(format="png")
        self.summary = widgets.HTML()
        self.widget = widgets.VBox(
            [widgets.HBox([widgets.VBox(self.xs), widgets.VBox(self.ys)]), self.image, self.summary]
        )
        self.result: dict[str, Any] = {}
        for control in self.xs + self.ys:
            control.observe(lambda _: self._draw(), names="value")
        self._draw()

    def _draw(self) -> None:
        import matplotlib.pyplot as plt

        xs, ys = [s.value for s in self.xs], [s.value for s in self.ys]
        samples = regression.sample_functions(
            self.model, xs, ys, n_samples=self.n_samples, seed=self.seed
        )
        self.result = {
            "x": xs,
            "y": ys,
            "samples": samples,
            "line_fraction": regression.line_fraction(samples),
        }
        fig = viz.function_samples_figure(samples, xs, ys)
        self.image.value = viz.figure_png(fig)
        plt.close(fig)
        self.summary.value = (
            f"{100 * self.result['line_fraction']:.0f}% of the adapted "
            "samples are closer to a line than to a sine"
        )

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)
