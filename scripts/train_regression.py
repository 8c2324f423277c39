"""Meta-train regression LEO on sines and lines and write the checkpoint shipped with the package.

    .venv/bin/python scripts/train_regression.py                      # regenerates the asset
    .venv/bin/python scripts/train_regression.py --steps 300 --out /tmp/reg.pt

Prints the held-out numbers (500 tasks never seen in training) for the untrained and the
trained model: query MSE with its 95% CI and its median, the MSE against the noise-free
function, and the support MSE before and after the latent inner loop. They are stored in the
checkpoint too.
"""

from __future__ import annotations

import argparse
import sys

import torch

from leo_tutorial.regression import (
    RegressionConfig,
    evaluate_regression,
    save_regression,
    shipped_checkpoint,
    train_regression,
)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(shipped_checkpoint()))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    config = RegressionConfig()
    untrained = train_regression(config, steps=0, seed=args.seed, progress=False).model
    before = evaluate_regression(untrained)
    result = train_regression(
        config, steps=args.steps, batch_size=args.batch_size, seed=args.seed, progress=True
    )
    after = evaluate_regression(result.model)
    print(f"meta-training: {args.steps} steps of {args.batch_size} tasks in {result.seconds:.0f} s")
    for name, m in (("untrained", before), ("trained", after)):
        print(
            f"{name:9s} query MSE {m['query_mse']:.3f} +- {m['query_mse_ci95']:.3f} "
            f"(median {m['query_mse_median']:.3f}, noise-free {m['query_mse_noise_free']:.3f}); "
            "support MSE "
            f"{m['support_mse_before']:.3f} -> {m['support_mse_after']:.3f} over the inner loop "
            f"({m['tasks']} held-out tasks)"
        )
    metrics = {
        **after,
        "untrained_query_mse": before["query_mse"],
        "untrained_query_mse_median": before["query_mse_median"],
        "steps": args.steps,
        "batch_size": args.batch_size,
        "seed": args.seed,
    }
    print("wrote", save_regression(result.model, args.out, metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
