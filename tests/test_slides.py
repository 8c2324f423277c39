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
from slides import (  # noqa: E402
    BUDGET,
    HIDE_INPUT,
    add_slide_metadata,
    code_height,
    deck_notebook,
    markdown_height,
    slide_types,
    split_at_headings,
)

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
    cells = deck_notebook(nbformat.read(path, as_version=4)).cells
    types = [cell.metadata["slideshow"]["slide_type"] for cell in cells]
    # nbconvert opens <section><section> per slide and one more <section> per subslide
    assert _sections(html) == 2 * types.count("slide") + types.count("subslide")
    assert html.count('class="jp-Cell ') == len(types) - types.count("skip")
    assert html.count('class="fragment"') == types.count("fragment")
    assert "width: 1280" in html and "height: 720" in html  # reveal's canvas
    hidden = [cell for cell in cells if HIDE_INPUT in cell.metadata.get("tags", [])]
    assert hidden and hidden[0].source.splitlines()[0] not in html  # long code: output only
    assert "NBVAL_CHECK_OUTPUT" not in html
    assert "<img" in html  # the figures, embedded as data URIs
    loaded = re.findall(r'<script src="([^"]+)"|<link href="([^"]+)"', html)
    urls = [u for pair in loaded for u in pair if u]
    urls += re.findall(r'"([^"]*/(?:reveal|notes)\.js)"', html)
    assert urls and all(u.startswith("_assets/") for u in urls), urls
    assert "unpkg.com" not in html


@pytest.mark.slow
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


def test_deck_cuts_long_cells_and_starts_a_slide_when_the_screen_is_full():
    prose = " ".join(["A sentence of about sixty characters, give or take a few."] * 8)
    long_code = "\n".join(f"x{i} = {i}" for i in range(14))
    nb = new_notebook(
        cells=[
            new_markdown_cell("# Title\n\n" + "\n\n".join([prose] * 6)),
            new_code_cell("# NBVAL_CHECK_OUTPUT\nprint(1)"),
            new_code_cell(long_code),
            new_code_cell("short = 1"),
            new_markdown_cell("## Section\n\nText."),
        ]
    )
    deck = deck_notebook(nb)
    kinds = [cell.metadata["slideshow"]["slide_type"] for cell in deck.cells]
    assert kinds[0] == "slide" and kinds.count("slide") == 2  # the two headings
    assert len(deck.cells) > len(nb.cells)  # the long markdown cell was cut at paragraphs
    assert deck.cells[0].source.startswith("# Title")
    sources = [cell.source for cell in deck.cells]
    assert "print(1)" in sources  # the nbval marker is not shown
    hidden = [c for c in deck.cells if HIDE_INPUT in c.metadata.get("tags", [])]
    assert [c.source for c in hidden] == [long_code]
    height = 0  # every slide's estimated content fits
    for cell, kind in zip(deck.cells, kinds, strict=True):
        h = markdown_height(cell.source) if cell.cell_type == "markdown" else code_height(cell)
        height = h if kind in ("slide", "subslide") else height + h
        assert height <= BUDGET or kind in ("slide", "subslide")
    assert len(nb.cells) == 5 and nb.cells[1].source.startswith("# NBVAL")  # input untouched


def test_a_cell_with_several_tall_outputs_becomes_one_piece_per_output():
    import base64
    import struct
    import zlib

    def png(width, height):  # a valid PNG header is all the estimate reads
        ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
        chunk = struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(ihdr))
        return base64.b64encode(b"\x89PNG\r\n\x1a\n" + chunk).decode()

    cell = new_code_cell("plot()")
    cell.outputs = [
        nbformat.v4.new_output("display_data", data={"image/png": png(900, 400)}) for _ in range(2)
    ]
    nb = new_notebook(cells=[new_markdown_cell("# T"), cell])
    deck = deck_notebook(nb)
    assert [len(c.get("outputs", [])) for c in deck.cells] == [0, 1, 1]
    assert HIDE_INPUT in deck.cells[2].metadata["tags"]  # the code is shown once
    assert deck.cells[2].metadata["slideshow"]["slide_type"] == "subslide"


# ----------------------------------------------- every deck fits a 1280 x 720 screen (Chromium)
CHROMIUM = Path("/usr/bin/chromium")
BROWSER_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
REVEAL = "require('_assets/reveal.js/dist/reveal.js')"
MEASURE = f"""async () => {{
  const R = {REVEAL}; const cfg = R.getConfig(); const out = [];
  for (const s of R.getSlides()) {{
    const i = R.getIndices(s); R.slide(i.h, i.v || 0);
    await new Promise(r => setTimeout(r, 50));
    out.push({{h: i.h, v: i.v || 0, height: s.scrollHeight}});
  }}
  return {{width: cfg.width, height: cfg.height, slides: out}};
}}"""


@pytest.fixture(scope="module")
def decks(tmp_path_factory):
    """Every notebook's deck with local reveal.js (fetched once with npm, or reused)."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found (Debian: apt-get install chromium)")
    pytest.importorskip("playwright")
    out = ROOT / "build" / "slides"
    out.mkdir(parents=True, exist_ok=True)
    try:
        build_slides.fetch_assets(out)
    except SystemExit as error:  # no npm or no registry
        pytest.skip(f"cannot fetch reveal.js for the decks: {error}")
    target = tmp_path_factory.mktemp("decks")
    (target / "_assets").symlink_to(out / "_assets")
    export = build_slides.exporter("local")
    return [build_slides.build_deck(path, target, export) for path in NOTEBOOKS]


@pytest.mark.slow
def test_every_slide_of_every_deck_fits_a_1280_by_720_screen(decks):
    from playwright.sync_api import sync_playwright

    too_tall = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=BROWSER_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 720})
        for deck in decks:
            page.goto(deck.as_uri())
            page.wait_for_function(
                f"() => {{ try {{ return {REVEAL}.isReady(); }} catch (e) {{ return false; }} }}",
                timeout=60_000,
            )
            page.wait_for_timeout(1000)  # MathJax typesets after reveal is ready
            info = page.evaluate(MEASURE)
            assert (info["width"], info["height"]) == (1280, 720)
            too_tall += [
                f"{deck.name} slide {s['h']}/{s['v']}: {s['height']} px"
                for s in info["slides"]
                if s["height"] > info["height"]
            ]
        browser.close()
    assert not too_tall, "slides taller than the screen:\n" + "\n".join(too_tall)
