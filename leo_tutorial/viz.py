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
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442",
           "#000000"]


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

    mpl.rcParams.update({
        "figure.figsize": (6.4, 4.0), "figure.dpi": 90, "savefig.dpi": 90,
        "axes.prop_cycle": mpl.cycler(color=PALETTE), "axes.grid": True, "grid.alpha": 0.3,
        "axes.spines.top": False, "axes.spines.right": False, "font.size": 10,
        "image.cmap": "cividis",
        # Identical bytes for identical figures (no timestamps / software versions).
        "svg.hashsalt": "leo-tutorial",
    })
    try:  # inline PNG (not retina/SVG) so committed notebooks stay small and stable
        from matplotlib_inline.backend_inline import set_matplotlib_formats

        set_matplotlib_formats("png")
    except ImportError:  # outside IPython
        pass
