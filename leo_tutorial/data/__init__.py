"""Data: feature banks, episode sampling and the data sources (LEO_SPEC §1).

Data flows one way: a source (official pickles, synthetic, ...) -> :class:`FeatureBank` of
:class:`FeatureSplit` -> :class:`EpisodeSampler` -> :class:`TaskBatch` of tasks ``[B, N, K, D]``.
"""

from leo_tutorial.data.bank import SPLIT_NAMES, FeatureBank, FeatureSplit
from leo_tutorial.data.episodes import EpisodeSampler, TaskBatch, l2_normalise
from leo_tutorial.data.glyphs import GlyphConfig, glyph_classes, render_glyphs
from leo_tutorial.data.images import ImageDataset, ImageSplit
from leo_tutorial.data.leo_pickles import (
    CROPS,
    DATASETS,
    EMBEDDINGS_URL,
    leo_pickle_path,
    load_leo_pickles,
    make_leo_key,
    read_leo_split,
    safe_load_pickle,
    write_leo_pickle,
)
from leo_tutorial.data.omniglot import omniglot_alphabet_split, read_omniglot
from leo_tutorial.data.synthetic import (
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
    "glyph_classes",
    "l2_normalise",
    "leo_pickle_path",
    "load_leo_pickles",
    "make_leo_key",
    "make_synthetic_bank",
    "make_synthetic_split",
    "omniglot_alphabet_split",
    "read_leo_split",
    "read_omniglot",
    "render_glyphs",
    "safe_load_pickle",
    "subspace_basis",
    "write_leo_pickle",
]
