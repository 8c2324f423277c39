"""Data: feature banks, episode sampling and the readers and generators of every source
(LEO_SPEC §1).

Data flows one way: a source (official pickles, synthetic, ...) -> :class:`FeatureBank` of
:class:`FeatureSplit` -> :class:`EpisodeSampler` -> :class:`TaskBatch` of tasks ``[B, N, K, D]``.
The registry that names the sources (``--data``) is :mod:`leo_tutorial.sources`; image sources
are embedded by stage 1 (:mod:`leo_tutorial.features`), which this package never imports.
"""

from .bank import SPLIT_NAMES, FeatureBank, FeatureSplit
from .episodes import EpisodeSampler, TaskBatch, l2_normalise
from .glyphs import GlyphConfig, glyph_classes, render_glyphs
from .images import ImageDataset, ImageSplit
from .leo_pickles import (
    CROPS,
    DATASETS,
    EMBEDDINGS_URL,
    export_leo_pickles,
    leo_pickle_path,
    load_leo_pickles,
    make_leo_key,
    read_exported_pickles,
    read_leo_split,
    safe_load_pickle,
    write_leo_pickle,
)
from .omniglot import omniglot_alphabet_split, read_omniglot
from .synthetic import (
    SyntheticConfig,
    bayes_accuracy,
    make_synthetic_bank,
    make_synthetic_split,
    subspace_basis,
)

__all__ = [
    "CROPS",
    "DATASETS",
    "EMBEDDINGS_URL",
    "SPLIT_NAMES",
    "EpisodeSampler",
    "FeatureBank",
    "FeatureSplit",
    "GlyphConfig",
    "ImageDataset",
    "ImageSplit",
    "SyntheticConfig",
    "TaskBatch",
    "bayes_accuracy",
    "export_leo_pickles",
    "glyph_classes",
    "l2_normalise",
    "leo_pickle_path",
    "load_leo_pickles",
    "make_leo_key",
    "make_synthetic_bank",
    "make_synthetic_split",
    "omniglot_alphabet_split",
    "read_exported_pickles",
    "read_leo_split",
    "read_omniglot",
    "render_glyphs",
    "safe_load_pickle",
    "subspace_basis",
    "write_leo_pickle",
]
