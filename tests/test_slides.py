"""Slides: the slide-metadata rule (scripts/slides.py) and the decks nbconvert builds from it
(scripts/build_slides.py)."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import build_slides  # noqa: E402
from slides import add_slide_metadata, slide_types, split_at_headings  # noqa: E402

NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _types(nb: nbformat.NotebookNode) -> list[str | None]:
    return [cell.metadata.get("slideshow", {}).get("slide_type") for cell in nb.cells]


def test_rule_on_a_small_notebook():
    nb = new_notebook(
        cells=[
            new_markdown_cell("# 07 · Title\n\nGoal."),
            new_code_cell(
                "import torch\nfrom leo_tutorial.viz import setup_notebook; setup_notebook(seed=0)"
            ),
            new_markdown_cell("## 1. A section"),
            new_markdown_cell("We compute the logits."),
            new_code_cell("logits = x @ w"),
            new_markdown_cell("**What to notice:** the shape is `[B, N, V, N]`."),
            new_markdown_cell("What to see: the curve.\n\n## 2. The next section\n\nIntro."),
            new_markdown_cell("### A detail"),
            new_markdown_cell("```python\n# not a heading\n```\nText, then `#` mid-line."),
            new_code_cell("setup_notebook(seed=1)  # a second call is ordinary code"),
            new_markdown_cell("Intro text.\n\n#### A minor heading"),
        ]
    )
    assert slide_types(nb) == [
        "slide",
        "skip",
        "slide",
        "-",
        "-",
        "fragment",
        "slide",
        "subslide",
        "-",
        "-",
        "-",
    ]


def test_split_at_headings_for_decks():
    nb = new_notebook(
        cells=[
            new_markdown_cell("**What to see:** the curve.\n\n## 2. Next\n\nIntro."),
            new_markdown_cell("## Summary\n\n- a\n\n## Exercises\n\n### Hard\n1. b\n#### Minor"),
            new_markdown_cell("Text\n```python\n## not a heading\n```"),
            new_code_cell("## a comment, not markdown\nx = 1"),
        ]
    )
    split = split_at_headings(nb)
    nbformat.validate(split)
    assert [c.source for c in split.cells] == [
        "**What to see:** the curve.",
        "## 2. Next\n\nIntro.",
        "## Summary\n\n- a",
        "## Exercises",
        "### Hard\n1. b\n#### Minor",
        "Text\n```python\n## not a heading\n```",
        "## a comment, not markdown\nx = 1",
    ]
    assert len({c.id for c in split.cells}) == len(split.cells)
    assert slide_types(split) == ["fragment", "slide", "slide", "slide", "subslide", "-", "-"]
    assert len(nb.cells) == 4  # the input is left alone


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_rule_is_idempotent_and_touches_only_slideshow(path):
    original = nbformat.read(path, as_version=4)
    for cell in original.cells:
        cell.metadata.pop("slideshow", None)
    once = add_slide_metadata(copy.deepcopy(original))
    twice = add_slide_metadata(copy.deepcopy(once))
    assert twice == once
    stripped = copy.deepcopy(once)
    for cell in stripped.cells:
        del cell.metadata["slideshow"]
    assert stripped == original


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_notebook_makes_a_lecture_deck(path):
    """Title slide first, the setup cell hidden, one slide per section (at least 4)."""
    nb = nbformat.read(path, as_version=4)
    types = slide_types(nb)
    assert types[0] == "slide", "the title cell must open the deck"
    skipped = [cell for cell, t in zip(nb.cells, types, strict=True) if t == "skip"]
    assert len(skipped) == 1 and "setup_notebook(" in skipped[0].source
    assert types.count("slide") >= 4, f"{path.name}: too few sections for a deck"


# Re-executing the notebooks with scripts/execute_notebooks.py writes the metadata; this check
# then guards against a notebook committed from elsewhere (e.g. saved from JupyterLab).
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebooks_carry_the_rules_metadata(path):
    nb = nbformat.read(path, as_version=4)
    assert _types(nb) == slide_types(nb), (
        f"{path.name}: slide metadata missing or stale; re-run "
        f"python scripts/execute_notebooks.py {path.relative_to(ROOT)}"
    )


def _sections(html: str) -> int:
    return html.count("<section>")


def test_deck_from_nbconvert_follows_the_rule(tmp_path):
    """A real deck of one notebook (committed outputs, cells split at headings) has one
    section per slide/subslide, every cell but the setup cell, its fragments, and only local
    asset URLs."""
    path = ROOT / "notebooks" / "02_encoder_relation_net.ipynb"
    deck = build_slides.build_deck(path, tmp_path, build_slides.exporter("local"))
    html = deck.read_text(encoding="utf-8")
    types = slide_types(split_at_headings(nbformat.read(path, as_version=4)))
    # nbconvert opens <section><section> per slide and one more <section> per subslide
    assert _sections(html) == 2 * types.count("slide") + types.count("subslide")
    assert html.count('class="jp-Cell ') == len(types) - types.count("skip")
    assert html.count('class="fragment"') == types.count("fragment")
    assert "<img" in html  # the figures, embedded as data URIs
    loaded = re.findall(r'<script src="([^"]+)"|<link href="([^"]+)"', html)
    urls = [u for pair in loaded for u in pair if u]
    urls += re.findall(r'"([^"]*/(?:reveal|notes)\.js)"', html)
    assert urls and all(u.startswith("_assets/") for u in urls), urls
    assert "unpkg.com" not in html


def test_build_slides_command(tmp_path):
    path = ROOT / "notebooks" / "02_encoder_relation_net.ipynb"
    cmd = [
        sys.executable,
        str(ROOT / "scripts" / "build_slides.py"),
        str(path),
        "--out",
        str(tmp_path),
        "--assets",
        "cdn",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    html = (tmp_path / "02_encoder_relation_net.slides.html").read_text(encoding="utf-8")
    assert "https://unpkg.com/reveal.js@4.0.2/dist/reveal.js" in html


def test_build_slides_names_a_missing_notebook(tmp_path):
    with pytest.raises(SystemExit, match="no such notebook: .*nope.ipynb"):
        build_slides.main([str(tmp_path / "nope.ipynb"), "--out", str(tmp_path)])
