"""Figures for the notebooks, and the notebook set-up.

One palette for everything: Okabe & Ito's colour-blind-safe colours. Functions here draw on a
given matplotlib ``Axes`` (or make one) and return it, so notebooks stay short.
"""

from __future__ import annotations

import os
import random
import warnings

import numpy as np
import torch

# Okabe-Ito: distinguishable with every common colour-vision deficiency.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]


def setup_notebook(seed: int = 0) -> None:
    """Deterministic, quiet, PNG-figure notebook set-up (the silent first cell of each notebook).

    Seeds Python, NumPy and torch; one torch thread (small tensors: faster and reproducible);
    no progress bars; inline figures as PNG with the shared palette and readable sizes.
    """
    os.environ["TQDM_DISABLE"] = "1"
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    torch.set_printoptions(precision=4, sci_mode=False)
    np.set_printoptions(precision=4, suppress=True)
    warnings.filterwarnings("ignore", category=UserWarning, module="torch")
    import matplotlib as mpl

    mpl.rcParams.update(
        {
            "figure.figsize": (6.4, 4.0),
            "figure.dpi": 90,
            "savefig.dpi": 90,
            "axes.prop_cycle": mpl.cycler(color=PALETTE),
            "axes.grid": True,
            "grid.alpha": 0.3,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "font.size": 10,
            "image.cmap": "cividis",
            # Identical bytes for identical figures (no timestamps / software versions).
            "svg.hashsalt": "leo-tutorial",
        }
    )
    try:  # inline PNG (not retina/SVG) so committed notebooks stay small and stable
        from matplotlib_inline.backend_inline import set_matplotlib_formats

        set_matplotlib_formats("png", metadata={"Software": None})  # no version in the PNGs
    except ImportError:  # outside IPython
        pass


def leo_vs_maml_schematic(axes=None):
    """Schematic "LEO vs MAML in one figure" (notebook 00): returns the two Axes.

    Left: MAML adapts one shared initialisation theta by gradient steps in the high-dimensional
    parameter space, the same start for every task. Right: LEO encodes the support set into
    per-class latent codes z_n (a task-specific start), takes gradient steps in the small latent
    space (z_n -> z'_n) and decodes them into classifier weights w_n.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(12.5, 4.8), gridspec_kw={"width_ratios": [1, 1.6]})
    left, right = axes
    rng = np.random.default_rng(3)

    def box(ax, x, y, w, h, label, color):
        ax.add_patch(
            FancyBboxPatch(
                (x, y),
                w,
                h,
                boxstyle="round,pad=0.01,rounding_size=0.03",
                facecolor=color,
                alpha=0.12,
                edgecolor=color,
                lw=1.5,
            )
        )
        ax.text(x + w / 2, y + h + 0.02, label, ha="center", va="bottom", fontsize=9)

    def arrow(ax, start, end, color, lw=1.2, style="-|>", scale=8):
        ax.add_patch(
            FancyArrowPatch(
                start,
                end,
                arrowstyle=style,
                mutation_scale=scale,
                color=color,
                lw=lw,
                shrinkA=0,
                shrinkB=0,
            )
        )

    def steps(ax, start, end, color, n=4):
        # a slightly wiggly chain of n gradient steps from start to end
        pts = np.linspace(start, end, n + 1)
        pts[1:-1] += rng.normal(0, 0.012, pts[1:-1].shape)
        for a, b in zip(pts[:-1], pts[1:], strict=True):
            arrow(ax, a, b, color)

    # ---- MAML
    box(
        left,
        0.05,
        0.08,
        0.9,
        0.74,
        r"parameter space $\Theta \subset \mathbb{R}^{N \cdot D}$"
        "\n(5-way, D = 640: 3 200 dimensions)",
        "#7f7f7f",
    )
    theta = np.array([0.5, 0.45])
    left.plot(*theta, marker="*", ms=16, color="black", zorder=5)
    left.annotate(
        r"shared $\theta$" "\n(same start for every task)",
        theta,
        (0.5, 0.18),
        ha="center",
        fontsize=9,
        arrowprops=dict(arrowstyle="-", color="0.4", lw=0.8),
    )
    ends = [(0.18, 0.68), (0.84, 0.66), (0.83, 0.22)]
    for i, end in enumerate(ends):
        steps(left, theta, np.array(end), PALETTE[i])
        left.plot(*end, "o", color=PALETTE[i], ms=7)
        left.text(
            end[0],
            end[1] + 0.04,
            rf"$\theta'_{i + 1}$ (task {i + 1})",
            ha="center",
            fontsize=9,
            color=PALETTE[i],
        )
    left.text(
        0.5, 0.02, "1 example per class, 3 200 numbers to move per task", ha="center", fontsize=9
    )
    left.set_title(
        "MAML: adapt one shared $\\theta$ in the high-dimensional\n"
        r"parameter space, $\theta' = \theta - \alpha \nabla_\theta \mathcal{L}^{tr}$",
        fontsize=10,
    )

    # ---- LEO
    box(right, 0.02, 0.2, 0.22, 0.6, "support set $D^{tr}$\n(N x K embeddings $x$)", "#7f7f7f")
    box(
        right,
        0.37,
        0.3,
        0.24,
        0.4,
        r"latent space $\mathbb{R}^{Z}$ (Z = 64)" "\nper class",
        PALETTE[2],
    )
    box(
        right,
        0.76,
        0.2,
        0.22,
        0.6,
        r"weights $w_n \in \mathbb{R}^{D}$" "\n(D = 640) per class",
        "#7f7f7f",
    )
    for n in range(3):
        c = PALETTE[n]
        y = 0.68 - 0.18 * n
        right.plot(0.07 + 0.05 * rng.random(2), y + rng.normal(0, 0.02, 2), "o", color=c, ms=6)
        z = np.array([0.42 + 0.04 * n, 0.62 - 0.11 * n])
        z_prime = z + np.array([0.1, 0.02 * (1 - n)])
        right.plot(*z, "o", color=c, ms=7)
        steps(right, z, z_prime, c, n=3)
        right.plot(*z_prime, "s", color=c, ms=7)
        right.text(
            *(z + [-0.035, 0.0]), f"$z_{n + 1}$", color=c, fontsize=9, ha="right", va="center"
        )
        right.text(*(z_prime + [0.015, 0.0]), f"$z'_{n + 1}$", color=c, fontsize=9, va="center")
        right.plot([0.8, 0.94], [y, y], color=c, lw=4, solid_capstyle="round")
        right.text(0.87, y - 0.055, f"$w_{n + 1}$", color=c, fontsize=9, ha="center")
    arrow(right, (0.25, 0.5), (0.36, 0.5), "black", lw=1.5, scale=14)
    right.text(
        0.305, 0.53, "encoder $g_e$\n+ relation\nnet $g_r$", ha="center", va="bottom", fontsize=8
    )
    arrow(right, (0.62, 0.5), (0.75, 0.5), "black", lw=1.5, scale=14)
    right.text(0.685, 0.53, "decoder $g_d$", ha="center", va="bottom", fontsize=8)
    right.text(
        0.49,
        0.24,
        "gradient steps in z:\n" r"$z' = z - \alpha \nabla_z \mathcal{L}^{tr}$",
        ha="center",
        va="top",
        fontsize=9,
    )
    right.text(
        0.5,
        0.02,
        "the start $z_n$ depends on the task's data; each step decodes "
        "$z \\to w$ and scores the support set",
        ha="center",
        fontsize=9,
    )
    right.set_title(
        "LEO: encode the support set into a low-dimensional latent code per class,\n"
        "adapt there, decode into classifier weights",
        fontsize=10,
    )
    for ax in axes:
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_aspect("auto")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
        for side in ("left", "bottom", "top", "right"):
            ax.spines[side].set_visible(False)
    left.figure.suptitle("LEO vs MAML in one figure", fontsize=12, fontweight="bold")
    return axes


def _image_axis(
    ax, image: np.ndarray, title: str | None = None, color: str | None = None, fontsize: int = 7
) -> None:
    ax.imshow(image, cmap="gray_r", vmin=0, vmax=255)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    for spine in ax.spines.values():  # a thin frame on every side (notebook styles hide two)
        spine.set_visible(True)
        spine.set_color("0.6")
        spine.set_linewidth(0.8)
    if title:
        ax.set_title(title, fontsize=fontsize, color=color or "black")


def show_classes(splits: dict, n_classes: int = 6, per_class: int = 6, seed: int = 0):
    """A grid of example images: ``n_classes`` random classes of each split (rows grouped by
    split), ``per_class`` samples each. ``splits`` maps split name -> ImageSplit."""
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(seed)
    rows = [
        (name, c)
        for name, split in splits.items()
        for c in sorted(rng.choice(split.n_classes, min(n_classes, split.n_classes), replace=False))
    ]
    fig, axes = plt.subplots(
        len(rows), per_class, figsize=(per_class * 0.9, len(rows) * 1.1), squeeze=False
    )
    for (name, c), row in zip(rows, axes, strict=True):
        split = splits[name]
        images = split.images[split.labels == c][:per_class]
        for i, ax in enumerate(row):
            if i < len(images):
                _image_axis(ax, images[i])
            else:
                ax.axis("off")
        # the row's caption spans the row: a left-aligned title on its first image
        row[0].set_title(f"{name}: {split.class_names[c]}"[:60], fontsize=7, loc="left")
    fig.suptitle("Example classes per meta-split (each row: samples of one class)", fontsize=10)
    fig.subplots_adjust(
        left=0.02,
        right=0.98,
        bottom=0.02,
        top=1 - 0.6 / (len(rows) * 1.1),
        hspace=0.45,
        wspace=0.08,
    )
    return fig


def show_episode(
    images: np.ndarray,
    k_shot: int,
    predictions: np.ndarray | None = None,
    class_names: list[str] | None = None,
    max_queries: int = 5,
):
    """One task as images: ``images`` [N, K + V, H, W] (support first, as the sampler's rows),
    labels = row position. ``predictions`` [N, V] (optional) colours each query title green when
    correct, vermilion when wrong."""
    import matplotlib.pyplot as plt

    n, total = images.shape[:2]
    n_query = min(total - k_shot, max_queries)
    fig, axes = plt.subplots(
        n, k_shot + n_query, figsize=((k_shot + n_query) * 1.0, n * 1.1), squeeze=False
    )
    for label in range(n):
        for j in range(k_shot + n_query):
            ax = axes[label, j]
            if j < k_shot:
                _image_axis(ax, images[label, j], f"support, label {label}")
                for spine in ax.spines.values():
                    spine.set_visible(True)
                    spine.set_color(PALETTE[0])
                    spine.set_linewidth(2)
            else:
                title, color = f"query, label {label}", None
                if predictions is not None:
                    guess = int(predictions[label, j - k_shot])
                    color = PALETTE[2] if guess == label else PALETTE[3]
                    title = f"label {label}, pred {guess}"
                _image_axis(ax, images[label, j], title, color)
        if class_names is not None:
            import textwrap

            name = "\n".join(textwrap.wrap(class_names[label], 14)[:3])
            axes[label, 0].set_ylabel(name, fontsize=6, rotation=0, ha="right", va="center")
    fig.suptitle(f"A {n}-way {k_shot}-shot task: support (blue frame) and queries", fontsize=10)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------ training curves (notebook 06)
def plot_training_curves(
    history: dict, best_step: int | None = None, axes=None, total_steps: int | None = None
):
    """Meta-training curves from a run's ``metrics.json`` history: returns the two Axes.

    Left: the mean query loss of the meta-training batches (log scale; training mode: sampling
    and dropout). Right: their query accuracy, and the meta-val accuracy of the deterministic
    model with its 95% CI; a dashed line marks ``best_step`` (the model kept).
    """
    import matplotlib.pyplot as plt

    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    loss_ax, acc_ax = axes
    # a log window holding a skipped (non-finite) update has loss NaN, or None once in JSON
    train = [
        h for h in history.get("train", []) if h["loss"] is not None and np.isfinite(h["loss"])
    ]
    val = history.get("val", [])
    if train:
        steps = [h["step"] + 1 for h in train]
        loss_ax.plot(
            steps,
            [h["loss"] for h in train],
            color=PALETTE[0],
            label="meta-train query loss (D$^{val}$ of S$^{tr}$ tasks)",
        )
        acc_ax.plot(
            steps,
            [h["accuracy"] for h in train],
            color=PALETTE[0],
            label="meta-train tasks (training mode: dropout, sampling)",
        )
    if val:
        steps = np.array([h["step"] for h in val])
        accuracy = np.array([h["accuracy"] for h in val])
        ci = np.nan_to_num(np.array([h["ci95"] for h in val], dtype=float))
        acc_ax.fill_between(steps, accuracy - ci, accuracy + ci, color=PALETTE[1], alpha=0.25, lw=0)
        acc_ax.plot(
            steps,
            accuracy,
            "o-",
            ms=3,
            color=PALETTE[1],
            label="meta-val tasks (S$^{val}$, eval mode, 95% CI)",
        )
    if best_step is not None:
        acc_ax.axvline(
            best_step,
            color=PALETTE[3],
            ls="--",
            lw=1,
            label=f"best meta-val step ({best_step}): model kept",
        )
    loss_ax.set(
        title="Meta-training loss",
        xlabel="meta-training step",
        ylabel="query cross-entropy (log scale)",
        yscale="log",
    )
    acc_ax.set(
        title="Accuracy during meta-training", xlabel="meta-training step", ylabel="query accuracy"
    )
    if total_steps:
        for ax in axes:
            ax.set_xlim(0, total_steps)
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="best")
    return axes


class LiveTrainingCurves:
    """A ``training.train`` callback that redraws :func:`plot_training_curves` in place.

    In a notebook each call replaces the previous frame (``clear_output(wait=True)``), so the
    cell keeps one figure: the last frame. ``frames`` counts the redraws.
    """

    def __init__(self, total_steps: int | None = None, title: str | None = None):
        self.total_steps, self.title, self.frames = total_steps, title, 0

    def __call__(self, step: int, metrics: dict) -> None:
        import matplotlib.pyplot as plt
        from IPython.display import clear_output, display

        history = metrics["history"]
        best = max(history["val"], key=lambda h: h["accuracy"])["step"]
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
        plot_training_curves(history, best_step=best, axes=axes, total_steps=self.total_steps)
        fig.suptitle(f"{self.title or 'Meta-training'}: step {step}", fontsize=11)
        fig.tight_layout()
        clear_output(wait=True)
        display(fig)
        plt.close(fig)
        self.frames += 1


# --------------------------------------------------------------- the latent space (notebook 08)
def scatter_codes(
    ax,
    points: np.ndarray,
    groups: np.ndarray,
    names: list[str],
    title: str = "",
    size: float = 6,
    alpha: float = 0.6,
    xlabel: str = "",
    ylabel: str = "",
):
    """2-D points [M, 2] coloured by ``groups`` [M] (ints: index into ``names``; -1 = grey,
    drawn first, unlabelled). Returns the Axes."""
    points, groups = np.asarray(points), np.asarray(groups)
    rest = groups < 0
    if rest.any():
        ax.scatter(
            *points[rest].T, s=size * 0.6, color="0.8", alpha=0.5, lw=0, label="other classes"
        )
    for g, name in enumerate(names):
        mask = groups == g
        ax.scatter(
            *points[mask].T, s=size, color=PALETTE[g % len(PALETTE)], alpha=alpha, lw=0, label=name
        )
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.legend(fontsize=7, markerscale=2, loc="best")
    return ax


def plot_code_paths(
    ax,
    paths: np.ndarray,
    title: str = "Inner-loop paths of the class codes",
    xlabel: str = "PC 1",
    ylabel: str = "PC 2",
):
    """Inner-loop paths in 2-D: ``paths`` [T, S+1, N, 2] (tasks, steps, classes). Class n's path
    is drawn in colour n from a circle (z) to a square (z'). Returns the Axes."""
    paths = np.asarray(paths)
    for task in paths:
        for n in range(task.shape[1]):
            color = PALETTE[n % len(PALETTE)]
            ax.plot(*task[:, n].T, "-", color=color, lw=1, alpha=0.8)
            ax.plot(*task[0, n], "o", color=color, ms=5, mfc="white")
            ax.plot(*task[-1, n], "s", color=color, ms=5)
    handles = [
        ax.plot([], [], "o", color="0.3", mfc="white", ms=5)[0],
        ax.plot([], [], "s", color="0.3", ms=5)[0],
    ]
    handles += [ax.plot([], [], "-", color=PALETTE[n], lw=2)[0] for n in range(paths.shape[2])]
    ax.legend(
        handles,
        ["z (encoder)", "z' (adapted)"] + [f"label {n}" for n in range(paths.shape[2])],
        fontsize=7,
        loc="best",
    )
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    return ax


def plot_interpolation(ax, t: np.ndarray, probs: np.ndarray, a: int, b: int, title: str = ""):
    """Classifier along the line z_a -> z_b (``latent.interpolate_class_code``): probs
    [P, N, N] (true class, label). Returns the Axes."""
    ax.plot(
        t, probs[:, a, a], "-", color=PALETTE[0], lw=2, label=f"class {a}'s queries: P(label {a})"
    )
    ax.plot(
        t, probs[:, b, a], "--", color=PALETTE[1], lw=2, label=f"class {b}'s queries: P(label {a})"
    )
    ax.plot(
        t, probs[:, b, b], ":", color=PALETTE[2], lw=2, label=f"class {b}'s queries: P(label {b})"
    )
    ax.set(
        title=title or f"Moving label {a}'s code towards label {b}'s",
        xlabel=rf"$t$ (code of label {a} $= (1 - t)\,z_{a} + t\,z_{b}$)",
        ylabel="mean predicted probability",
        ylim=(0, 1),
    )
    ax.legend(fontsize=8, loc="best")
    return ax


def explorer_figure(trajectory, step: int, projection):  # noqa: ANN001 (latent types)
    """The latent explorer's picture of one task at inner ``step``: returns a Figure.

    ``trajectory`` is a ``latent.TaskTrajectory``, ``projection`` a ``latent.PCA`` fitted on
    its codes. Left: the class codes' paths in 2-D up to ``step``. Middle: the decoded weights w
    [N, D]. Right: the mean predicted probabilities on the queries (true class x label).
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 3.6), dpi=80)
    code_ax, w_ax, p_ax = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1, 1.3, 0.9]})
    points = projection(trajectory.z)  # [S+1, N, 2]
    n = points.shape[1]
    for c in range(n):
        color = PALETTE[c % len(PALETTE)]
        code_ax.plot(*points[:, c].T, "-", color=color, alpha=0.2, lw=1)
        code_ax.plot(*points[: step + 1, c].T, "-", color=color, lw=1.5)
        code_ax.plot(*points[0, c], "o", color=color, mfc="white", ms=5)
        code_ax.plot(*points[step, c], "s", color=color, ms=7, label=f"label {c}")
    code_ax.set(title=f"codes z (PCA), step {step}", xlabel="PC 1", ylabel="PC 2")
    code_ax.legend(fontsize=7, loc="best")
    w = trajectory.w[step]
    limit = np.abs(trajectory.w).max()
    image = w_ax.imshow(w, aspect="auto", cmap="PuOr", vmin=-limit, vmax=limit)
    fig.colorbar(image, ax=w_ax, fraction=0.05)
    w_ax.set(
        title="decoded weights w (one row per label)",
        xlabel="embedding dimension",
        ylabel="label",
        yticks=range(n),
    )
    w_ax.grid(False)
    probs = trajectory.query_probs[step].mean(axis=1)  # [N true, N label]
    p_ax.imshow(probs, cmap="cividis", vmin=0, vmax=1)
    for (i, j), value in np.ndenumerate(probs):
        p_ax.text(
            j,
            i,
            f"{value:.2f}",
            ha="center",
            va="center",
            fontsize=7,
            color="white" if value < 0.5 else "black",
        )
    p_ax.set(
        title=f"query predictions: accuracy {trajectory.query_accuracy[step]:.2f}",
        xlabel="predicted label (mean probability)",
        ylabel="true class",
        xticks=range(n),
        yticks=range(n),
    )
    p_ax.grid(False)
    fig.tight_layout()
    return fig


def plot_function_samples(
    ax,
    grid,
    functions,
    support_x,
    support_y,
    true_y=None,
    title: str = "",
    color: str | None = None,
    label: str = "sampled f",
):
    """The paper's Fig. 2 style on ``ax``: sampled functions ``functions`` [S, G] on ``grid``
    [G] as thin dotted lines, the true function ``true_y`` [G] (optional) in black, the K
    support points as vermilion circles with dashed vertical lines. Returns ``ax``."""
    grid = np.asarray(grid, dtype=float)
    color = color or PALETTE[0]
    for i, f in enumerate(np.asarray(functions, dtype=float)):
        ax.plot(grid, f, ":", lw=1.0, color=color, alpha=0.7, label=label if i == 0 else None)
    if true_y is not None:
        ax.plot(
            grid,
            np.asarray(true_y, dtype=float).ravel(),
            "-",
            lw=2,
            color="black",
            label="true function",
        )
    xs, ys = np.asarray(support_x, dtype=float).ravel(), np.asarray(support_y, dtype=float).ravel()
    for x in xs:
        ax.axvline(x, ls="--", lw=0.8, color=PALETTE[3], alpha=0.6)
    ax.plot(
        xs,
        ys,
        "o",
        ms=8,
        mfc="none",
        mew=2,
        color=PALETTE[3],
        label=f"support points (K = {len(xs)})",
    )
    ax.set(xlabel="x", ylabel="y", title=title, xlim=(grid.min(), grid.max()))
    ax.legend(fontsize=8, loc="best")
    return ax


def function_samples_figure(samples, support_x, support_y, true_y=None, title: str = ""):
    """Two panels in the paper's Fig. 2 style for one set of support points: functions sampled
    before (z ~ q(z | D^tr)) and after the latent inner loop (z'). ``samples`` is a
    :class:`leo_tutorial.regression.FunctionSamples`. Returns the Figure."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
    panels = [
        (samples.before, "before adaptation: $z \\sim q(z \\mid D^{tr})$", PALETTE[5]),
        (samples.after, "after the inner loop: $z'$", PALETTE[0]),
    ]
    for ax, (functions, name, color) in zip(axes, panels, strict=True):
        plot_function_samples(
            ax,
            samples.grid,
            functions,
            support_x,
            support_y,
            true_y,
            f"{len(functions)} sampled functions, {name}",
            color,
        )
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def figure_png(fig, dpi: float | None = None) -> bytes:
    """A matplotlib Figure as PNG bytes, without a timestamp or version (for an
    ``ipywidgets.Image`` or an atomic file write)."""
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi or "figure", metadata={"Software": None})
    return buffer.getvalue()
