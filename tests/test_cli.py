"""The `leo-tutorial` command end to end, and every user-error path: one line, exit 2, no files."""

import json
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from leo_tutorial.cli import main
from leo_tutorial.config import PRESETS
from leo_tutorial.data import leo_pickle_path, make_leo_key, write_leo_pickle

FAST = [
    "--steps",
    "150",
    "--val-every",
    "50",
    "--val-tasks",
    "100",
    "--test-tasks",
    "200",
    "--eval-queries",
    "15",
    "--no-progress",
]


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One real CLI training run on the default synthetic embeddings (640-d, 64/16/20)."""
    out = tmp_path_factory.mktemp("runs") / "synthetic"
    code = main(
        ["train", "--data", "synthetic", "--way", "5", "--shot", "1", *FAST, "--out", str(out)]
    )
    assert code == 0
    return out


def test_train_learns_and_reports_a_test_accuracy(trained):
    test = json.loads((trained / "test.json").read_text())
    assert test["tasks"] == 200 and test["way"] == 5 and test["shot"] == 1
    assert test["accuracy"] > 0.45  # chance 0.20; Bayes-optimal 0.69 (150 steps only)
    assert 0 < test["ci95"] < 0.05
    record = json.loads((trained / "run.json").read_text())
    chosen = {k: record["leo_config"][k] for k in PRESETS["cpu-1shot"]}
    assert chosen == PRESETS["cpu-1shot"]  # --preset auto picked "cpu-1shot" (a short schedule)


def test_evaluate_json_reproduces_the_final_test(trained, capsys):
    code, out, err = cli(
        capsys, "evaluate", trained, "--split", "test", "--tasks", 200, "--queries", 15, "--json"
    )
    assert code == 0
    result = json.loads(out)  # exactly one JSON object on stdout
    assert {"accuracy", "ci95", "tasks", "way", "shot", "split"} <= set(result)
    test = json.loads((trained / "test.json").read_text())
    assert result["accuracy"] == test["accuracy"] and result["split"] == "test"
    code, out, _ = cli(capsys, "evaluate", trained, "--split", "val", "--tasks", 20)
    assert code == 0 and "val accuracy" in out and "15 queries per class" in out  # run's setting


def test_info_shows_configuration_and_best_validation(trained, capsys):
    code, out, _ = cli(capsys, "info", trained)
    outer_lr = PRESETS["cpu-1shot"]["outer_lr"]
    assert code == 0 and "best meta-val accuracy" in out and f"outer_lr={outer_lr}" in out
    code, out, _ = cli(capsys, "info", trained, "--json")
    info = json.loads(out)
    metrics = json.loads((trained / "metrics.json").read_text())
    assert info["best_val_accuracy"] == max(h["accuracy"] for h in metrics["val"])
    assert info["steps_done"] == 150


@pytest.mark.slow
def test_console_script_is_installed_and_runs(tmp_path):
    exe = subprocess.run(
        [sys.executable, "-m", "leo_tutorial.cli", "--help"], capture_output=True, text=True
    )
    assert exe.returncode == 0 and "train" in exe.stdout and "evaluate" in exe.stdout


@pytest.mark.parametrize("command", ["train", "compare", "tune"])
def test_help_shows_defaults_but_not_none(command, capsys):
    assert main([command, "--help"]) == 0
    text = capsys.readouterr().out
    assert "(default: None)" not in text
    assert "(default: 5)" in text  # --way keeps its default


@pytest.mark.slow
def test_resume_through_the_cli_equals_one_long_run(tmp_path, capsys):
    args = [
        "train",
        "--data",
        "synthetic",
        "--val-every",
        "10",
        "--val-tasks",
        "20",
        "--test-tasks",
        "20",
        "--eval-queries",
        "5",
        "--no-progress",
    ]
    assert cli(capsys, *args, "--steps", 20, "--out", tmp_path / "long")[0] == 0
    assert cli(capsys, *args, "--steps", 10, "--out", tmp_path / "cut")[0] == 0
    assert cli(capsys, *args, "--steps", 20, "--out", tmp_path / "cut", "--resume")[0] == 0
    a = torch.load(tmp_path / "long" / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def _official_pickles(
    root, classes=(8, 6, 6), per_class=30, dim=640, bytes_keys=False, dataset="miniImageNet"
):
    rng = np.random.default_rng(0)
    for split, n in zip(("train", "val", "test"), classes, strict=True):
        names = [f"n{split[:2]}{c:05d}" for c in range(n)]
        keys = [make_leo_key(name, i) for name in names for i in range(per_class)]
        path = leo_pickle_path(root, dataset, "center", split)
        write_leo_pickle(
            path,
            rng.standard_normal((len(keys), dim)).astype(np.float32),
            keys,
            bytes_keys=bytes_keys,
        )
    return root


def test_train_on_official_pickles(tmp_path, capsys):
    root = _official_pickles(tmp_path / "embeddings")
    code, out, err = cli(
        capsys,
        "train",
        "--data",
        "leo-pickles",
        "--data-dir",
        root,
        "--steps",
        3,
        "--val-every",
        2,
        "--val-tasks",
        4,
        "--test-tasks",
        4,
        "--train-on-val",
        "--no-progress",
        "--out",
        tmp_path / "run",
    )
    assert code == 0, err
    assert "test accuracy" in out and "29 queries per class" in out  # every remaining image
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    # the official files, but 3 steps instead of the official 100 000: not the paper's preset
    assert "--preset auto: 'cpu-1shot'" in err
    kl_weight = PRESETS["cpu-1shot"]["kl_weight"]
    assert record["data"]["train_on_val"] and record["leo_config"]["kl_weight"] == kl_weight


def test_train_on_exported_embeddings_uses_the_official_reader(tmp_path, capsys):
    root = _official_pickles(tmp_path / "exported", dim=64, dataset="glyphs")
    code, out, err = cli(
        capsys,
        "train",
        "--data",
        "leo-pickles",
        "--data-dir",
        root,
        "--dataset",
        "glyphs",
        "--steps",
        2,
        "--val-every",
        2,
        "--val-tasks",
        4,
        "--test-tasks",
        4,
        "--no-progress",
        "--out",
        tmp_path / "run",
    )
    assert code == 0, err
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    outer_lr = PRESETS["cpu-1shot"]["outer_lr"]  # not the official files: the CPU preset
    assert record["embedding_dim"] == 64 and record["leo_config"]["outer_lr"] == outer_lr
    code, _, err = cli(
        capsys,
        "train",
        "--data",
        "leo-pickles",
        "--data-dir",
        root,
        "--dataset",
        "../glyphs",
        "--out",
        tmp_path / "bad",
    )
    assert code == 2 and "not a folder name" in err


class Boom:
    def __reduce__(self):
        import os

        return (os.system, ("touch pwned",))


def _user_error_cases(tmp_path):
    """(argv, text the single error line must contain)."""
    good = _official_pickles(tmp_path / "good")
    bad = tmp_path / "bad"
    bad_path = leo_pickle_path(bad, "miniImageNet", "center", "train")
    _official_pickles(bad)
    bad_path.write_bytes(b"this is not a pickle")
    flat = tmp_path / "flat"
    _official_pickles(flat)
    with open(leo_pickle_path(flat, "miniImageNet", "center", "val"), "wb") as f:
        pickle.dump({"embeddings": np.zeros(640, np.float32), "keys": np.array(["a-b-c"])}, f)
    evil = tmp_path / "evil"
    _official_pickles(evil)
    with open(leo_pickle_path(evil, "miniImageNet", "center", "test"), "wb") as f:
        pickle.dump({"embeddings": Boom(), "keys": []}, f)
    pick = ["--data", "leo-pickles", "--data-dir"]
    return [
        ([*pick[:2]], "--data-dir"),
        ([*pick, tmp_path / "nowhere"], "embeddings.zip"),
        ([*pick, bad], "train_embeddings.pkl"),
        ([*pick, flat], "2-D"),
        ([*pick, evil], "refusing"),
        ([*pick, good, "--way", "7"], "--way"),  # val has 6 classes
        (["--shot", "590", "--queries", "15"], "fewer"),
        (["--dropout-rate", "1.5"], "--dropout-rate must be in [0, 1)"),
        (["--outer-lr", "-1"], "--outer-lr must be > 0"),
        (["--steps", "abc"], "not a whole number"),
        (["--way", "1"], "--way: must be >= 2 (a task needs two classes), got 1"),
        (["--way", "0"], "--way: must be >= 2 (a task needs two classes), got 0"),
        (["--shot", "0"], "--shot: must be >= 1, got 0"),
        (["--kl-weight", "nan"], "--kl-weight = nan is not a finite number"),
    ]


def test_every_user_error_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys):
    for extra, expected in _user_error_cases(tmp_path):
        out_dir = tmp_path / "never"
        try:
            code = main(
                [
                    "train",
                    *[str(a) for a in extra],
                    "--no-progress",
                    "--steps",
                    "2",
                    "--out",
                    str(out_dir),
                ]
            )
        except SystemExit as e:  # argparse errors
            code = e.code
        _, err = capsys.readouterr()
        lines = err.strip().splitlines()
        assert code == 2, (extra, err)
        assert len(lines) == 1 and expected in lines[0], (extra, err)
        assert "Traceback" not in err
        assert not out_dir.exists(), extra
    assert not (tmp_path / "pwned").exists()


def test_run_directory_errors(tmp_path, capsys):
    code, _, err = cli(capsys, "evaluate", tmp_path / "missing")
    assert code == 2 and "run directory" in err and len(err.strip().splitlines()) == 1
    args = [
        "train",
        "--steps",
        "2",
        "--val-every",
        "2",
        "--val-tasks",
        "4",
        "--test-tasks",
        "4",
        "--no-progress",
        "--out",
        tmp_path / "run",
    ]
    assert cli(capsys, *args)[0] == 0
    code, _, err = cli(capsys, *args)  # same --out again, without --resume
    assert code == 2 and "--resume" in err
    code, _, err = cli(capsys, *args[:-2], "--shot", "5", "--out", tmp_path / "run", "--resume")
    assert code == 2 and "k_shot" in err
    (tmp_path / "run" / "best.pt").write_bytes(b"garbage")
    code, _, err = cli(capsys, "evaluate", tmp_path / "run")
    assert code == 2 and "best.pt" in err and len(err.strip().splitlines()) == 1
    if not torch.cuda.is_available():
        code, _, err = cli(capsys, *args[:-2], "--device", "cuda", "--out", tmp_path / "gpu")
        assert code == 2 and "--device cpu" in err and not (tmp_path / "gpu").exists()
