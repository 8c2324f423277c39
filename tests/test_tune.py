"""Hyper-parameter search (`leo-tutorial tune`, `compare --tune-trials`): what is searched, that
trials only see S^val, pruning, resuming, workers sharing one SQLite study, the files and the
CLI's checks, `train --params`, and the `--preset auto` rule."""

import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch

from leo_tutorial import compare, training, tune
from leo_tutorial.assets import ASSETS
from leo_tutorial.cli import main
from leo_tutorial.config import (
    LEO_RATE_SPACE,
    LEO_SEARCH_SPACE,
    PRESETS,
    LEOConfig,
    Range,
    TrainConfig,
    leo_search_space,
    preset,
)
from leo_tutorial.data import EpisodeSampler, SyntheticConfig, make_synthetic_bank
from leo_tutorial.errors import UserError
from leo_tutorial.model import LEO
from leo_tutorial.sources import SOURCES, glyphs_spec, leo_pickles_spec, synthetic_spec

TINY = TrainConfig(
    k_shot=1,
    n_query=5,
    batch_size=4,
    steps=12,
    val_every=4,
    val_tasks=10,
    test_tasks=12,
    eval_n_query=5,
    eval_batch_size=5,
    seed=3,
)
# the CLI's only synthetic bank is the default one (640-d, 64/16/20 x 600): tiny schedule
CLI_FAST = [
    "--steps",
    "4",
    "--val-every",
    "2",
    "--val-tasks",
    "5",
    "--test-tasks",
    "5",
    "--eval-queries",
    "5",
    "--queries",
    "5",
    "--batch-size",
    "2",
    "--no-progress",
]


@pytest.fixture(scope="module")
def bank(tiny_bank):
    return tiny_bank


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def strict_loads(text: str):
    def refuse(constant):
        raise AssertionError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


# ------------------------------------------------------------------------------ what is searched
def test_search_ranges_hold_the_official_defaults_and_all_four_tuned_settings():
    paper = [{}] + [PRESETS[f"{d}-{k}shot"] for d in ("mini", "tiered") for k in (1, 5)]
    for values in paper:
        config = LEOConfig(**values)
        for name, r in {**LEO_SEARCH_SPACE, **LEO_RATE_SPACE}.items():
            assert getattr(config, name) in r, (name, getattr(config, name), r)
    assert set(LEO_SEARCH_SPACE) == {
        "outer_lr",
        "l2_penalty_weight",
        "orthogonality_penalty_weight",
        "dropout_rate",
        "kl_weight",
        "encoder_penalty_weight",
    }  # what the paper's random search tuned (LEO_SPEC §4.2)
    assert all(r.log for n, r in LEO_SEARCH_SPACE.items() if n != "dropout_rate")
    assert LEO_SEARCH_SPACE["dropout_rate"] == Range(0.0, 0.6, log=False)


def test_a_range_refuses_empty_or_non_positive_log_bounds():
    with pytest.raises(UserError, match="low < high"):
        Range(1.0, 1.0)
    with pytest.raises(UserError, match="low > 0"):
        Range(0.0, 1.0)


@pytest.mark.parametrize(
    "switches, dropped",
    [
        ({"inner_unroll_length": 0}, {"encoder_penalty_weight", "inner_lr_init"}),
        ({"finetuning_unroll_length": 0}, {"finetuning_lr_init"}),
        ({"deterministic": True}, {"kl_weight"}),
        ({"random_prior": True}, {"kl_weight", "encoder_penalty_weight"}),
    ],
)
def test_fields_dropped_from_the_search_cannot_change_the_meta_gradient(switches, dropped):
    """The dropped fields are exactly those whose value leaves the meta-gradient unchanged:
    same seed, same batch, a 1000x different value -> identical gradients, so identical
    training (the random prior's encoder penalty adds a constant to the loss). (64-d: at
    16-d the random prior's inner loop diverges at alpha = 1, with autograd too.)"""
    full = leo_search_space(LEOConfig(), rates=True)
    base = LEOConfig(**switches)
    assert set(full) - set(leo_search_space(base, rates=True)) == dropped
    batch = EpisodeSampler(
        make_synthetic_bank(
            SyntheticConfig(n_train_classes=6, images_per_class=8, dim=64, subspace_dim=4)
        ).split("train"),
        5,
        2,
        3,
    ).sample(2, [0, 0, 0])
    for name in dropped:
        grads = []
        for scale in (1.0, 1000.0):
            config = base.replace(**{name: getattr(base, name) * scale + 1e-3})
            torch.manual_seed(0)
            model = LEO(config, 64, 5, torch.float64).train()
            torch.manual_seed(1)
            out = model(batch.to("cpu", torch.float64))
            params = list(model.parameters())
            g = torch.autograd.grad(out.loss, params, allow_unused=True)  # unused: alpha at T=0
            g = [torch.zeros_like(p) if d is None else d for p, d in zip(params, g, strict=True)]
            grads.append((out.loss.detach(), g))
        (loss_a, g_a), (loss_b, g_b) = grads
        assert torch.isfinite(loss_a) and torch.isfinite(loss_b), name
        assert all(torch.equal(a, b) for a, b in zip(g_a, g_b, strict=True)), name


def test_every_meta_learned_method_declares_a_search_space_and_where_it_goes():
    for name, method in compare.METHODS.items():
        space = method.search_space(preset("synthetic"))
        assert bool(space) == method.meta_learned, name
        if space:
            values = {k: r.high for k, r in space.items()}
            lc, bc = method.apply(preset("synthetic"), compare.BaselineConfig(), values)
            target = lc if method.group != "baseline" else bc
            assert all(getattr(target, k) == v for k, v in values.items()), name
    assert set(compare.METHODS["maml"].search_space(LEOConfig())) == {"outer_lr", "inner_lr_init"}
    assert "kl_weight" not in compare.METHODS["deterministic"].search_space(LEOConfig())


# ------------------------------------------------------------------------------ sampling
def _params_of(sampler_kind: str, seed: int, n: int) -> list[dict]:
    study = optuna.create_study(
        direction="maximize", sampler=tune.PerTrialSeedSampler(sampler_kind, seed)
    )
    study.optimize(lambda t: sum(tune.suggest(t, LEO_SEARCH_SPACE).values()), n_trials=n)
    return [t.params for t in study.trials]


@pytest.mark.parametrize("kind", ["tpe", "random"])
def test_the_same_seed_gives_the_same_search_and_another_seed_another(kind):
    first = _params_of(kind, 0, 12)  # past TPE's 10 random start-up trials
    assert first == _params_of(kind, 0, 12)
    assert first != _params_of(kind, 1, 12)
    assert len({json.dumps(p, sort_keys=True) for p in first}) == 12
    for params in first:
        assert all(v in LEO_SEARCH_SPACE[k] for k, v in params.items())


def test_workers_sharing_a_study_draw_different_values_with_the_same_seed():
    """Two Study objects on one storage (two workers), both seeded 0, alternating trials."""
    storage = optuna.storages.InMemoryStorage()
    workers = [
        optuna.create_study(
            storage=storage,
            study_name="shared",
            direction="maximize",
            sampler=tune.PerTrialSeedSampler("random", 0),
            load_if_exists=True,
        )
        for _ in range(2)
    ]
    for i in range(6):
        workers[i % 2].optimize(lambda t: tune.suggest(t, LEO_SEARCH_SPACE)["outer_lr"], 1)
    params = [t.params for t in workers[0].trials]
    assert len(params) == 6 and len({json.dumps(p, sort_keys=True) for p in params}) == 6
    assert params == _params_of("random", 0, 6)  # trial n's values depend on (seed, n) only


def test_unknown_sampler_names_the_choices():
    with pytest.raises(UserError, match="tpe or random"):
        tune.PerTrialSeedSampler("grid", 0)


# ------------------------------------------------------------------------------ pruning
def test_the_objective_reports_the_best_so_far_and_prunes_only_before_the_last_step(
    bank, monkeypatch
):
    """compare.fit replaced by a script of validations: what reaches the trial and when the
    pruner is asked."""
    script = [(0, 0.2), (4, 0.5), (8, 0.4), (12, 0.45)]  # (step, S^val accuracy)

    def scripted_fit(name, bank, tc, lc, bc, device, progress=False, *, params, on_validation):
        for step, accuracy in script:
            on_validation(step, {"val_accuracy": accuracy})
        return None, {"val_accuracy": max(a for _, a in script)}

    monkeypatch.setattr(compare, "fit", scripted_fit)

    class Trial:
        def __init__(self, prune_at):
            self.reports, self.asked, self.prune_at = [], [], prune_at

        def suggest_float(self, name, low, high, log):
            return low

        def report(self, value, step):
            self.reports.append((step, value))

        def should_prune(self):
            self.asked.append(self.reports[-1][0])
            return self.reports[-1][0] == self.prune_at

    objective = tune.method_objective(
        "LEO", bank, TINY, LEOConfig(), compare.BaselineConfig(), LEO_SEARCH_SPACE, "cpu"
    )
    never = Trial(prune_at=None)
    assert objective(never) == 0.5
    assert never.reports == [(0, 0.2), (4, 0.5), (8, 0.5), (12, 0.5)]  # best so far
    assert never.asked == [0, 4, 8]  # the last validation ends the run anyway
    with pytest.raises(optuna.TrialPruned, match="step 8"):
        objective(Trial(prune_at=8))


@pytest.mark.slow
def test_a_real_search_prunes_some_trials_at_a_validation(bank):
    study = optuna.create_study(
        direction="maximize",
        sampler=tune.PerTrialSeedSampler("random", 0),
        pruner=tune.make_pruner(TINY),
    )
    objective = tune.method_objective(
        "LEO", bank, TINY, preset("synthetic"), compare.BaselineConfig(), LEO_SEARCH_SPACE, "cpu"
    )
    tune.run_trials(study, objective, 12, progress=False)
    states = [t.state.name for t in study.trials]
    assert len(tune.finished_trials(study)) == 12 and "FAIL" not in states
    pruned = [t for t in study.trials if t.state.name == "PRUNED"]
    assert pruned, states  # a random search at 12 steps has weak trials
    for t in pruned:
        assert TINY.val_every <= t.last_step < TINY.steps and t.last_step % TINY.val_every == 0


# ------------------------------------------------------------------------------ tune end to end
@pytest.fixture(scope="module")
def tuned(bank, tmp_path_factory):
    out = tmp_path_factory.mktemp("tune") / "study"
    seen = []
    original = training.evaluate

    def spy(model, split, **kw):
        seen.append(kw["split_name"])
        return original(model, split, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(training, "evaluate", spy)
        result = tune.tune(
            bank, TINY, preset("synthetic"), out, trials=6, device="cpu", progress=False,
            log=lambda m: None,
        )  # fmt: skip
    return result, out, seen


@pytest.mark.slow
def test_trials_only_see_meta_val_and_the_best_setting_is_tested_once(tuned):
    result, _, seen = tuned
    assert seen.count("test") == 1 and seen[-1] == "test"
    assert set(seen[:-1]) == {"val"}


@pytest.mark.slow
def test_the_final_run_reproduces_the_best_trial_exactly(tuned):
    result, out, _ = tuned
    assert result.run.run_dir == out / f"trial_{result.best_trial:04d}"
    assert result.run.best_val_accuracy == result.best_val_accuracy  # same loop, seeds, tasks
    record = json.loads((result.run.run_dir / "run.json").read_text())
    assert record["leo_config"] == json.loads(json.dumps(result.leo_config.__dict__))
    complete = [t for t in result.summary["trials"] if t["state"] == "complete"]
    assert result.best_val_accuracy == max(t["value"] for t in complete)
    assert result.trials == 6


@pytest.mark.slow
def test_the_study_files(tuned):
    result, out, _ = tuned
    best = strict_loads((out / "best_params.json").read_text())
    assert best["best_params"] == result.best_params and best["trials"] == 6
    assert LEOConfig(**best["leo_config"]) == result.leo_config
    summary = tune.load_summary(out / "study.json")
    assert summary["best_trial"] == result.best_trial and len(summary["trials"]) == 6
    assert summary["test"]["tasks"] == TINY.test_tasks
    assert set(summary["space"]) == set(LEO_SEARCH_SPACE)
    assert (out / "importance.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "study.db").is_file() and not (out / ".lock").exists()


@pytest.mark.slow
def test_more_trials_continue_the_study_and_other_settings_are_refused(bank, tuned):
    result, out, _ = tuned
    before = {t.number: t.params for t in optuna.load_study(
        study_name=result.study_name, storage=tune.default_storage(out)
    ).trials}  # fmt: skip
    again = tune.tune(
        bank, TINY, preset("synthetic"), out, trials=7, device="cpu", final=False,
        progress=False, log=lambda m: None,
    )  # fmt: skip
    assert again.trials == 7
    study = optuna.load_study(study_name=result.study_name, storage=tune.default_storage(out))
    assert {t.number: t.params for t in study.trials if t.number in before} == before
    with pytest.raises(UserError, match=r"train_config.steps: the study has 12, now 20"):
        tune.tune(
            bank, TINY.replace(steps=20), preset("synthetic"), out, trials=7, device="cpu",
            progress=False, log=lambda m: None,
        )  # fmt: skip


@pytest.mark.slow
def test_an_interrupted_study_keeps_its_trials_and_continues(bank, tmp_path, monkeypatch):
    out = tmp_path / "study"
    kw = dict(device="cpu", final=False, progress=False, log=lambda m: None)
    tune.tune(bank, TINY, preset("synthetic"), out, trials=2, **kw)
    real_fit = compare.fit

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(compare, "fit", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tune.tune(bank, TINY, preset("synthetic"), out, trials=4, **kw)
    monkeypatch.setattr(compare, "fit", real_fit)
    study = optuna.load_study(
        study_name="leo-synthetic-5way-1shot", storage=f"sqlite:///{out}/study.db"
    )
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE", "FAIL"]
    result = tune.tune(bank, TINY, preset("synthetic"), out, trials=4, **kw)
    study = optuna.load_study(study_name=result.study_name, storage=f"sqlite:///{out}/study.db")
    states = [t.state.name for t in study.trials]
    assert states[:3] == ["COMPLETE", "COMPLETE", "FAIL"] and len(tune.finished_trials(study)) == 4
    assert not (out / ".lock").exists()


# ------------------------------------------------------------------------------ storage
def test_storage_urls_are_shown_without_passwords_and_bad_ones_are_user_errors(tmp_path):
    assert "secret" not in tune.shown_storage("postgresql://me:secret@db.example/optuna")
    with pytest.raises(UserError, match="is not a database URL"):
        tune.open_storage("not a url")
    with pytest.raises(UserError, match="--storage"):
        tune.open_storage(f"sqlite:///{tmp_path}/missing/folder/study.db")


@pytest.mark.slow
def test_two_worker_processes_share_one_sqlite_study(tmp_path):
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    base = [sys.executable, "-m", "leo_tutorial.cli", "tune", "--trials", "4", *CLI_FAST]
    workers = [
        subprocess.Popen(
            [*base, "--storage", storage, "--search-only", "--json", "--out", tmp_path / f"w{i}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
        )
        for i in range(2)
    ]
    outputs = [w.communicate(timeout=600) for w in workers]
    for w, (_, err) in zip(workers, outputs, strict=True):
        assert w.returncode == 0, err
    results = [strict_loads(out) for out, _ in outputs]
    assert {r["study_name"] for r in results} == {"leo-synthetic-5way-1shot"}
    assert all(r["storage"] == storage and r["run_dir"] is None for r in results)
    study = optuna.load_study(study_name="leo-synthetic-5way-1shot", storage=storage)
    finished = tune.finished_trials(study)
    assert 4 <= len(finished) <= 5  # each worker may overshoot by one trial
    assert len({json.dumps(t.params, sort_keys=True) for t in study.trials}) == len(study.trials)


# ------------------------------------------------------------------------------ the CLI
@pytest.mark.slow
def test_cli_tune_then_train_with_its_params(tmp_path, capsys):
    out = tmp_path / "study"
    code, stdout, err = cli(capsys, "tune", "--trials", 3, *CLI_FAST, "--out", out, "--json")
    assert code == 0, err
    result = strict_loads(stdout)
    assert set(result) >= {"best_params", "best_val_accuracy", "trials", "study_name", "storage"}
    assert result["trials"] == 3 and 0 <= result["best_val_accuracy"] <= 1
    assert result["storage"] == f"sqlite:///{(out / 'study.db').resolve()}"
    assert result["test"]["tasks"] == 5 and Path(result["run_dir"]).is_dir()
    assert "--preset auto: 'cpu-1shot'" in err
    run = tmp_path / "run"
    code, _, err = cli(
        capsys, "train", *CLI_FAST, "--params", out / "best_params.json", "--kl-weight", 0,
        "--out", run,
    )  # fmt: skip
    assert code == 0, err
    leo_config = json.loads((run / "run.json").read_text())["leo_config"]
    expected = json.loads((out / "best_params.json").read_text())["leo_config"]
    assert leo_config == {**expected, "kl_weight": 0.0}  # the study's setting, flags on top


def test_cli_fixed_fields_are_not_searched(tmp_path, capsys, monkeypatch):
    captured = {}

    def fake_run_study(study, url, *args, **kwargs):
        captured["space"] = study.user_attrs["record"]["space"]
        raise UserError("stop here")

    monkeypatch.setattr(tune, "run_study", fake_run_study)
    code, _, err = cli(
        capsys, "tune", *CLI_FAST, "--dropout-rate", 0, "--search-rates", "--out", tmp_path / "s"
    )
    assert code == 2 and "stop here" in err
    assert set(captured["space"]) == (set(LEO_SEARCH_SPACE) | set(LEO_RATE_SPACE)) - {
        "dropout_rate"
    }


def test_cli_tune_and_params_errors_are_one_line_and_write_nothing(tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    bad_params = tmp_path / "bad.json"
    bad_params.write_text(json.dumps({"leo_config": {"outer_lr": 1e-3, "warp": 9}}))
    not_json = tmp_path / "not.json"
    not_json.write_text("{")
    all_fixed = [f"--{n.replace('_', '-')}" for n in LEO_SEARCH_SPACE]
    cases = [
        (["tune", "--trials", "0"], "--trials: must be >= 1"),
        (["tune", "--sampler", "grid"], "--sampler"),
        (["tune", "--storage", "nonsense"], "is not a database URL"),
        (["tune", *[x for f in all_fixed for x in (f, "0.1")]], "nothing to search"),
        (["tune", "--out", a_file / "x"], "is a file"),
        (["train", "--params", tmp_path / "missing.json"], "not found"),
        (["train", "--params", bad_params], "unknown LEOConfig fields ['warp']"),
        (["train", "--params", not_json], "is not valid JSON"),
        (["train", "--params", bad_params, "--preset", "default"], "give one of them"),
    ]
    for argv, expected in cases:
        if "--out" not in argv:
            argv = [*argv, "--out", tmp_path / "out"]
        code, _, err = cli(capsys, *argv)
        lines = err.strip().splitlines()
        assert code == 2 and expected in lines[-1] and len(lines) <= 2, (argv, err)
        assert not (tmp_path / "out").exists(), argv


def test_a_params_file_with_only_best_params_starts_from_the_defaults(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"best_params": {"outer_lr": 0.002}}))
    assert tune.read_params(path) == LEOConfig(outer_lr=0.002)
    path.write_text(json.dumps({"leo_config": {"outer_lr": "fast"}}))
    with pytest.raises(UserError, match="--params"):
        tune.read_params(path)


# ------------------------------------------------------------------------------ compare
def test_compare_gives_every_meta_learned_method_the_same_budget(bank):
    methods = ["nearest-centroid", "protonet", "maml", "LEO"]
    tuned = tune.tune_methods(
        bank, TINY, preset("synthetic"), methods, 2, device="cpu", log=lambda m: None
    )
    assert set(tuned) == {"protonet", "maml", "LEO"}  # nearest centroid has nothing to tune
    for name, t in tuned.items():
        assert t["trials"] == 2 and len(t["summary"]["trials"]) == 2
        assert set(t["params"]) == set(compare.METHODS[name].search_space(preset("synthetic")))
    rows = compare.run_comparison(
        bank, TINY, preset("synthetic"), methods, device="cpu", log=lambda m: None, tuned=tuned
    )
    by = {r["method"]: r for r in rows}
    assert by["nearest-centroid"]["tuned_trials"] == 0 and by["LEO"]["tuned_trials"] == 2
    assert by["maml"]["tuned_params"] == tuned["maml"]["params"]
    assert "inner_lr_init" not in by["maml"]  # tuned, not also chosen from the S^val grid
    assert by["LEO"]["val_accuracy"] == tuned["LEO"]["val_accuracy"]  # the best trial, refitted
    assert "tuned: 2 trials on S^val" in compare.format_table(rows)
    untuned = compare.run_comparison(
        bank, TINY, preset("synthetic"), ["LEO"], device="cpu", log=lambda m: None
    )
    assert compare.format_table(untuned).splitlines()[-1].startswith("hyper-parameters untuned")


# ------------------------------------------------------------------------------ --preset auto
def test_auto_keeps_the_paper_presets_only_for_the_official_files_on_the_official_schedule():
    pick = SOURCES["leo-pickles"].preset
    mini = leo_pickles_spec("/data", "miniImageNet")
    tiered = leo_pickles_spec("/data", "tieredImageNet")
    assert pick(mini, 5, 1, 100_000) == "mini-1shot"
    assert pick(tiered, 5, 5, 100_000) == "tiered-5shot"
    assert pick(mini, 5, 1, 3000) == "cpu-1shot"  # the new user: a short schedule
    assert pick(mini, 5, 5, 12_000) == "cpu-5shot"
    assert pick(mini, 10, 1, 100_000) == "cpu-1shot"  # the paper tuned 5-way only
    assert pick(leo_pickles_spec("/data", "myEmbeddings"), 5, 1, 100_000) == "cpu-1shot"
    assert SOURCES["glyphs"].preset(glyphs_spec(), 5, 5, 2000) == "cpu-5shot"
    assert SOURCES["synthetic"].preset(synthetic_spec(), 5, 1, 2000) == "cpu-1shot"


def test_the_shipped_cpu_presets_are_what_the_robustness_benchmark_chose():
    measured = json.loads((ASSETS / "robustness.json").read_text())
    for name, params in measured["presets"].items():
        assert PRESETS[name] == params, name
    assert set(PRESETS["cpu-1shot"]) == set(LEO_SEARCH_SPACE)


def test_the_shipped_study_loads_and_plots():
    from matplotlib.figure import Figure

    summary = tune.load_summary(tune.asset_path("glyphs-raw", 1))
    assert len(summary["trials"]) >= 30 and summary["best_params"]
    fig = Figure()
    tune.plot_trials(summary, fig.add_subplot(121))
    tune.plot_importances(summary, fig.add_subplot(122))


def test_a_study_summary_reads_as_text_most_important_parameter_first():
    summary = {
        "study_name": "s",
        "data": {"source": "glyphs"},
        "train_config": {"n_way": 5, "k_shot": 1, "steps": 200, "val_every": 50, "val_tasks": 9},
        "base_config": {"outer_lr": 1e-4, "dropout_rate": 0.5},
        "space": {"outer_lr": [5e-5, 1e-2, True], "dropout_rate": [0.0, 0.6, False]},
        "sampler": "random",
        "best_trial": 2,
        "best_val_accuracy": 0.625,
        "best_params": {"outer_lr": 0.004, "dropout_rate": 0.25},
        "importances": {"outer_lr": 0.25, "dropout_rate": 0.75},
        "trials": [{"state": "complete"}, {"state": "pruned"}, {"state": "complete"}],
        "test": {"accuracy": 0.5, "ci95": 0.0125, "tasks": 40},
    }
    lines = tune.format_summary(summary).splitlines()
    assert lines[2] == "3 trials (random sampler): 2 complete, 1 pruned"
    assert lines[3] == "best: trial 2, S^val accuracy 62.50%"
    assert lines[5].split() == ["dropout_rate", "0..0.6", "0.5", "0.25", "75.0%"]
    assert lines[6].split() == ["outer_lr", "5e-05..0.01", "(log)", "0.0001", "0.004", "25.0%"]
    assert lines[7].endswith("50.00% +- 1.25% on 40 S^test tasks")
    shipped = tune.load_summary(tune.asset_path("glyphs-raw", 1))
    text = tune.format_summary(shipped)
    assert f"S^val accuracy {100 * shipped['best_val_accuracy']:.2f}%" in text
    assert "S^test" not in text  # the shipped study is S^val only


@pytest.mark.slow
def test_cli_compare_tune_trials_says_so_in_its_table_and_rows(capsys):
    fast = CLI_FAST[: CLI_FAST.index("--queries")]  # compare has no --queries, --batch-size
    args = ["compare", *fast, "--methods", "nearest-centroid,protonet,LEO"]
    code, out, err = cli(capsys, *args, "--tune-trials", 2)
    assert code == 0, err
    assert out.strip().splitlines()[-1].startswith("hyper-parameters tuned: 2 trials on S^val")
    assert "protonet: searching outer_lr (2 trials on S^val)" in err
    code, out, err = cli(capsys, *args, "--tune-trials", 2, "--json")
    rows = {r["method"]: r for r in strict_loads(out)}
    assert rows["LEO"]["tuned_trials"] == 2 and rows["nearest-centroid"]["tuned_trials"] == 0
    assert set(rows["protonet"]["tuned_params"]) == {"outer_lr"}


def test_params_found_on_another_task_shape_get_a_note(tmp_path):
    path = tmp_path / "best_params.json"
    spec = synthetic_spec()
    path.write_text(
        json.dumps({"leo_config": {}, "data": spec, "train_config": {"n_way": 5, "k_shot": 1}})
    )
    assert tune.params_note(path, spec, 5, 1) is None
    note = tune.params_note(path, spec, 5, 5)
    assert note.startswith("note: --params") and "shot 1" in note
    assert "data" in tune.params_note(path, glyphs_spec(), 5, 1)
