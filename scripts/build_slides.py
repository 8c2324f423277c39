"""Build a reveal.js lecture deck of every notebook into build/slides/.

    .venv/bin/python scripts/build_slides.py                  # every notebooks/NN_*.ipynb
    .venv/bin/python scripts/build_slides.py notebooks/04_inner_loop.ipynb --out /tmp/decks
    .venv/bin/python scripts/build_slides.py --assets cdn     # no npm: load JS from the web

Each deck is nbconvert's reveal.js export of the notebook (its committed outputs, nothing is
executed) cut for a 1280 x 720 screen by ``slides.deck_notebook``: a slide per section, long
markdown cells cut at paragraphs, a new vertical slide wherever the estimated content would
overflow the screen, code cells longer than ten lines (and the set-up cell) shown by their output
only, ``# NBVAL_*`` markers dropped; no scrolling slides. ``tests/test_slides.py`` measures every
slide of every deck in headless Chromium. Open ``build/slides/NN_name.slides.html`` in a browser;
arrow keys move between slides, space reveals the "What to notice" fragments, ``s`` opens the
speaker view.

Offline viewing (``--assets local``, the default): the JavaScript a deck needs — reveal.js
4.0.2 (the version nbconvert's template is written for), jQuery, require.js and MathJax 2.7 —
is fetched once with ``npm pack`` from the npm registry into ``build/slides/_assets/`` and the
decks point at it by relative URLs (``--SlidesExporter.reveal_url_prefix``,
``--HTMLExporter.mathjax_url``, ``jquery_url``, ``require_js_url``). The folder
``build/slides`` then works from a USB stick or a lecture-hall PC with no network. The one
remaining web reference is nbconvert's unconditional Mermaid import, which fails silently
offline (no notebook draws Mermaid diagrams). ``--assets cdn`` keeps nbconvert's CDN URLs.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import nbformat
from nbconvert import SlidesExporter
from nbconvert.preprocessors import TagRemovePreprocessor
from slides import DECK_HEIGHT, DECK_WIDTH, HIDE_INPUT, deck_notebook  # scripts/slides.py

from leo_tutorial.io import atomic_write

ROOT = Path(__file__).resolve().parent.parent
ASSETS = "_assets"  # folder next to the decks; URLs below are relative to a deck
# npm package -> (folder under _assets, which members of the package to keep)
NPM_PACKAGES = {
    "reveal.js@4.0.2": "reveal.js",
    "jquery@3.7.1": "jquery",
    "requirejs@2.3.7": "requirejs",
    "mathjax@2.7.7": "mathjax",
}
LOCAL_URLS = {
    "reveal_url_prefix": f"{ASSETS}/reveal.js",
    "jquery_url": f"{ASSETS}/jquery/dist/jquery.min.js",
    "require_js_url": f"{ASSETS}/requirejs/require.js",
    "mathjax_url": f"{ASSETS}/mathjax/MathJax.js?config=TeX-AMS_CHTML-full,Safe",
}


def _keep(folder: str, name: str) -> bool:
    """Skip MathJax's unpacked sources and every font but TeX woff (about 90% of its size)."""
    if folder != "mathjax":
        return True
    if name.startswith("package/unpacked/"):
        return False
    return not name.startswith("package/fonts/") or name.startswith(
        "package/fonts/HTML-CSS/TeX/woff/"
    )


def fetch_assets(out_dir: Path) -> Path:
    """Put reveal.js, jQuery, require.js and MathJax under ``out_dir/_assets`` (once)."""
    assets = out_dir / ASSETS
    if all((assets / folder).is_dir() for folder in NPM_PACKAGES.values()):
        return assets
    if shutil.which("npm") is None:
        sys.exit(
            "error: offline decks need npm to fetch reveal.js once; install Node.js/npm "
            "or run with --assets cdn (the deck then needs the web when shown)"
        )
    with tempfile.TemporaryDirectory() as tmp:
        result = subprocess.run(
            ["npm", "pack", "--silent", "--pack-destination", tmp, *NPM_PACKAGES],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            sys.exit(
                f"error: npm pack failed ({result.stderr.strip()[-300:]}); "
                "run with --assets cdn to build decks that load reveal.js from the web"
            )
        tarballs = sorted(Path(tmp).glob("*.tgz"))
        for spec, folder in NPM_PACKAGES.items():
            name = spec.rsplit("@", 1)[0]
            tarball = next(t for t in tarballs if t.name.startswith(f"{name}-"))
            target = Path(tmp) / folder
            with tarfile.open(tarball) as tar:
                members = [m for m in tar.getmembers() if _keep(folder, m.name)]
                tar.extractall(target, members=members, filter="data")
            shutil.rmtree(assets / folder, ignore_errors=True)
            assets.mkdir(parents=True, exist_ok=True)
            shutil.move(target / "package", assets / folder)
    return assets


# Sizes for a 1280 x 720 screen; scripts/slides.py estimates heights with the same numbers.
DECK_CSS = f"""<style type="text/css">
.reveal .jp-RenderedHTMLCommon {{ font-size: 22px; line-height: 1.35; }}
.reveal .jp-RenderedHTMLCommon h1 {{ font-size: 40px; }}
.reveal .jp-RenderedHTMLCommon h2 {{ font-size: 34px; }}
.reveal .jp-RenderedHTMLCommon h3 {{ font-size: 28px; }}
.reveal .jp-InputArea-editor pre, .reveal .jp-OutputArea-output pre {{ font-size: 15px;
  line-height: 1.35; }}
.reveal blockquote {{ width: 96%; font-style: normal; margin: 12px 0; padding: 4px 16px;
  font-size: 20px; }}
.reveal .jp-InputPrompt, .reveal .jp-OutputPrompt {{ display: none; }}
.reveal .jp-OutputArea-output pre {{ max-height: 360px; overflow-y: auto; }}
.reveal .jp-OutputArea-output img {{ max-height: 470px; max-width: 1180px; width: auto; }}
.reveal .slides {{ text-align: left; }}
</style>
<!-- deck size {DECK_WIDTH} x {DECK_HEIGHT} -->
"""


def exporter(assets: str) -> SlidesExporter:
    """nbconvert's slides exporter for a 1280 x 720 screen, no scrolling, code cells tagged
    ``HIDE_INPUT`` shown by their output only; local asset URLs unless ``cdn``."""
    export = SlidesExporter(
        reveal_scroll=False, reveal_width=str(DECK_WIDTH), reveal_height=str(DECK_HEIGHT)
    )
    export.register_preprocessor(
        TagRemovePreprocessor(remove_input_tags={HIDE_INPUT}, enabled=True), enabled=True
    )
    if assets == "local":
        for name, url in LOCAL_URLS.items():
            setattr(export, name, url)
    return export


def build_deck(path: Path, out_dir: Path, export: SlidesExporter) -> Path:
    """Write ``out_dir/<name>.slides.html`` for the notebook at ``path``; returns its path."""
    nb = deck_notebook(nbformat.read(path, as_version=4))
    html, _resources = export.from_notebook_node(nb, resources={"metadata": {"name": path.stem}})
    html = html.replace("</head>", DECK_CSS + "</head>", 1)
    target = out_dir / f"{path.stem}.slides.html"
    return atomic_write(target, lambda f: f.write(html.encode("utf-8")))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "notebooks",
        nargs="*",
        type=Path,
        help="notebooks to build (default: every notebooks/NN_*.ipynb)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "build" / "slides",
        help="output folder (default: build/slides)",
    )
    parser.add_argument(
        "--assets",
        choices=("local", "cdn"),
        default="local",
        help="local: copy reveal.js & co. next to the decks, viewable offline "
        "(needs npm once); cdn: load them from the web at view time",
    )
    args = parser.parse_args(argv)
    paths = args.notebooks or sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        sys.exit(f"error: no such notebook: {', '.join(missing)}")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.assets == "local":
        fetch_assets(args.out)
    export = exporter(args.assets)
    for path in paths:
        print(build_deck(path, args.out, export))
    return 0


if __name__ == "__main__":
    sys.exit(main())
