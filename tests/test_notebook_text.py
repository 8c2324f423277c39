"""The text a learner reads is true to the paper: its numbering and notation (docs/notation.md,
docs/LEO_SPEC.md §11), the link to the notation table, and the form of the "Paper vs code" boxes
(notebooks/README.md, "Conventions every notebook follows").

Each forbidden pattern below is a mistake the notebooks once made; the test keeps it out.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
CHECKED = [
    "00_tour",
    "01_problem_setup",
    "02_encoder_relation_net",
    "03_decoder",
    "04_inner_loop",
    "05_meta_objective",
    "06_training",
    "07_ablations_and_baselines",
    "08_latent_space",
    "09_regression_uncertainty",
    "10_curvature_and_coverage",
]
DOCUMENTS = [
    "notebooks/README.md",
    "docs/course_guide.md",
    "docs/notation.md",
    "docs/answer_key.md",
    "README.md",
]
NOTATION_LINK = "[notation table](../docs/notation.md)"

# (pattern, why it is wrong); matched against markdown (notebooks) or the whole text (documents)
WRONG = [
    (r"(?<!SPEC )(?<!LEO_SPEC\.md )§3\.\d", "the paper's §3 is Related Work: the model is §2.3.x"),
    (
        r"(latent step|latent space|inner loop|steps on \$z\$|`latent_step`)"
        r"[^.\n]{0,40}\(eq\. ?5\)",
        "eq. 5 is the inner loss; the latent step is unnumbered",
    ),
    (r"z'_n = z_n - \\alpha[^$]*\$\$?\s*\(eq\. ?5\)", "eq. 5 is the inner loss, not the step"),
    (r"finetune_lr`?\)? \(\$\\eta", "the fine-tuning rate has no symbol; eta is the outer rate"),
    (r"outer step size \$\\beta", "beta is the KL weight; the outer learning rate is eta"),
    (r"(?<![{\\a-zA-Z])[DS]\^\{(tr|val|test)\}", "support/query and meta-sets are calligraphic"),
    (r"Table 1[^.\n]{0,30}§4\.(?!3\b)\d", "Table 1 is in §4.3"),
    (r"Table 2[^.\n]{0,30}§4\.(?!4\b)\d", "Table 2 is in §4.4"),
    (r"Fig\. 2[^.\n]{0,30}§4\.(?!1\b)\d", "Fig. 2 is in §4.1"),
    (r"Fig\. 3[^.\n]{0,30}§4\.(?!5\b)\d", "Fig. 3 is in §4.5"),
    (r"Fig\. 4[^.\n]{0,30}§4\.(?!6\b)\d", "Fig. 4 is in §4.6"),
    (r"(?<!not a )better[- ]conditioned", "higher curvature (Fig. 4) is not better conditioning"),
    (r"\(eq\. 1[–-]3\)", "eq. 1-2 are MAML's; the encoder is eq. 3"),
]
BOX_TITLE = re.compile(r"^> \*\*Paper vs code: [^*]+\*\*$", re.MULTILINE)
BOX_BULLETS = ("> - **Paper** (§", "> - **Official code** (`", "> - **Here**: ")


def markdown_of(name: str) -> list[str]:
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    return [cell.source for cell in nb.cells if cell.cell_type == "markdown"]


def mistakes_in(text: str) -> list[str]:
    return [
        f"{why}: ...{text[max(0, m.start() - 40) : m.end() + 20]!r}..."
        for pattern, why in WRONG
        for m in re.finditer(pattern, text)
    ]


@pytest.mark.parametrize("name", CHECKED)
def test_notebook_uses_the_papers_numbering_and_notation(name):
    problems = [p for source in markdown_of(name) for p in mistakes_in(source)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", DOCUMENTS)
def test_document_uses_the_papers_numbering_and_notation(path):
    problems = mistakes_in((ROOT / path).read_text())
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name", CHECKED)
def test_notebook_links_the_notation_table_in_its_first_cell(name):
    first = markdown_of(name)[0]
    assert NOTATION_LINK in first
    assert (NOTEBOOKS / "../docs/notation.md").resolve().is_file()


@pytest.mark.parametrize("name", CHECKED)
def test_paper_vs_code_boxes_have_their_three_parts(name):
    boxes = 0
    for source in markdown_of(name):
        for title in BOX_TITLE.finditer(source):
            boxes += 1
            box = []  # the blockquote's lines after its title
            for line in source[title.end() :].splitlines()[1:]:
                if not line.startswith(">"):
                    break
                box.append(line)
            lines = [line for line in box if line.startswith("> - **")]
            assert [line.split("**")[1] for line in lines] == ["Paper", "Official code", "Here"], (
                f"{name}: the box {title.group()!r} needs the bullets Paper, Official code, Here"
            )
            for line, start in zip(lines, BOX_BULLETS, strict=True):
                assert line.startswith(start), f"{name}: {line!r} should start with {start!r}"
        assert "Paper vs code" not in BOX_TITLE.sub("", source).replace("Paper vs code box", ""), (
            f"{name}: a 'Paper vs code' box must use the form of notebooks/README.md"
        )
    if name in {"02_encoder_relation_net", "03_decoder", "04_inner_loop", "05_meta_objective"}:
        assert boxes >= 1, f"{name} shows equations whose code form differs: it needs a box"


def test_the_wrong_patterns_catch_the_old_mistakes():
    old = [
        "the inner loop takes gradient steps on $z$ instead of $w$ (eq. 5):",
        "`latent_step` (eq. 5)",
        "paper §3.3, eq. 5",
        "`finetune_lr` ($\\eta$, one per embedding dimension)",
        "minimised by gradient descent with outer step size $\\beta$",
        "a task's $D^{val}$ and $S^{val}$",
        "the paper's Fig. 3 (§4.2.3)",
        "Table 1 (§4.2)",
        "cheaper, better-conditioned adaptation",
        "per-class codes, the Gaussian over $z$ (eq. 1–3)",
    ]
    for text in old:
        assert mistakes_in(text), text
    fine = [
        "LEO_SPEC §3.4",
        "[LEO_SPEC.md §3.4](LEO_SPEC.md)",
        "$\\mathcal{D}^{val}$ and $\\mathcal{S}^{val}$",
        "eq. 5 is the inner loss",
        "Table 2 (§4.4)",
    ]
    for text in fine:
        assert not mistakes_in(text), text


@pytest.mark.parametrize("name", CHECKED)
def test_every_figure_cell_carries_its_figure(name):
    """A cell that shows a figure has a PNG in its committed output (an executor with
    MPLBACKEND=Agg once saved notebooks without any)."""
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code" and "plt.show()" in cell.source:
            pngs = [o for o in cell.outputs if "image/png" in o.get("data", {})]
            assert pngs, f"{name}: no figure saved for the cell {cell.source[:60]!r}"
