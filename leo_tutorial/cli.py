"""The ``leo-tutorial`` command: train, evaluate and inspect LEO runs.

    leo-tutorial train --data synthetic --way 5 --shot 1 --out runs/demo
    leo-tutorial evaluate runs/demo --split test --tasks 2000 --json
    leo-tutorial info runs/demo
    leo-tutorial prepare glyphs --out embeddings
    leo-tutorial compare --data synthetic --way 5 --shot 1 --out runs/compare

A mistake the user can fix ends the command with one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from .config import PRESETS, LEOConfig, TrainConfig, preset
from .data.leo_pickles import CROPS, DATASETS
from .data.sources import (
    SOURCES,
    glyphs_spec,
    leo_pickles_spec,
    load_bank,
    omniglot_spec,
    synthetic_spec,
)
from .data.synthetic import SyntheticConfig, bayes_accuracy
from .errors import UserError

# Model hyper-parameters exposed as --flags (every LEOConfig field), with their help text.
_LEO_HELP = {
    "num_latents": "latent code size Z",
    "inner_unroll_length": "latent adaptation steps (0 = conditional generator only)",
    "finetuning_unroll_length": "fine-tuning steps on the weights (0 = none)",
    "inner_lr_init": "initial inner learning rate alpha",
    "finetuning_lr_init": "initial fine-tuning learning rate eta",
    "dropout_rate": "dropout on embeddings while meta-training",
    "kl_weight": "beta, weight of the KL term",
    "encoder_penalty_weight": "gamma, weight of the encoder penalty",
    "l2_penalty_weight": "lambda_1, L2 on the weights",
    "orthogonality_penalty_weight": "lambda_2, decoder orthogonality",
    "outer_lr": "Adam learning rate",
    "gradient_threshold": "per-element gradient clipping (<= 0: off)",
    "gradient_norm_threshold": "per-tensor gradient-norm clipping (<= 0: off)",
    "deterministic": "ablation: means instead of samples while meta-training",
    "random_prior": "ablation: z ~ N(0, I) instead of the encoder",
    "first_order": "drop second-order terms of the inner loops",
    "reference": "run the plain reference model.py instead of the fused fast path (same "
    "numbers, several times slower)",
}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def _log(message: str) -> None:
    """Progress messages go to stderr, so stdout carries only results (e.g. --json)."""
    print(message, file=sys.stderr)


def _add_threads(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument(
        "--threads",
        type=_positive_int,
        default=argparse.SUPPRESS,
        help="CPU threads for torch (if not given: torch's choice); 1 is faster "
        "on a machine busy with other work",
    )


def _add_schedule(
    task: argparse._ArgumentGroup,
    steps: int,
    val_every: int,
    val_tasks: int,
    test_tasks: int,
    steps_help: str,
) -> None:
    """The task shape and schedule flags ``train`` and ``compare`` share."""
    d = TrainConfig()
    task.add_argument("--way", type=_positive_int, default=d.n_way, help="N classes per task")
    task.add_argument("--shot", type=_positive_int, default=d.k_shot, help="K examples per class")
    task.add_argument(
        "--eval-queries",
        type=_positive_int,
        default=None,
        help="queries per class at meta-val/test; None = every remaining image (official: 600 - K)",
    )
    task.add_argument("--steps", type=_positive_int, default=steps, help=steps_help)
    task.add_argument("--val-every", type=_positive_int, default=val_every)
    task.add_argument("--val-tasks", type=_positive_int, default=val_tasks)
    task.add_argument("--test-tasks", type=_positive_int, default=test_tasks)
    task.add_argument("--seed", type=_positive_int, default=d.seed)


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="meta-train LEO, select on meta-val, report meta-test",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _add_data(p)
    task = p.add_argument_group("tasks and schedule")
    d = TrainConfig()
    _add_schedule(task, d.steps, d.val_every, d.val_tasks, d.test_tasks, "meta-training steps")
    task.add_argument(
        "--queries",
        type=_positive_int,
        default=d.n_query,
        help="query examples per class in meta-training tasks",
    )
    task.add_argument(
        "--batch-size", type=_positive_int, default=d.batch_size, help="tasks per meta-step"
    )
    task.add_argument("--dtype", choices=("float32", "float64"), default=d.dtype)
    model = p.add_argument_group("model (defaults: the preset's values)")
    model.add_argument(
        "--preset",
        choices=("auto", *PRESETS),
        default="auto",
        help="official defaults, the paper's tuned settings, or ours for "
        "synthetic data; auto = the tuned preset matching --data/--dataset/--shot",
    )
    for f in dataclasses.fields(LEOConfig):
        # default=SUPPRESS: a flag not given leaves the preset's value (and --help says so).
        kw: dict[str, Any] = {"default": argparse.SUPPRESS, "help": _LEO_HELP[f.name]}
        if f.type in ("bool", bool):
            model.add_argument(_flag(f.name), action="store_true", **kw)
        elif f.name == "inner_gradient":
            model.add_argument(_flag(f.name), choices=("analytic", "autograd"), **kw)
        else:
            kind = _positive_int if f.type in ("int", int) else _number
            model.add_argument(_flag(f.name), type=kind, **kw)
    run = p.add_argument_group("run")
    run.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    _add_threads(run)
    run.add_argument("--out", type=Path, required=True, help="run directory")
    run.add_argument("--resume", action="store_true", help="continue an interrupted run")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")


# compare's schedule: every method gets the same budget; sized so that one full comparison
# (11 methods, 5-way 1-shot) takes a few minutes on a 2-core CPU (benchmarks/bench_compare.py).
COMPARE_DEFAULTS: dict[str, Any] = dict(steps=1000, val_every=250, val_tasks=200, test_tasks=1000)


def _add_compare(sub: argparse._SubParsersAction) -> None:
    from .compare import METHODS

    p = sub.add_parser(
        "compare",
        help="LEO, its ablations and baselines on the same test tasks (the paper's Table 2)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _add_data(p)
    task = p.add_argument_group("tasks and budget (the same for every method)")
    _add_schedule(
        task, **COMPARE_DEFAULTS, steps_help="meta-training steps of every meta-learned method"
    )
    p.add_argument(
        "--methods",
        default=None,
        help=f"comma-separated subset of: {', '.join(METHODS)} (default: all)",
    )
    p.add_argument(
        "--preset",
        choices=("auto", *PRESETS),
        default="auto",
        help="LEO's hyper-parameters (auto: as for train)",
    )
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    _add_threads(p)
    p.add_argument("--json", action="store_true", help="print the rows as one JSON list")
    p.add_argument(
        "--out", type=Path, help="also save compare_<data>_<shot>shot.json and .png in this folder"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress messages")


def _compare(args: argparse.Namespace) -> int:
    from .compare import (
        format_table,
        parse_methods,
        rows_to_json,
        run_comparison,
        save_chart,
        save_rows,
    )

    methods = parse_methods(args.methods)  # fail fast, before any data is loaded
    spec = _data_spec(args)
    leo_config = preset(auto_preset(args.preset, args.data, args.dataset, args.way, args.shot))
    train_config = TrainConfig(
        n_way=args.way,
        k_shot=args.shot,
        steps=args.steps,
        val_every=args.val_every,
        val_tasks=args.val_tasks,
        test_tasks=args.test_tasks,
        eval_n_query=args.eval_queries,
        seed=args.seed,
    )
    quiet = args.no_progress or args.json

    def log(message: str) -> None:
        if not args.no_progress:
            _log(message)

    bank = load_bank(spec, log=log, progress=not quiet)
    name = args.dataset if args.data == "leo-pickles" else args.data
    rows = run_comparison(
        bank,
        train_config,
        leo_config,
        methods,
        data=name,
        device=args.device,
        progress=not quiet,
        log=log,
    )
    print(rows_to_json(rows) if args.json else format_table(rows))
    if args.out is not None:
        stem = args.out / f"compare_{name}_{args.shot}shot"
        save_rows(stem.with_suffix(".json"), rows)
        save_chart(stem.with_suffix(".png"), rows)
        log(f"saved {stem}.json and {stem}.png")
    return 0


def auto_preset(name: str, data: str, dataset: str, way: int, shot: int) -> str:
    """``auto``: ``synthetic`` for synthetic data, the paper's tuned setting for 5-way 1/5-shot
    on the official miniImageNet / tieredImageNet embeddings, the official defaults otherwise."""
    if name != "auto":
        return name
    if data == "synthetic":
        return "synthetic"
    if data != "leo-pickles":
        return "default"
    prefix = {"miniImageNet": "mini", "tieredImageNet": "tiered"}.get(dataset)
    tuned = f"{prefix}-{shot}shot"
    return tuned if prefix and way == 5 and tuned in PRESETS else "default"


def _add_data(p: argparse.ArgumentParser) -> None:
    data = p.add_argument_group("data")
    data.add_argument(
        "--data",
        choices=SOURCES,
        default="synthetic",
        help="built-in synthetic embeddings, the official LEO pickles, or images "
        "embedded by a stage-1 backbone: glyphs (built in) or omniglot (--data-dir)",
    )
    data.add_argument(
        "--data-dir",
        type=Path,
        help="folder holding the official embeddings "
        "(<data-dir>/<dataset>/<crop>/<split>_embeddings.pkl)",
    )
    data.add_argument(
        "--dataset",
        default="miniImageNet",
        help=f"{' or '.join(DATASETS)}, or the folder name of embeddings exported "
        "in the same layout",
    )
    data.add_argument("--crop", choices=CROPS, default="center")
    data.add_argument(
        "--train-on-val",
        action="store_true",
        help="add the meta-val classes to meta-train (the paper's final protocol)",
    )
    data.add_argument(
        "--synthetic-seed", type=_positive_int, default=0, help="seed of the synthetic generator"
    )


def _data_spec(args: argparse.Namespace) -> dict[str, Any]:
    """The data spec the --data flags name (a clear error when --data-dir is missing)."""
    if args.data == "leo-pickles":
        if args.data_dir is None:
            raise UserError(
                "--data leo-pickles needs --data-dir DIR, the folder that holds "
                f"{args.dataset}/{args.crop}/train_embeddings.pkl"
            )
        return leo_pickles_spec(args.data_dir, args.dataset, args.crop, args.train_on_val)
    if args.data == "omniglot":
        if args.data_dir is None:
            raise UserError(
                "--data omniglot needs --data-dir DIR, the folder that holds "
                "images_background/ and images_evaluation/"
            )
        return omniglot_spec(args.data_dir)
    if args.data == "glyphs":
        return glyphs_spec()
    return synthetic_spec(SyntheticConfig(seed=args.synthetic_seed))


def _train(args: argparse.Namespace) -> int:
    from .training import train

    overrides = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(LEOConfig)
        if hasattr(args, f.name)
    }
    leo_config = preset(
        auto_preset(args.preset, args.data, args.dataset, args.way, args.shot), **overrides
    )
    train_config = TrainConfig(
        n_way=args.way,
        k_shot=args.shot,
        n_query=args.queries,
        eval_n_query=args.eval_queries,
        batch_size=args.batch_size,
        steps=args.steps,
        val_every=args.val_every,
        val_tasks=args.val_tasks,
        test_tasks=args.test_tasks,
        seed=args.seed,
        dtype=args.dtype,
    )
    spec = _data_spec(args)
    bank = load_bank(spec, log=_log, progress=not args.no_progress)
    result = train(
        leo_config,
        train_config,
        bank,
        args.out,
        data_spec=spec,
        device=args.device,
        resume=args.resume,
        progress=not args.no_progress,
    )
    print(
        f"best meta-val accuracy {100 * result.best_val_accuracy:.2f}% at step {result.best_step}"
    )
    print(result.test)
    if args.data == "synthetic":
        config = SyntheticConfig(seed=args.synthetic_seed)
        bayes, ci = bayes_accuracy(config, args.way, args.shot)
        no_bias, ci_nb = bayes_accuracy(config, args.way, args.shot, bias=False)
        print(
            f"Bayes-optimal accuracy of the synthetic generator: {100 * bayes:.2f}% "
            f"+- {100 * ci:.2f}%; its rule without the bias term (the form of LEO's "
            f"classifier): {100 * no_bias:.2f}% +- {100 * ci_nb:.2f}%"
        )
    print(f"run saved in {result.run_dir} ({result.seconds:.0f} s)")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from .training import TEST, VAL, evaluate, load_run, resolve_device

    model, record = load_run(args.run_dir, resolve_device(args.device))
    train_config = TrainConfig(**record["train_config"])
    bank = load_bank(record["data"], log=_log, progress=not args.json)
    result = evaluate(
        model,
        bank.split(args.split),
        n_way=train_config.n_way,
        k_shot=train_config.k_shot,
        n_query=args.queries if args.queries else train_config.eval_n_query,
        tasks=args.tasks,
        batch_size=train_config.eval_batch_size,
        seed=[train_config.seed, TEST if args.split == "test" else VAL],
        split_name=args.split,
        progress=not args.json,
    )
    if args.json:
        print(json.dumps({**result.to_dict(), "run_dir": str(args.run_dir)}))
    else:
        print(result)
    return 0


def _prepare(args: argparse.Namespace) -> int:
    """Stage 1 explicitly: images -> backbone (shipped, cached or retrained) -> embeddings,
    optionally exported in the official pickle layout."""
    import time

    from .data.sources import backbone_for, image_dataset
    from .features import embed_dataset, export_leo_pickles

    if args.source == "omniglot" and args.data_dir is None:
        raise UserError(
            "prepare omniglot needs --data-dir DIR, the folder that holds "
            "images_background/ and images_evaluation/"
        )
    spec = omniglot_spec(args.data_dir) if args.source == "omniglot" else glyphs_spec()
    times = {}
    start = time.perf_counter()
    dataset = image_dataset(spec, log=_log, progress=not args.no_progress)
    times["images"] = time.perf_counter() - start
    start = time.perf_counter()
    backbone = backbone_for(dataset, retrain=args.retrain, epochs=args.epochs, log=_log)
    times["backbone"] = time.perf_counter() - start
    start = time.perf_counter()
    bank = embed_dataset(backbone, dataset)
    times["embed"] = time.perf_counter() - start
    for name, split in bank.splits.items():
        print(f"{name}: {split.n_classes} classes, {split.n_images} images -> {bank.dim}-d")
    if args.out is not None:
        folder = export_leo_pickles(bank, args.out, dataset=args.source)
        print(
            f"official pickle layout written to {folder}; train on it with: leo-tutorial "
            f"train --data leo-pickles --data-dir {args.out} --dataset {args.source} ..."
        )
    print("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in times.items()))
    return 0


def _info(args: argparse.Namespace) -> int:
    from .training import read_json

    run_dir: Path = args.run_dir
    record = read_json(run_dir / "run.json", "run record")
    metrics = (
        read_json(run_dir / "metrics.json", "metrics history")
        if (run_dir / "metrics.json").exists()
        else {"val": [], "train": [], "skipped": []}
    )
    val = metrics.get("val", [])
    best = max(val, key=lambda h: h["accuracy"]) if val else None
    test = (
        read_json(run_dir / "test.json", "test result")
        if (run_dir / "test.json").exists()
        else None
    )
    summary: dict[str, Any] = {
        "run_dir": str(run_dir),
        "data": record["data"],
        "embedding_dim": record["embedding_dim"],
        "train_config": record["train_config"],
        "leo_config": record["leo_config"],
        "steps_done": max([h["step"] for h in val] + [0]),
        "best_val_accuracy": best["accuracy"] if best else None,
        "best_val_step": best["step"] if best else None,
        "skipped_steps": len(metrics.get("skipped", [])),
        "test": test,
    }
    if args.json:
        print(json.dumps(summary))
        return 0
    tc = record["train_config"]
    source = record["data"].get("source")
    print(
        f"run {run_dir}: {tc['n_way']}-way {tc['k_shot']}-shot on {source} "
        f"({record['embedding_dim']}-d embeddings)"
    )
    for name, section in (("training", tc), ("model", record["leo_config"])):
        print(f"{name}: " + ", ".join(f"{k}={v}" for k, v in section.items()))
    if best:
        print(
            f"best meta-val accuracy {100 * best['accuracy']:.2f}% +- "
            f"{100 * best['ci95']:.2f}% at step {best['step']} "
            f"(validated up to step {summary['steps_done']})"
        )
    else:
        print("not validated yet")
    if test:
        print(
            f"meta-test accuracy {100 * test['accuracy']:.2f}% +- {100 * test['ci95']:.2f}% "
            f"over {test['tasks']} tasks"
        )
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error message (no usage dump)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="leo-tutorial", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    p = sub.add_parser("evaluate", help="accuracy of a run's best model with a 95%% CI")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--split", choices=("test", "val"), default="test")
    p.add_argument("--tasks", type=_positive_int, default=2000)
    p.add_argument(
        "--queries",
        type=_positive_int,
        default=None,
        help="queries per class (default: the run's evaluation setting)",
    )
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    _add_threads(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p = sub.add_parser(
        "prepare",
        help="stage 1: render/read images, pre-train or load the "
        "backbone, embed, optionally export the official pickle layout",
    )
    p.add_argument("source", choices=("glyphs", "omniglot"))
    p.add_argument("--data-dir", type=Path, help="the Omniglot folder (omniglot only)")
    p.add_argument("--out", type=Path, help="write <out>/<source>/center/*_embeddings.pkl")
    p.add_argument(
        "--retrain",
        action="store_true",
        help="pre-train the backbone again (cached; later runs use it)",
    )
    p.add_argument("--epochs", type=_positive_int, default=6, help="pre-training epochs")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_threads(p)
    _add_compare(sub)
    p = sub.add_parser("info", help="a run's configuration and best validation accuracy")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = {
        "train": _train,
        "evaluate": _evaluate,
        "prepare": _prepare,
        "compare": _compare,
        "info": _info,
    }[args.command]
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
    try:
        return command(args)
    except UserError as e:
        print(f"leo-tutorial {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"leo-tutorial {args.command}: interrupted; a train run continues with the same "
            "command plus --resume",
            file=sys.stderr,
        )
        return 130
    except OSError as e:
        print(
            f"leo-tutorial {args.command}: error: {e.strerror or e}: {e.filename or ''}".rstrip(
                ": "
            ),
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
