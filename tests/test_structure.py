"""The shared pieces behind train, compare and regression: the one outer loop and its protocol,
the method and data-source registries, run-directory ownership, and a CLI that names its flags
and checks them before any expensive work."""

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from leo_tutorial import LEOConfig, TrainConfig, UserError, compare, sources
from leo_tutorial.baselines import INNER_LRS, PROBE_CS
from leo_tutorial.cli import main
from leo_tutorial.data import SyntheticConfig, make_synthetic_bank
from leo_tutorial.io import atomic_write_json
from leo_tutorial.rundir import RunLock
from leo_tutorial.runtime import SeedPurpose
from leo_tutorial.training import BestModel, check_task_shape, make_optimizer, meta_train, train

SMALL = SyntheticConfig(
    n_train_classes=12,
    n_val_classes=6,
    n_test_classes=7,
    images_per_class=20,
    dim=16,
    subspace_dim=4,
)


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------------------ the one loop
@dataclass(frozen=True)
class ToySettings:
    outer_lr: float = 0.1
    gradient_threshold: float = 0.0
    gradient_norm_threshold: float = 0.0


@dataclass
class ToyOutput:
    loss: torch.Tensor
    query_loss: torch.Tensor

    def training_metrics(self):
        return {"loss": self.loss.item()}


class Toy(nn.Module):
    """A meta-learner that is not LEO: fits a scalar to the batch mean."""

    def __init__(self):
        super().__init__()
        self.config = ToySettings()
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, batch):
        per_task = (batch - self.w) ** 2
        return ToyOutput(per_task.mean(), per_task)


def test_anything_that_follows_the_protocol_is_meta_trained_by_the_one_loop():
    model = Toy()
    seen = []

    def validate():
        seen.append(model.w.item())
        acc = -abs(model.w.item() - 3.0)

        class Result:
            accuracy, ci95, loss = acc, 0.0, 0.0

        return Result()

    best = BestModel()
    result = meta_train(
        model,
        make_optimizer(model),
        lambda step: torch.full((4,), 3.0),
        steps=60,
        seed=0,
        validate=validate,
        val_every=20,
        best=best,
        log_every=10,
        progress=False,
    )
    assert [h["step"] for h in result.history["val"]] == [0, 20, 40, 60]  # and at the end
    assert [h["step"] for h in result.history["train"]] == [9, 19, 29, 39, 49, 59]
    assert abs(model.w.item() - 3.0) < 0.5 and result.steps_done == 60  # it learned
    scores = [-abs(w - 3.0) for w in seen]
    assert best.step == 20 * scores.index(max(scores))  # the best validation is kept...
    best.restore(model)
    assert model.w.item() == seen[scores.index(max(scores))]  # ...with its parameters


def test_a_skipped_update_is_logged_explained_and_written_as_strict_json(tmp_path):
    model = Toy()
    lines = []
    batches = [torch.full((2,), float("nan")) if s == 1 else torch.ones(2) for s in range(3)]
    result = meta_train(
        model,
        make_optimizer(model),
        batches.__getitem__,
        steps=3,
        seed=0,
        log=lines.append,
        progress=False,
    )
    assert result.history["skipped"] == [
        {"step": 1, "loss": pytest.approx(float("nan"), nan_ok=True)}
    ]
    assert len(lines) == 1 and "step 1" in lines[0] and "lower --outer-lr" in lines[0]
    path = atomic_write_json(tmp_path / "m.json", result.history)

    def refuse(name):
        raise AssertionError(f"non-standard JSON constant {name}")

    back = json.loads(path.read_text(), parse_constant=refuse)
    assert back["skipped"] == [{"step": 1, "loss": None}]


def test_an_interrupted_loop_checkpoints_the_last_completed_step():
    model, saved = Toy(), []

    def batches(step):
        if step == 4:
            raise KeyboardInterrupt
        return torch.ones(2)

    with pytest.raises(KeyboardInterrupt):
        meta_train(
            model,
            make_optimizer(model),
            batches,
            steps=10,
            seed=0,
            checkpoint=saved.append,
            progress=False,
        )
    assert saved == [4]


# ---------------------------------------------------------------------------- registries
def test_methods_declare_what_they_select_on_validation_tasks():
    assert compare.METHODS["maml"].selected_on_val == {"inner_lr_init": INNER_LRS}
    assert compare.METHODS["meta-sgd"].selected_on_val == {"inner_lr_init": INNER_LRS}
    assert compare.METHODS["logreg"].selected_on_val == {"probe_c": PROBE_CS}
    assert not compare.METHODS["logreg"].meta_learned
    assert not compare.METHODS["nearest-centroid"].meta_learned
    assert all(compare.METHODS[m].meta_learned for m in ("protonet", *compare.LEO_ABLATIONS))
    assert compare.METHODS["LEO"].group == "LEO (full)"


def test_fit_builds_the_selected_model_instead_of_changing_a_built_one():
    bank = make_synthetic_bank(SMALL)
    tc = TrainConfig(steps=0, val_tasks=10, eval_n_query=5)
    from leo_tutorial.baselines import BaselineConfig

    model, info = compare.fit(
        "logreg", bank, tc, LEOConfig(), BaselineConfig(), torch.device("cpu")
    )
    assert info["probe_c"] in PROBE_CS and model.config.probe_c == info["probe_c"]


def test_every_source_is_registered_once_with_what_the_cli_needs():
    for name, source in sources.SOURCES.items():
        assert source.name == name and source.summary
        assert set(source.flags) <= set(sources.DATA_FLAGS)
        assert (source.load is None) != (source.images is None)
    assert {s for s, src in sources.SOURCES.items() if src.has_images} == {"glyphs", "omniglot"}


def test_a_data_flag_the_source_does_not_read_is_refused(tmp_path, capsys):
    code, _, err = cli(
        capsys, "train", "--data", "synthetic", "--crop", "multiview", "--out", tmp_path / "r"
    )
    assert code == 2 and "--crop does not apply to --data synthetic" in err
    assert not (tmp_path / "r").exists()


def test_seed_purposes_keep_their_numbers():
    assert [int(p) for p in SeedPurpose] == [0, 1, 2, 3, 4, 5]
    assert [p.name for p in SeedPurpose] == ["TRAIN", "VAL", "TEST", "TORCH", "INIT", "SEARCH"]


# --------------------------------------------------------------------- run-directory lock
def test_a_locked_run_directory_is_refused_and_freed_on_exit(tmp_path):
    with RunLock(tmp_path / "run"):
        with pytest.raises(UserError, match=r"in use by another leo-tutorial process \(pid"):
            RunLock(tmp_path / "run").acquire()
    with RunLock(tmp_path / "run"):  # free again
        pass
    assert not (tmp_path / "run").exists()  # the lock made the folder and left it empty


HOLDER = textwrap.dedent(
    """
    import sys, time
    from leo_tutorial.rundir import RunLock
    lock = RunLock(sys.argv[1]).acquire()
    (lock.run_dir / "held").write_text("yes")
    time.sleep(60)
    """
)


@pytest.mark.slow
def test_a_second_train_on_a_busy_folder_is_refused_and_a_killed_holder_does_not_block(
    tmp_path, capsys
):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run)])
    try:
        deadline = time.time() + 30
        while not (run / "held").exists() and time.time() < deadline:
            time.sleep(0.05)
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
            "--eval-queries",
            "5",
            "--no-progress",
            "--out",
            run,
        ]
        code, _, err = cli(capsys, *args)
        assert code == 2 and "in use by another leo-tutorial process" in err
        assert str(holder.pid) in err and not (run / "run.json").exists()
        code, _, err = cli(capsys, "compare", "--methods", "nearest-centroid", "--out", run)
        assert code == 2 and "in use" in err
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (run / ".lock").exists()  # left behind by the killed process...
    code, out, err = cli(capsys, *args)
    assert code == 0, err  # ...and not in the way
    assert not (run / ".lock").exists()


# --------------------------------------------------------------- CLI speaks its own language
def test_a_misspelt_flag_names_the_right_one(tmp_path, capsys):
    code, _, err = cli(capsys, "train", "--shots", "5", "--out", tmp_path / "r")
    assert code == 2 and err.count("\n") == 1
    assert "--shots" in err and "did you mean --shot?" in err and "leo-tutorial train --help" in err


@pytest.mark.parametrize("flag", [["--device", "cuda"], ["--out-is-a-file"]])
def test_bad_arguments_fail_before_any_data_is_loaded(flag, tmp_path, capsys, monkeypatch):
    if flag[0] == "--device" and torch.cuda.is_available():
        pytest.skip("CUDA is present")
    monkeypatch.setattr(sources, "load_bank", lambda *a, **k: pytest.fail("data was loaded"))
    target = tmp_path / "file"
    target.write_text("not a folder")
    out = target / "run" if flag == ["--out-is-a-file"] else tmp_path / "run"
    extra = [] if flag == ["--out-is-a-file"] else flag
    code, _, err = cli(capsys, "train", "--data", "glyphs", *extra, "--out", out)
    assert code == 2 and err.count("\n") == 1
    assert ("is a file, not a folder" in err) if not extra else ("--device cpu" in err)


def test_an_impossible_way_names_the_smallest_split_used():
    bank = make_synthetic_bank(SMALL)  # train 12, val 6, test 7 classes
    with pytest.raises(UserError, match=r"the val split has only 6 classes .*use --way <= 6"):
        check_task_shape(bank, TrainConfig(n_way=10), ("train", "val", "test"))
    check_task_shape(bank, TrainConfig(n_way=6, eval_n_query=5), ("train", "val", "test"))


def test_evaluate_says_when_it_scores_an_unfinished_run(tmp_path, capsys):
    bank = make_synthetic_bank(SMALL)
    tc = TrainConfig(steps=8, val_every=2, val_tasks=4, test_tasks=4, eval_n_query=5)

    def stop(step, metrics):
        if step == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(
            LEOConfig(num_latents=4),
            tc,
            bank,
            tmp_path / "run",
            device="cpu",
            progress=False,
            callback=stop,
            log=lambda m: None,
            data_spec=sources.synthetic_spec(SMALL),
        )
    code, out, err = cli(capsys, "evaluate", tmp_path / "run", "--tasks", 4, "--json")
    assert code == 0
    assert "unfinished run (4 of 8 steps)" in err and "best model so far" in err
    result = json.loads(out)
    assert result["finished"] is False and result["steps_done"] == 4
    code, out, _ = cli(capsys, "info", tmp_path / "run")
    assert "unfinished: 4 of 8 steps" in out
    assert math.isfinite(result["accuracy"])
    assert not (tmp_path / "run" / ".lock").exists() and os.listdir(tmp_path / "run")
