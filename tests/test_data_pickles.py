"""Official embedding pickles (LEO_SPEC §1.1): round trips, official index checks, and refusing
pickles that would run code."""

import os
import pickle

import numpy as np
import pytest

from leo_tutorial.data import (
    leo_pickle_path,
    load_leo_pickles,
    make_leo_key,
    read_leo_split,
    safe_load_pickle,
    write_leo_pickle,
)
from leo_tutorial.errors import UserError


def fake_split(class_names, per_class=3, dim=4, seed=0):
    """Embeddings [C * per_class, dim] and official keys, rows in a shuffled order."""
    rng = np.random.default_rng(seed)
    keys = [make_leo_key(c, i) for c in class_names for i in range(per_class)]
    order = rng.permutation(len(keys))
    emb = rng.standard_normal((len(keys), dim)).astype(np.float32)
    return emb, [keys[i] for i in order]


def write_layout(root, dataset="miniImageNet", crop="center", bytes_keys=False):
    names = {"train": ["n01", "n02", "n03"], "val": ["n10", "n11"], "test": ["n20", "n21"]}
    for i, (split, classes) in enumerate(names.items()):
        emb, keys = fake_split(classes, seed=i)
        path = leo_pickle_path(root, dataset, crop, split)
        write_leo_pickle(path, emb, keys, bytes_keys=bytes_keys)
    return names


@pytest.mark.parametrize("bytes_keys", [False, True])
def test_round_trip(tmp_path, bytes_keys):
    emb, keys = fake_split(["n03", "n01", "n02"])
    path = write_leo_pickle(
        tmp_path / "train_embeddings.pkl", emb, keys, labels=np.arange(9), bytes_keys=bytes_keys
    )
    raw = safe_load_pickle(path)
    assert isinstance(raw["keys"][0], bytes if bytes_keys else str)
    split = read_leo_split(path)
    np.testing.assert_array_equal(split.embeddings, emb)  # rows keep the file's order
    assert split.class_names == ["n01", "n02", "n03"]  # sorted, deterministic
    assert split.image_names == [k.split("-")[2] for k in keys]
    expected = [["n01", "n02", "n03"].index(k.split("-")[1]) for k in keys]
    assert split.labels.tolist() == expected
    assert split.images_per_class.tolist() == [3, 3, 3]


def test_make_leo_key():
    assert make_leo_key("n01532829", 7) == "x-n01532829-n01532829_00007.JPEG"
    assert make_leo_key("a", 3, prefix="train") == "train-a-a_00003.JPEG"
    for bad in ("n-1", "n_1", ""):
        with pytest.raises(UserError, match="without '-' or '_'"):
            make_leo_key(bad, 0)
    with pytest.raises(UserError, match="prefix"):
        make_leo_key("a", 0, prefix="x-y")
    with pytest.raises(UserError, match=">= 0"):
        make_leo_key("a", -1)


def test_float64_and_protocol5_pickles_load(tmp_path):
    emb, keys = fake_split(["a", "b"])
    path = tmp_path / "p5.pkl"
    with open(path, "wb") as f:
        pickle.dump({"embeddings": emb.astype(np.float64), "keys": np.array(keys)}, f, protocol=5)
    split = read_leo_split(path)
    assert split.embeddings.dtype == np.float32
    np.testing.assert_allclose(split.embeddings, emb)


def test_python2_pickle_loads(tmp_path):
    """A hand-assembled Python 2 pickle (py2 str = SHORT_BINSTRING, numpy.core names)."""

    def s(b):
        return b"U" + bytes([len(b)]) + b

    data = np.array([[1.5, -2.0], [0.25, 4.0]], dtype="<f4").tobytes()
    blob = (
        b"\x80\x02}q\x00(" + s(b"embeddings")
        + b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + s(b"b") + b"\x87R("
        + b"K\x01K\x02K\x02\x86cnumpy\ndtype\n" + s(b"f4") + b"K\x00K\x01\x87R(K\x03" + s(b"<")
        + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89" + s(data) + b"tb"
        + s(b"keys") + b"](" + s(b"x-n01-n01_1.JPEG") + s(b"x-n01-n01_2.JPEG") + b"e"
        + b"u."
    )  # fmt: skip
    path = tmp_path / "py2.pkl"
    path.write_bytes(blob)
    split = read_leo_split(path)
    np.testing.assert_array_equal(split.embeddings, [[1.5, -2.0], [0.25, 4.0]])
    assert split.class_names == ["n01"] and split.image_names == ["n01_1.JPEG", "n01_2.JPEG"]


def test_load_layout_and_train_on_val(tmp_path):
    names = write_layout(tmp_path)
    bank = load_leo_pickles(tmp_path)
    assert bank.name == "miniImageNet/center" and bank.dim == 4
    for split, classes in names.items():
        assert bank.split(split).class_names == classes
    merged = load_leo_pickles(tmp_path, train_on_val=True)
    train = merged.split("train")
    assert train.class_names == names["train"] + names["val"]
    assert train.n_images == 15 and train.images_per_class.tolist() == [3] * 5
    both = [bank.split("train").embeddings, bank.split("val").embeddings]
    np.testing.assert_array_equal(train.embeddings, np.concatenate(both))
    assert merged.split("val").class_names == names["val"]  # val stays as it is


def test_multiview_bytes_keys_layout(tmp_path):
    write_layout(tmp_path, crop="multiview", bytes_keys=True)
    bank = load_leo_pickles(tmp_path, crop="multiview")
    assert bank.name == "miniImageNet/multiview"
    assert bank.split("test").class_names == ["n20", "n21"]


def test_path_and_layout_errors(tmp_path):
    assert leo_pickle_path("d", "tieredImageNet", "center", "val").as_posix() == (
        "d/tieredImageNet/center/val_embeddings.pkl"
    )
    with pytest.raises(UserError, match="only center-crop embeddings; use --crop center"):
        leo_pickle_path(tmp_path, "tieredImageNet", "multiview", "train")
    with pytest.raises(UserError, match="is not a folder name"):
        load_leo_pickles(tmp_path, dataset="../omniglot")
    with pytest.raises(UserError, match="omniglot"):  # an exported name: the files are missing
        load_leo_pickles(tmp_path, dataset="omniglot")
    with pytest.raises(UserError, match="unknown embedding crop"):
        load_leo_pickles(tmp_path, crop="centre")
    with pytest.raises(UserError) as err:
        load_leo_pickles(tmp_path / "nowhere")
    message = str(err.value)
    assert "train_embeddings.pkl" in message and "embeddings.zip" in message
    assert "storage.googleapis.com/leo-embeddings" in message and "--data synthetic" in message


class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"echo pwned > {self.marker}",))


class Harmless:  # even a plain user class is refused: importing its module could run code
    pass


@pytest.mark.parametrize("payload", ["system", "class", "eval"])
def test_code_executing_pickles_are_refused(tmp_path, payload):
    marker = tmp_path / "pwned.txt"
    evil = {
        "system": RunsCode(marker),
        "class": Harmless(),
        "eval": _EvalPayload(marker),
    }[payload]
    path = tmp_path / "train_embeddings.pkl"
    emb, keys = fake_split(["a"])
    with open(path, "wb") as f:
        pickle.dump({"embeddings": emb, "keys": keys, "extra": evil}, f, protocol=2)
    with pytest.raises(
        UserError,
        match=r"refusing to load .*train_embeddings\.pkl: it would "
        r"import \S+, which could run code",
    ):
        read_leo_split(path)
    assert not marker.exists()


class _EvalPayload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def write_raw(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)
    return path


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda e, k: (e, ["x-n01_00000.JPEG"] + k[1:]), "three fields separated by '-'"),
        (lambda e, k: (e, ["x-n01-a-n01_00000.JPEG"] + k[1:]), "three fields"),
        (lambda e, k: (e, ["x-n01-n02_00000.JPEG"] + k[1:]), "does not start with its class"),
        (lambda e, k: (e, [k[1]] + k[1:]), "appears 2 times"),
        (lambda e, k: (e[:, 0], k), "2-D array"),
        (lambda e, k: (e[None], k), "2-D array"),
        (lambda e, k: (e[:-1], k), "embedding rows but 6 keys"),
        (lambda e, k: (e.astype(np.int32), k), "floating point"),
        (lambda e, k: (np.full_like(e, np.nan), k), "NaN"),
        (lambda e, k: (e, [1] * len(k)), "not a string"),
    ],
)
def test_malformed_contents(tmp_path, mutate, match):
    emb, keys = fake_split(["n01", "n02"])
    emb, keys = mutate(emb, keys)
    path = write_raw(tmp_path / "val_embeddings.pkl", {"embeddings": emb, "keys": keys})
    with pytest.raises(UserError, match=match) as err:
        read_leo_split(path)
    assert "val_embeddings.pkl" in str(err.value)


def test_not_a_dict_truncated_and_missing(tmp_path):
    path = write_raw(tmp_path / "a.pkl", [1, 2, 3])
    with pytest.raises(UserError, match="expected a dict with 'embeddings' and 'keys'"):
        read_leo_split(path)
    emb, keys = fake_split(["n01"], per_class=50, dim=64)
    full = write_leo_pickle(tmp_path / "b.pkl", emb, keys).read_bytes()
    truncated = tmp_path / "truncated.pkl"
    truncated.write_bytes(full[: len(full) // 2])
    with pytest.raises(UserError, match=r"cannot read .*truncated\.pkl.*truncated or corrupt"):
        read_leo_split(truncated)
    garbage = tmp_path / "garbage.pkl"
    garbage.write_bytes(b"not a pickle at all")
    with pytest.raises(UserError, match="garbage.pkl"):
        read_leo_split(garbage)
    with pytest.raises(UserError, match="no such file"):
        read_leo_split(tmp_path / "missing.pkl")


def test_write_validation(tmp_path):
    with pytest.raises(UserError, match="one per row"):
        write_leo_pickle(tmp_path / "x.pkl", np.zeros((2, 3)), ["x-a-a_1"])
    with pytest.raises(UserError, match="2-D"):
        write_leo_pickle(tmp_path / "x.pkl", np.zeros(3), ["x-a-a_1"] * 3)
    assert not (tmp_path / "x.pkl").exists()
