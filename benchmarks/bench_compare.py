"""The full comparison grid: every baseline and LEO ablation, glyphs and synthetic, 1- and 5-shot.

For each setting this runs what ``leo-tutorial compare --data DATA --shot K --device cpu
--threads 1`` runs (same defaults: :data:`leo_tutorial.cli.COMPARE_DEFAULTS`, the ``auto``
preset) and prints its table, with LEO's margin over every other method (paired 95% CI of the
per-task differences: all methods are tested on the same tasks) and a verdict.

    python benchmarks/bench_compare.py                       # the whole grid (about 30 min)
    python benchmarks/bench_compare.py --data synthetic --shots 1 --steps 200
    python benchmarks/bench_compare.py --save-assets         # also refresh the shipped JSON

``--save-assets`` writes ``leo_tutorial/assets/compare_<data>_<shot>shot.json`` (what notebook
07 plots). Timings depend on the machine's load; say so when quoting them.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402

from leo_tutorial.cli import COMPARE_DEFAULTS  # noqa: E402
from leo_tutorial.compare import (  # noqa: E402
    asset_path,
    format_table,
    run_comparison,
    save_rows,
)
from leo_tutorial.config import TrainConfig, preset  # noqa: E402
from leo_tutorial.sources import SOURCES, load_bank, spec_from_flags  # noqa: E402


def margins(rows: list[dict]) -> str:
    """A verdict per method from LEO's paired margin: better / worse / tie at 95%."""
    lines = []
    for r in rows:
        if "leo_margin" not in r or r["method"] == "LEO":
            continue
        diff, ci = 100 * r["leo_margin"], 100 * r["leo_margin_ci95"]
        verdict = "LEO better" if diff > ci else "LEO worse" if diff < -ci else "tie"
        lines.append(f"  LEO vs {r['method']:<20} {diff:+6.2f} +- {ci:.2f} points: {verdict}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="glyphs,synthetic")
    parser.add_argument("--shots", default="1,5")
    parser.add_argument("--steps", type=int, default=COMPARE_DEFAULTS["steps"])
    parser.add_argument("--methods", default=None)
    parser.add_argument("--save-assets", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for data in args.data.split(","):
        if data not in SOURCES or "data_dir" in SOURCES[data].flags:
            parser.error(f"--data takes built-in sources (glyphs, synthetic), got {data!r}")
        spec = spec_from_flags(argparse.Namespace(data=data))
        bank = load_bank(spec, log=lambda m: print(m, file=sys.stderr), progress=False)
        for shot in (int(s) for s in args.shots.split(",")):
            tc = TrainConfig(
                n_way=5,
                k_shot=shot,
                steps=args.steps,
                **{k: v for k, v in COMPARE_DEFAULTS.items() if k != "steps"},
            )
            name = SOURCES[data].preset(spec, 5, shot, args.steps)
            start = time.perf_counter()
            rows = run_comparison(
                bank,
                tc,
                preset(name),
                args.methods,
                data=data,
                device="cpu",
                log=lambda m: print(m, file=sys.stderr),
            )
            total = time.perf_counter() - start
            print(format_table(rows))
            print(margins(rows))
            print(
                f"(LEO preset {name!r}, {args.steps} steps; whole comparison {total:.0f} s "
                f"wall-clock on a shared machine)\n",
                flush=True,
            )
            if args.save_assets:
                print(f"saved {save_rows(asset_path(data, shot), rows)}\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
