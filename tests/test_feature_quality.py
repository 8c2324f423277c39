"""The feature-quality study: every method on the same test tasks, paired margins, LEO at step 0,
the quality axis on meta-val, the shipped study and its figure."""

import json
from unittest.mock import ANY

import numpy as np
import pytest

from leo_tutorial import feature_quality as fq
from leo_tutorial.config import TrainConfig, preset
from leo_tutorial.errors import UserError

TINY = TrainConfig(
    k_shot=1,
    n_query=5,
    batch_size=4,
    steps=6,
    val_every=3,
    val_tasks=10,
    test_tasks=12,
    eval_n_query=5,
    eval_batch_size=4,
    seed=3,
)


@pytest.fixture(scope="module")
def bank(tiny_bank):
    return tiny_bank


@pytest.fixture(scope="module")
def result(bank):
    return fq.measure(bank, TINY, preset("synthetic", num_latents=8), log=lambda m: None)


def test_margins_are_paired_differences_on_the_same_tasks(result):
    methods = result["methods"]
    assert set(methods) == {*fq.METHODS, fq.STEP0} and result["tasks"] == 12
    for name, (mean, ci) in result["margins"].items():
        # the mean of per-task differences is the difference of the means: same tasks
        assert mean == pytest.approx(methods["LEO"]["accuracy"] - methods[name]["accuracy"])
        assert ci >= 0
    assert "LEO" not in result["margins"]
    assert result["val_gain"] == pytest.approx(
        methods["LEO"]["val_accuracy"] - methods[fq.STEP0]["val_accuracy"]
    )
    assert methods[fq.STEP0]["best_step"] == 0 and "probe_c" in methods["logreg"]


def test_step0_is_the_initialisation_leo_is_trained_from(bank, result):
    zero = fq.measure(
        bank, TINY.replace(steps=0), preset("synthetic", num_latents=8), log=lambda m: None
    )
    # with no meta-training LEO *is* its step-0 model: zero margin, zero gain, exactly
    assert zero["margins"][fq.STEP0] == [0.0, 0.0] and zero["val_gain"] == 0.0
    assert zero["methods"][fq.STEP0]["accuracy"] == result["methods"][fq.STEP0]["accuracy"]


def test_leo_is_the_candidate_with_the_best_meta_val_accuracy(bank, result):
    slow = preset("default", num_latents=8)  # outer_lr 1e-4: hardly moves in 6 steps
    fast = preset("synthetic", num_latents=8)
    both = fq.measure(bank, TINY, {"slow": slow, "fast": fast}, log=lambda m: None)
    leo = both["methods"]["LEO"]
    assert set(leo["candidates"]) == {"slow", "fast"}
    assert leo["val_accuracy"] == max(leo["candidates"].values())
    assert leo["candidates"][leo["preset"]] == leo["val_accuracy"]
    assert leo["candidates"]["fast"] == result["methods"]["LEO"]["val_accuracy"]  # same fit
    assert both["methods"][fq.STEP0] == {**result["methods"][fq.STEP0], "seconds": ANY}


def test_quality_is_nearest_centroid_one_shot_on_meta_val(bank, result):
    quality = fq.feature_quality(bank, TINY)
    assert quality == result["methods"]["nearest-centroid"]["val_accuracy"]  # TINY is 1-shot
    assert quality == fq.feature_quality(bank, TINY.replace(k_shot=5, steps=99))
    assert 0.0 < quality < 1.0


def _study(result):
    levels = []
    for name, quality in [("b", 0.9), ("a", 0.5)]:
        levels.append({"name": name, "quality": quality, "shots": {"1": result}})
    return {"format": fq.STUDY_FORMAT, "setting": {}, "levels": levels}


def test_study_round_trip_table_and_errors(result, tmp_path):
    study = _study(result)
    path = fq.save_study(tmp_path / "study.json", study)
    assert fq.load_study(path) == json.loads(json.dumps(study))
    rows = fq.study_table(study, 1)
    assert [r["level"] for r in rows] == ["a", "b"] and rows[0]["quality"] == 50.0
    assert rows[0]["LEO"] == 100 * result["methods"]["LEO"]["accuracy"]
    assert fq.study_table(study, 5) == []
    assert "LEO - NC" in fq.format_study(study, 1)
    with pytest.raises(UserError, match="not found"):
        fq.load_study(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(UserError, match="not valid JSON"):
        fq.load_study(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text("[]")
    with pytest.raises(UserError, match="not a feature-quality study"):
        fq.load_study(tmp_path / "other.json")


def test_plot_draws_accuracies_and_margins_against_quality(result):
    fig = fq.plot_study(_study(result), shots=(1,))
    top, bottom = fig.axes
    assert len(top.lines) >= len(fq.METHODS) + 1 and len(bottom.get_legend().texts) == 3
    x = sorted(
        {float(v) for line in bottom.lines for v in np.atleast_1d(line.get_xdata())} - {0.0, 1.0}
    )
    assert x == [50.0, 90.0]
    leo_nc = 100 * result["margins"]["nearest-centroid"][0]
    assert any(np.allclose(line.get_ydata(), [leo_nc, leo_nc]) for line in bottom.lines)
    with pytest.raises(UserError, match="no 5-shot"):
        fq.plot_study(_study(result), shots=(5,))


def test_the_shipped_study_covers_every_level_and_shot():
    study = fq.load_study()
    names = {lv["name"] for lv in study["levels"]}
    assert names == {recipe.name for _, recipe in fq.LEVELS}
    for level in study["levels"]:
        assert set(level["shots"]) == {"1", "5"}
        for result in level["shots"].values():
            assert set(result["methods"]) == {*fq.METHODS, fq.STEP0}


# ------------------------------------------------------------------ the shipped teaching setting
def test_the_teaching_setting_meets_the_issue_targets_in_its_shipped_files():
    """glyphs-untrained: meta-val rises >= 10 points from step 0 to the kept step, LEO leads
    nearest centroid and the probe with a paired 95% CI that excludes zero, 40-85% accuracy."""
    from leo_tutorial.compare import asset_path, load_rows
    from leo_tutorial.sources import ASSETS

    run = ASSETS / "glyphs_untrained_leo_1shot"
    history = json.loads((run / "metrics.json").read_text())
    test = json.loads((run / "test.json").read_text())
    val = {h["step"]: h["accuracy"] for h in history["val"]}
    assert val[test["best_step"]] - val[0] >= 0.10
    assert 0.40 <= test["accuracy"] <= 0.85 and test["way"] == 5 and test["shot"] == 1
    rows = {r["method"]: r for r in load_rows(asset_path("glyphs-untrained", 1))}
    for baseline in ("nearest-centroid", "logreg"):
        assert rows[baseline]["leo_margin"] - rows[baseline]["leo_margin_ci95"] > 0
    # compare fits LEO exactly as train does, on the same test tasks: the same number
    assert rows["LEO"]["accuracy"] == pytest.approx(test["accuracy"], abs=1e-12)
    assert rows["LEO"]["best_step"] == test["best_step"]
