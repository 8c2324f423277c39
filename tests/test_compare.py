"""The comparison runner and `leo-tutorial compare`: identical tasks for every method, the same
training machinery as `train`, table = JSON, saved rows and chart, and the user-error paths."""

import json
import re

import pytest
import torch

from leo_tutorial import compare
from leo_tutorial.baselines import Baseline, BaselineConfig, NearestCentroid
from leo_tutorial.cli import main
from leo_tutorial.config import TrainConfig, preset
from leo_tutorial.errors import UserError
from leo_tutorial.model import LEO
from leo_tutorial.training import evaluate_split, train

TINY = TrainConfig(
    k_shot=1,
    n_query=5,
    batch_size=4,
    steps=10,
    val_every=5,
    val_tasks=10,
    test_tasks=12,
    eval_n_query=5,
    eval_batch_size=4,
    seed=3,
)


@pytest.fixture(scope="module")
def bank(tiny_bank):
    return tiny_bank


def test_parse_methods_accepts_any_case_and_order_and_names_the_valid_ones():
    assert compare.parse_methods("leo,MAML,nearest-centroid") == ["nearest-centroid", "maml", "LEO"]
    assert compare.parse_methods(None) == list(compare.METHODS)
    with pytest.raises(UserError, match=r"unknown method\(s\) foo; choose from: nearest-centroid"):
        compare.parse_methods("foo,LEO")
    with pytest.raises(UserError, match="none given"):
        compare.parse_methods(" , ")


def test_ablations_are_the_core_library_switches():
    base = preset("synthetic")
    built = {
        name: compare.build_method(name, base, BaselineConfig(), 8, 5, torch.float32)
        for name in compare.LEO_ABLATIONS
    }
    assert built["LEO"].config == base
    assert built["generator-only"].config.inner_unroll_length == 0
    assert built["generator-only"].config.finetuning_unroll_length == 0
    assert built["generator+finetune"].config.finetuning_unroll_length == 5
    assert built["random-prior"].config.random_prior
    assert built["deterministic"].config.deterministic
    assert built["no-finetune"].config.finetuning_unroll_length == 0
    assert built["no-finetune"].config.inner_unroll_length == 5


def test_every_method_is_tested_on_identical_tasks(bank, monkeypatch):
    """Record every evaluation batch each method sees: the last test_tasks / eval_batch_size
    (the meta-test) are the same tensors for all methods."""
    seen: dict[str, list] = {}

    def spy(forward, key):
        def wrapped(self, batch):
            if not self.training:
                seen.setdefault(key(self), []).append(
                    (batch.classes.clone(), batch.support_x.clone(), batch.query_x.clone())
                )
            return forward(self, batch)

        return wrapped

    monkeypatch.setattr(Baseline, "forward", spy(Baseline.forward, lambda m: type(m).__name__))
    monkeypatch.setattr(LEO, "forward", spy(LEO.forward, lambda m: "LEO"))
    rows = compare.run_comparison(
        bank,
        TINY,
        preset("synthetic"),
        ["nearest-centroid", "maml", "LEO"],
        device="cpu",
        log=lambda m: None,
    )
    assert [r["method"] for r in rows] == ["nearest-centroid", "maml", "LEO"]
    n_test = -(-TINY.test_tasks // TINY.eval_batch_size)
    tests = {k: v[-n_test:] for k, v in seen.items()}
    assert set(tests) == {"NearestCentroid", "MAML", "LEO"}
    reference = tests["LEO"]
    assert sum(len(c) for c, _, _ in reference) == TINY.test_tasks
    for batches in tests.values():
        for (c, s, q), (c0, s0, q0) in zip(batches, reference, strict=True):
            assert torch.equal(c, c0) and torch.equal(s, s0.float()) and torch.equal(q, q0)
    # the paired margin is LEO minus the method, and LEO's own margin is zero
    leo = rows[-1]
    assert leo["leo_margin"] == 0.0
    for r in rows:
        assert r["leo_margin"] == pytest.approx(leo["accuracy"] - r["accuracy"])


def test_leo_is_fitted_exactly_as_the_train_command_does(bank, tmp_path):
    config = preset("synthetic")
    model, info = compare.fit("LEO", bank, TINY, config, BaselineConfig(), torch.device("cpu"))
    result = train(
        config,
        TINY,
        bank,
        tmp_path / "run",
        device="cpu",
        progress=False,
        test=False,
        log=lambda m: None,
    )
    assert info["best_step"] == result.best_step
    assert info["val_accuracy"] == result.best_val_accuracy
    reference = result.model.state_dict()
    assert all(torch.equal(t, reference[k]) for k, t in model.state_dict().items())


def test_a_method_fitted_already_is_only_tested(bank, tmp_path):
    config = preset("synthetic")
    run = train(
        config,
        TINY,
        bank,
        tmp_path / "run",
        device="cpu",
        progress=False,
        test=False,
        log=lambda m: None,
    )
    info = {"val_accuracy": run.best_val_accuracy, "best_step": run.best_step}
    methods = ["nearest-centroid", "LEO"]
    fitted = compare.run_comparison(
        bank,
        TINY,
        config,
        methods,
        device="cpu",
        log=lambda m: None,
        fitted={"LEO": (run.model, info, 1.5)},
    )
    fresh = compare.run_comparison(bank, TINY, config, methods, device="cpu", log=lambda m: None)
    for a, b in zip(fitted, fresh, strict=True):
        for key in ("accuracy", "ci95", "leo_margin", "leo_margin_ci95", "best_step"):
            assert a[key] == b[key], key
    assert fitted[1]["train_seconds"] == 1.5


def test_train_reports_step_0_and_nearest_centroid_on_its_own_test_tasks(bank, tmp_path):
    """The reference rows of `train`: LEO untrained is the run's own initialisation (its S^val
    accuracy is the run's step-0 validation, exactly), nearest centroid is tested on the same
    S^test tasks, and each margin is the paired mean difference."""
    config = preset("synthetic")
    result = train(
        config, TINY, bank, tmp_path / "run", device="cpu", progress=False, log=lambda m: None
    )
    step0 = compare.untrained_leo(config, bank, TINY)
    val = evaluate_split(step0, bank, TINY, "val")
    assert val.accuracy == result.history["val"][0]["accuracy"]
    rows = compare.reference_rows(result.test, config, bank, TINY)
    assert [r["method"] for r in rows] == ["LEO untrained (step 0)", "nearest centroid"]
    nc = evaluate_split(NearestCentroid(None, bank.dim, TINY.n_way), bank, TINY, "test")
    assert rows[1]["accuracy"] == nc.accuracy
    for row in rows:
        assert row["leo_margin"] == pytest.approx(result.test.accuracy - row["accuracy"], abs=1e-12)
        assert row["leo_margin_ci95"] > 0
    text = compare.format_reference_rows(result.test, result.best_step, rows)
    assert f"LEO trained (step {result.best_step})" in text and f"{TINY.test_tasks} meta" in text
    assert f"{100 * rows[1]['leo_margin']:+.2f} +- " in text


def _table_numbers(table: str) -> dict[str, tuple[float, float, float]]:
    numbers = {}
    for line in table.splitlines()[2:-1]:  # between the header and the tuning note
        m = re.match(r"(\S+)\s+([\d.]+) \+- ([\d.]+)\s+([\d.]+)", line)
        numbers[m[1]] = tuple(float(m[i]) for i in (2, 3, 4))
    return numbers


def test_cli_table_json_files_and_chart_agree(tmp_path, capsys):
    args = [
        "compare",
        "--data",
        "synthetic",
        "--shot",
        "1",
        "--steps",
        "10",
        "--val-every",
        "5",
        "--val-tasks",
        "10",
        "--test-tasks",
        "20",
        "--eval-queries",
        "5",
        "--seed",
        "1",
        "--methods",
        "protonet,nearest-centroid,generator-only",
        "--no-progress",
    ]
    assert main([*args, "--out", str(tmp_path)]) == 0
    table, err = capsys.readouterr()
    assert err == ""
    assert "5-way 1-shot on synthetic" in table
    rows = compare.load_rows(tmp_path / "compare_synthetic_1shot.json")
    assert [r["method"] for r in rows] == ["nearest-centroid", "protonet", "generator-only"]
    numbers = _table_numbers(table)
    for r in rows:
        assert numbers[r["method"]] == (
            round(100 * r["accuracy"], 2),
            round(100 * r["ci95"], 2),
            round(r["train_seconds"], 1),
        )
    png = (tmp_path / "compare_synthetic_1shot.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "compare_synthetic_1shot.json",
        "compare_synthetic_1shot.png",
    ]
    # --json: stdout is exactly the rows (deterministic methods give the same numbers)
    assert main([*args[:-3], "--methods", "nearest-centroid", "--json"]) == 0
    out, _ = capsys.readouterr()
    printed = json.loads(out)
    assert [r["method"] for r in printed] == ["nearest-centroid"]
    assert {"method", "accuracy", "ci95", "train_seconds"} <= set(printed[0])
    assert 0 < printed[0]["accuracy"] < 1
    assert printed[0]["accuracy"] == rows[0]["accuracy"]


def test_plot_rows_draws_one_bar_per_method_with_labels(tmp_path):
    from matplotlib.figure import Figure

    rows = [
        {
            "method": m,
            "accuracy": a,
            "ci95": 0.01,
            "train_seconds": 1.0,
            "data": "synthetic",
            "way": 5,
            "shot": 1,
            "tasks": 100,
        }
        for m, a in (("maml", 0.3), ("generator-only", 0.5), ("LEO", 0.6))
    ]
    ax = compare.plot_rows(rows, ax=Figure().subplots())
    assert len(ax.patches) == 3
    positions = dict(
        zip([t.get_text() for t in ax.get_yticklabels()], ax.get_yticks(), strict=True)
    )
    assert positions["maml"] > positions["generator-only"] > positions["LEO"]  # first on top
    assert "accuracy" in ax.get_xlabel() and "5-way 1-shot" in ax.get_title()
    assert len({p.get_facecolor() for p in ax.patches}) == 3  # baseline, ablation, LEO


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--methods", "foo,LEO"], "unknown method(s) foo; choose from: nearest-centroid"),
        (["--data", "leo-pickles"], "--data leo-pickles needs --data-dir DIR"),
        (["--shot", "0"], "--shot: must be >= 1, got 0"),
        (["--data", "omniglot"], "--data omniglot needs --data-dir DIR"),
    ],
)
def test_cli_user_errors_are_one_line_exit_2_and_write_nothing(argv, message, tmp_path, capsys):
    assert main(["compare", *argv, "--out", str(tmp_path / "out")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and message in err
    assert not (tmp_path / "out").exists()


def test_load_rows_explains_missing_and_malformed_files(tmp_path):
    with pytest.raises(UserError, match="not found"):
        compare.load_rows(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(UserError, match="not valid JSON"):
        compare.load_rows(tmp_path / "bad.json")
    (tmp_path / "rows.json").write_text(json.dumps([{"method": "LEO"}]))
    with pytest.raises(UserError, match="accuracy"):
        compare.load_rows(tmp_path / "rows.json")


@pytest.mark.parametrize(
    "data, shot",
    [("synthetic", 1), ("synthetic", 5), ("glyphs", 1), ("glyphs", 5), ("glyphs-untrained", 1)],
)
def test_shipped_comparisons_load_and_cover_every_method(data, shot):
    """Every method, except for the teaching setting: its 3 000-step schedule ships the methods of
    the feature-quality study (scripts/train_shipped_runs.py, COMPARED)."""
    rows = compare.load_rows(compare.asset_path(data, shot))
    expected = ["nearest-centroid", "logreg", "protonet", "LEO"]
    assert [r["method"] for r in rows] == (
        expected if data == "glyphs-untrained" else list(compare.METHODS)
    )
    assert all(r["shot"] == shot and r["data"] == data for r in rows)
