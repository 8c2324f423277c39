"""Image sources end to end: images -> stage-1 backbone -> feature bank -> LEO, from the CLI."""

import json

import pytest
from test_data_omniglot import make_fake_omniglot

from leo_tutorial.cli import main
from leo_tutorial.config import PRESETS
from leo_tutorial.features import SHIPPED_BACKBONES
from leo_tutorial.sources import glyphs_spec, load_bank, omniglot_spec


@pytest.fixture(scope="module", autouse=True)
def private_cache(tmp_path_factory):
    """Renders and trained backbones go to a temporary cache, never the user's (shared by
    this module's tests, so the glyphs are rendered once)."""
    root = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(root))
        yield root / "leo-tutorial"


def test_omniglot_trains_a_backbone_once_then_reuses_it(tmp_path, private_cache, capsys):
    make_fake_omniglot(tmp_path / "omniglot")
    args = [
        "train",
        "--data",
        "omniglot",
        "--data-dir",
        str(tmp_path / "omniglot"),
        "--way",
        "2",
        "--shot",
        "1",
        "--queries",
        "2",
        "--steps",
        "2",
        "--val-every",
        "2",
        "--val-tasks",
        "4",
        "--test-tasks",
        "4",
        "--no-progress",
    ]
    assert main([*args, "--out", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    assert "pre-training the stage-1 backbone on 9 omniglot meta-train classes" in err
    cached = [p.name for p in private_cache.iterdir() if p.name.startswith("omniglot-")]
    assert len(cached) == 1 and cached[0].startswith("omniglot-convnet4-")
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["data"] == omniglot_spec(tmp_path / "omniglot")
    outer_lr = PRESETS["cpu-1shot"]["outer_lr"]  # auto preset off the official files
    assert record["leo_config"]["outer_lr"] == outer_lr
    assert main([*args, "--out", str(tmp_path / "again")]) == 0
    assert "pre-training" not in capsys.readouterr().err  # the cached backbone is reused
    assert main(["evaluate", str(tmp_path / "run"), "--tasks", "4", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["way"] == 2


def test_omniglot_needs_a_data_dir(tmp_path, capsys):
    assert main(["train", "--data", "omniglot", "--out", str(tmp_path / "run")]) == 2
    assert "--data-dir" in capsys.readouterr().err and not (tmp_path / "run").exists()


@pytest.mark.slow
@pytest.mark.skipif(not SHIPPED_BACKBONES["glyphs"].is_file(), reason="no shipped backbone")
def test_glyphs_use_the_shipped_backbone(private_cache):
    bank = load_bank(glyphs_spec(), log=lambda m: None, progress=False)
    assert bank.name == "glyphs/convnet4"
    assert bank.split("train").n_classes > 1000 and bank.dim == 32
    assert not any(p.name.startswith("glyphs-convnet4") for p in private_cache.iterdir())


def test_prepare_omniglot_retrains_and_exports_the_official_layout(tmp_path, private_cache, capsys):
    make_fake_omniglot(tmp_path / "omniglot")
    args = [
        "prepare",
        "omniglot",
        "--data-dir",
        str(tmp_path / "omniglot"),
        "--epochs",
        "1",
        "--no-progress",
        "--out",
        str(tmp_path / "emb"),
    ]
    assert main(args) == 0
    assert "train: 9 classes, 36 images -> 32-d" in capsys.readouterr().out
    assert main([*args, "--retrain"]) == 0
    assert "pre-training" in capsys.readouterr().err  # --retrain trains again
    bank = load_bank(
        {
            "source": "leo-pickles",
            "data_dir": str(tmp_path / "emb"),
            "dataset": "omniglot",
            "crop": "center",
        }
    )
    assert bank.split("train").n_classes == 9 and bank.dim == 32
    assert main(["prepare", "omniglot"]) == 2
    assert "--data-dir" in capsys.readouterr().err


@pytest.mark.slow
def test_the_readme_main_job_runs(tmp_path, capsys):
    """The README's main-job command, as written there, with a shorter schedule appended."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    line = next(x for x in readme.splitlines() if ".venv/bin/leo-tutorial train" in x)
    argv = line.split(".venv/bin/leo-tutorial", 1)[1].split()
    out = argv.index("--out")
    argv[out + 1] = str(tmp_path / "quickstart")
    fast = [
        "--steps",
        "100",
        "--val-every",
        "50",
        "--val-tasks",
        "50",
        "--test-tasks",
        "100",
        "--no-progress",
    ]
    assert main([*argv, *fast]) == 0
    assert "test accuracy" in capsys.readouterr().out
    assert (tmp_path / "quickstart" / "test.json").is_file()


def test_glyphs_untrained_are_the_untrained_convnets_prepool_features(private_cache):
    import torch

    from leo_tutorial.data import GlyphConfig, render_glyphs
    from leo_tutorial.features import ConvNet4, embed
    from leo_tutorial.sources import SOURCES, glyphs_untrained_spec

    small = GlyphConfig(
        blocks=("Basic Latin", "Greek and Coptic", "Hebrew"), max_classes_per_block=8
    )
    spec = glyphs_untrained_spec(small)

    def banks():  # the module's cache is shared: count only the files this test adds
        found = private_cache.iterdir() if private_cache.is_dir() else ()
        return {p.name for p in found if p.name.startswith("glyphs-bank-")}

    before = banks()
    bank = load_bank(spec, log=lambda m: None, progress=False)
    assert bank.name == "glyphs/untrained-prepool" and bank.dim == 32 * 3 * 3
    torch.manual_seed(0)  # the recipe's seed: ConvNet4's initial weights, not trained
    images = render_glyphs(small, progress=False).split("val").images
    expected = embed(ConvNet4(channels=32).eval(), images, layer="prepool")
    assert (bank.split("val").embeddings == expected).all()
    assert len(banks() - before) == 1  # embedded once; an untrained backbone is not cached
    again = load_bank(spec, log=lambda m: None, progress=False)
    assert (again.split("train").embeddings == bank.split("train").embeddings).all()
    assert SOURCES["glyphs-untrained"].preset(spec, 5, 1, 3000) == "weak-features"


def test_prepare_refuses_retrain_for_a_fixed_backbone(capsys):
    assert main(["prepare", "glyphs-untrained", "--retrain"]) == 2
    err = capsys.readouterr().err
    assert "--retrain does not apply to glyphs-untrained" in err and "rendering" not in err
