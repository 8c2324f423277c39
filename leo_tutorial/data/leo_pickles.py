"""The official LEO embedding pickles (LEO_SPEC §1.1), read as untrusted input.

Layout: ``<data_dir>/<dataset>/<crop>/<split>_embeddings.pkl``, each a dict with
``"embeddings"`` ``[n_images, 640]`` and ``"keys"`` (one ``<ignored>-<class>-<image_file>`` string
per row; bytes in the multiview files). A pickle can run arbitrary code when loaded, so
:func:`safe_load_pickle` only lets through the few numpy constructors that plain arrays need.
"""

from __future__ import annotations

import collections
import importlib
import json
import os
import pickle
from collections import Counter
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError
from ..io import atomic_write, atomic_write_json
from .bank import SPLIT_NAMES, FeatureBank, FeatureSplit

EMBEDDINGS_URL = "http://storage.googleapis.com/leo-embeddings/embeddings.zip"
DATASETS = ("miniImageNet", "tieredImageNet")
CROPS = ("center", "multiview")


def leo_pickle_path(data_dir: str | os.PathLike, dataset: str, crop: str, split: str) -> Path:
    """``<data_dir>/<dataset>/<crop>/<split>_embeddings.pkl``, the official layout (§1.1).

    ``dataset`` is one of the official :data:`DATASETS` or the folder name of embeddings
    exported in the same layout (:func:`export_leo_pickles`, e.g. glyphs).
    """
    if not dataset or any(c in dataset for c in "/\\") or dataset in (".", ".."):
        raise UserError(
            f"dataset {dataset!r} is not a folder name; use one of "
            f"{', '.join(DATASETS)} or the name of an exported dataset"
        )
    if crop not in CROPS:
        raise UserError(f"unknown embedding crop {crop!r}; use one of {', '.join(CROPS)}")
    if dataset == "tieredImageNet" and crop != "center":
        raise UserError("tieredImageNet has only center-crop embeddings; use --crop center")
    if split not in SPLIT_NAMES:
        raise UserError(f"unknown split {split!r}; use one of {', '.join(SPLIT_NAMES)}")
    return Path(data_dir) / dataset / crop / f"{split}_embeddings.pkl"


# ---------------------------------------------------------------------------------------------
# Loading without executing code


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """Stand-in for ``_codecs.encode``, which protocol-2 pickles use to store raw bytes."""
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"unexpected byte encoding {encoding!r}")
    return text.encode("latin1")


def _numpy_attr(module: str, name: str) -> Any:
    """``numpy._core.<module>.<name>`` (numpy >= 2) or ``numpy.core.<module>.<name>`` (1.x)."""
    for package in ("numpy._core", "numpy.core"):
        try:
            return getattr(importlib.import_module(f"{package}.{module}"), name)
        except (ImportError, AttributeError):
            continue
    raise pickle.UnpicklingError(f"this numpy has no {module}.{name}")


# (module, name) a pickle of plain numpy arrays may reference -> how to get the object.
# numpy 1.x writes "numpy.core.*", numpy 2 "numpy._core.*"; both resolve to this numpy's version.
_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("_codecs", "encode"): lambda: _latin1_encode,
    ("collections", "OrderedDict"): lambda: collections.OrderedDict,
}
for _package in ("numpy.core", "numpy._core"):
    for _module, _name in [("multiarray", "_reconstruct"), ("multiarray", "scalar"),
                           ("numeric", "_frombuffer")]:  # fmt: skip
        _ALLOWED_GLOBALS[(f"{_package}.{_module}", _name)] = partial(_numpy_attr, _module, _name)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals plain numpy data needs (nothing is imported
    by name from the file)."""

    def __init__(self, file: Any, path: Path) -> None:
        super().__init__(file, encoding="latin1")
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        getter = _ALLOWED_GLOBALS.get((module, name))
        if getter is None:
            raise UserError(
                f"refusing to load {self._path}: it would import {module}.{name}, which could "
                "run code; only plain numpy data is allowed"
            )
        return getter()

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not allowed")


def safe_load_pickle(path: str | os.PathLike) -> Any:
    """Unpickle ``path`` (Python 2 or 3 pickle, ``encoding="latin1"``) allowing only numpy
    arrays, dtypes, scalars and builtin containers; anything else raises :class:`UserError`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no such file: {path}; check the path")
    try:
        with open(path, "rb") as f:
            return _NumpyOnlyUnpickler(f, path).load()
    except UserError:
        raise
    except Exception as err:  # truncated or corrupt file: any unpickling error
        raise UserError(
            f"cannot read {path}: not a valid pickle ({type(err).__name__}: {err}); "
            "the file is truncated or corrupt, replace it with a fresh copy"
        ) from None


# ---------------------------------------------------------------------------------------------
# Official index semantics


def _decode(key: Any, source: str, i: int) -> str:
    if isinstance(key, bytes):  # multiview keys, and numpy "S" arrays
        try:
            return key.decode("utf-8")
        except UnicodeDecodeError:
            return key.decode("latin1")
    if isinstance(key, str):
        return str(key)
    raise UserError(
        f"{source}: key #{i} is a {type(key).__name__}, not a string; "
        "keys must be '<prefix>-<class>-<image file>' strings"
    )


def _raw_arrays(raw: Any, source: str) -> tuple[np.ndarray, list[str]]:
    """Check the pickled dict and return float32 embeddings ``[n, D]`` and decoded keys."""
    if not isinstance(raw, dict) or "embeddings" not in raw or "keys" not in raw:
        found = sorted(map(str, raw)) if isinstance(raw, dict) else type(raw).__name__
        raise UserError(
            f"{source}: expected a dict with 'embeddings' and 'keys', found {found}; "
            "use the official LEO embedding files (or write_leo_pickle)"
        )
    emb = raw["embeddings"]
    if not isinstance(emb, np.ndarray) or emb.ndim != 2:
        shape = getattr(emb, "shape", type(emb).__name__)
        raise UserError(
            f"{source}: 'embeddings' must be a 2-D array [n_images, dim], got {shape}; "
            "the file is not an official LEO embedding pickle"
        )
    if not np.issubdtype(emb.dtype, np.floating):
        raise UserError(
            f"{source}: 'embeddings' must be floating point, got dtype {emb.dtype}; "
            "the file is not an official LEO embedding pickle"
        )
    keys = raw["keys"]
    if isinstance(keys, (str, bytes)) or np.ndim(keys) != 1:
        raise UserError(
            f"{source}: 'keys' must be a 1-D list of strings, got shape {np.shape(keys)}; "
            "the file is not an official LEO embedding pickle"
        )
    keys = [_decode(k, source, i) for i, k in enumerate(keys)]
    if len(keys) != emb.shape[0]:
        raise UserError(
            f"{source}: {emb.shape[0]} embedding rows but {len(keys)} keys; "
            "the file is corrupt, replace it with a fresh copy"
        )
    return emb.astype(np.float32), keys


def _index(embeddings: np.ndarray, keys: list[str], source: str) -> FeatureSplit:
    """Parse ``<ignored>-<class>-<image_file>`` keys into a FeatureSplit (official checks:
    image file starts with ``<class>_``, image files unique). Classes are sorted by name."""
    class_of_row, image_names = [], []
    for i, key in enumerate(keys):
        fields = key.split("-")
        if len(fields) != 3:
            raise UserError(
                f"{source}: key #{i} {key!r} does not have the form "
                "'<prefix>-<class>-<image file>' (three fields separated by '-'); fix the keys"
            )
        _, class_name, image_file = fields
        if image_file.split("_")[0] != class_name:
            raise UserError(
                f"{source}: key #{i} {key!r}: image file {image_file!r} does not start with "
                f"its class {class_name!r} followed by '_'; fix the keys"
            )
        class_of_row.append(class_name)
        image_names.append(image_file)
    if len(set(image_names)) != len(image_names):
        dup, count = Counter(image_names).most_common(1)[0]
        raise UserError(
            f"{source}: image file {dup!r} appears {count} times; every image must appear once, "
            "remove the duplicate rows"
        )
    class_names = sorted(set(class_of_row))
    label_of = {name: c for c, name in enumerate(class_names)}
    labels = np.array([label_of[name] for name in class_of_row], dtype=np.int64)
    try:
        return FeatureSplit(embeddings, labels, class_names, image_names)
    except UserError as err:
        raise UserError(f"{source}: {err}") from None


def read_leo_split(path: str | os.PathLike) -> FeatureSplit:
    """One official ``<split>_embeddings.pkl`` as a FeatureSplit (LEO_SPEC §1.1).

    Rows keep the file's order; labels follow the sorted class names; ``image_names`` are the
    image files. A ``"labels"`` entry in the file is ignored, as in the official code.
    """
    path = Path(path)
    emb, keys = _raw_arrays(safe_load_pickle(path), str(path))
    return _index(emb, keys, str(path))


def load_leo_pickles(
    data_dir: str | os.PathLike,
    dataset: str = "miniImageNet",
    crop: str = "center",
    train_on_val: bool = False,
) -> FeatureBank:
    """The train/val/test splits of the official embeddings as a FeatureBank ``"<dataset>/<crop>"``.

    ``train_on_val=True`` appends every val image (and so every val class) to train, as the paper
    did for its final numbers (LEO_SPEC §1.4, §3.4); the val split stays as it is.
    """
    paths = {split: leo_pickle_path(data_dir, dataset, crop, split) for split in SPLIT_NAMES}
    for path in paths.values():
        if not path.is_file():
            raise UserError(
                f"missing {path}: unpack the official embeddings.zip ({EMBEDDINGS_URL}) so that "
                f"{Path(data_dir) / dataset / crop} holds train/val/test_embeddings.pkl, "
                "or use --data synthetic"
            )
    raw = {s: _raw_arrays(safe_load_pickle(p), str(p)) for s, p in paths.items()}
    splits = {s: _index(emb, keys, str(paths[s])) for s, (emb, keys) in raw.items()}
    if train_on_val:
        (tr_emb, tr_keys), (va_emb, va_keys) = raw["train"], raw["val"]
        if tr_emb.shape[1] != va_emb.shape[1]:
            raise UserError(
                f"train and val embeddings differ in dimension ({tr_emb.shape[1]} vs "
                f"{va_emb.shape[1]}); use files from the same embedding release"
            )
        source = f"{paths['train']} + {paths['val'].name}"
        splits["train"] = _index(np.concatenate([tr_emb, va_emb]), tr_keys + va_keys, source)
    return FeatureBank(splits, name=f"{dataset}/{crop}")


# ---------------------------------------------------------------------------------------------
# Writing


def make_leo_key(class_name: str, image_index: int, prefix: str = "x") -> str:
    """A valid official key ``"<prefix>-<class>-<class>_<index:05d>.JPEG"``.

    The class name may not contain ``-`` or ``_`` (they separate the key's fields), nor the prefix
    ``-``. Example: ``make_leo_key("n01532829", 7) == "x-n01532829-n01532829_00007.JPEG"``.
    """
    if not class_name or "-" in class_name or "_" in class_name:
        raise UserError(
            f"class name {class_name!r} cannot be used in a LEO key; "
            "use a non-empty name without '-' or '_'"
        )
    if "-" in prefix:
        raise UserError(f"key prefix {prefix!r} contains '-'; use a prefix without '-'")
    if isinstance(image_index, bool) or not isinstance(image_index, (int, np.integer)):
        raise UserError(f"image index must be an int, got {image_index!r}")
    if image_index < 0:
        raise UserError(f"image index must be >= 0, got {image_index}")
    return f"{prefix}-{class_name}-{class_name}_{int(image_index):05d}.JPEG"


def write_leo_pickle(
    path: str | os.PathLike,
    embeddings: np.ndarray,
    keys: Sequence[str],
    labels: np.ndarray | None = None,
    bytes_keys: bool = False,
) -> Path:
    """Write ``{"embeddings": float32 [n, D], "keys": [n], ("labels": [n])}`` atomically, in the
    official layout (pickle protocol 2, readable by Python 2 and 3).

    Keys are stored as given (an object array of str, or a bytes array if ``bytes_keys``, like the
    multiview files); :func:`read_leo_split` checks their format.
    """
    emb = np.asarray(embeddings, dtype=np.float32)
    if emb.ndim != 2:
        raise UserError(f"embeddings must be 2-D [n_images, dim], got shape {emb.shape}")
    keys = [str(k) for k in keys]
    if len(keys) != emb.shape[0]:
        raise UserError(f"{len(keys)} keys for {emb.shape[0]} embedding rows; give one per row")
    if bytes_keys:
        key_array = np.array([k.encode("utf-8") for k in keys])
    else:
        key_array = np.empty(len(keys), dtype=object)
        key_array[:] = keys
    obj: dict[str, np.ndarray] = {"embeddings": emb, "keys": key_array}
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (emb.shape[0],):
            raise UserError(f"labels must have shape ({emb.shape[0]},), got {labels.shape}")
        obj["labels"] = labels
    return atomic_write(path, lambda f: pickle.dump(obj, f, protocol=2))


CLASS_INDEX = "classes.json"  # next to exported pickles: safe class id -> original class name


# ---------------------------------------------------------------------------------------------
# Exporting a feature bank in the official layout (and reading it back)


def class_ids(bank: FeatureBank) -> dict[str, list[str]]:
    """Per split, an id ``c00000, c00001, ...`` for each class (numbered over train, val, test in
    order; fixed width, so sorting the ids keeps the label order). Official keys cannot hold the
    original names, which may contain ``-`` or ``_``."""
    total = sum(s.n_classes for s in bank.splits.values())
    width = max(5, len(str(total - 1)))
    ids, next_id = {}, 0
    for name in SPLIT_NAMES:
        if name in bank.splits:
            n = bank.splits[name].n_classes
            ids[name] = [f"c{i:0{width}d}" for i in range(next_id, next_id + n)]
            next_id += n
    return ids


def export_leo_pickles(
    bank: FeatureBank, out_dir: str | os.PathLike, dataset: str | None = None, crop: str = "center"
) -> Path:
    """Write ``<out_dir>/<dataset>/<crop>/{train,val,test}_embeddings.pkl`` in the official layout
    (keys ``x-<class id>-<class id>_<index>.JPEG``) and ``classes.json`` beside them (class id ->
    original name per split, and the bank's name). ``dataset`` defaults to the part of the bank's
    name before ``/`` (``"glyphs/convnet4"`` -> ``"glyphs"``). Returns the folder of the pickles.
    """
    dataset = dataset or bank.name.split("/")[0]
    if not dataset or any(c in dataset for c in "/\\") or dataset in (".", ".."):
        raise UserError(f"dataset folder name {dataset!r} is not a plain name; pass dataset=...")
    folder = Path(out_dir) / dataset / crop
    ids = class_ids(bank)
    index: dict[str, Any] = {"source": bank.name, "dim": bank.dim, "splits": {}}
    for name, split in bank.splits.items():
        counters = np.zeros(split.n_classes, dtype=np.int64)
        keys = []
        for label in split.labels:
            keys.append(make_leo_key(ids[name][label], int(counters[label])))
            counters[label] += 1
        write_leo_pickle(folder / f"{name}_embeddings.pkl", split.embeddings, keys, split.labels)
        index["splits"][name] = dict(zip(ids[name], split.class_names, strict=True))
    atomic_write_json(folder / CLASS_INDEX, index)
    return folder


def read_exported_pickles(folder: str | os.PathLike) -> FeatureBank:
    """Read back a folder written by :func:`export_leo_pickles` (each file through the official
    reader, :func:`~leo_tutorial.data.read_leo_split`), restoring the original class names."""
    folder = Path(folder)
    try:
        index = json.loads((folder / CLASS_INDEX).read_text(encoding="utf-8"))
        names_of = index["splits"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(
            f"cannot read {folder / CLASS_INDEX} ({type(err).__name__}); export the "
            "features again with export_leo_pickles"
        ) from None
    splits = {}
    for name in names_of:
        split = read_leo_split(folder / f"{name}_embeddings.pkl")
        try:
            class_names = [names_of[name][cid] for cid in split.class_names]
        except KeyError as err:
            raise UserError(
                f"{folder / CLASS_INDEX} does not list class {err}; export the "
                "features again with export_leo_pickles"
            ) from None
        splits[name] = FeatureSplit(split.embeddings, split.labels, class_names, split.image_names)
    return FeatureBank(splits, name=str(index.get("source", folder.parent.name)))
