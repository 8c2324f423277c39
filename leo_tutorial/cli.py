"""The ``leo-tutorial`` command: train, evaluate and inspect LEO runs.

    leo-tutorial train --data synthetic --way 5 --shot 1 --out runs/demo
    leo-tutorial evaluate runs/demo --split test --tasks 2000 --json
    leo-tutorial info runs/demo
    leo-tutorial prepare glyphs --out embeddings
    leo-tutorial compare --data synthetic --way 5 --shot 1 --out runs/compare
    leo-tutorial tune --data glyphs --shot 1 --trials 30 --out runs/tune
    leo-tutorial train --data glyphs --shot 1 --params runs/tune/best_params.json --out runs/best

A mistake the user can fix ends the command with one line on stderr and exit status 2, before
any expensive work where the mistake can be seen from the arguments; messages name the flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import re
import sys
from pathlib import Path
from typing import Any

from .config import PRESETS, LEOConfig, TrainConfig, preset
from .errors import UserError
from .sources import DATA_FLAGS, SOURCES, flag_name, spec_from_flags

# Model hyper-parameters exposed as --flags (every LEOConfig field), with their help text.
_LEO_HELP = {
    "num_latents": "latent code size Z",
    "inner_unroll_length": "latent adaptation steps (0 = conditional generator only)",
    "finetuning_unroll_length": "fine-tuning steps on the weights (0 = none)",
    "inner_lr_init": "initial inner learning rate alpha",
    "finetuning_lr_init": "initial per-dimension fine-tuning rate (no symbol in the paper)",
    "dropout_rate": "dropout on embeddings while meta-training",
    "kl_weight": "beta, weight of the KL term",
    "encoder_penalty_weight": "gamma, weight of the encoder penalty",
    "l2_penalty_weight": "lambda_1, L2 on the weights",
    "orthogonality_penalty_weight": "lambda_2, decoder orthogonality",
    "outer_lr": "eta, Adam's (outer) learning rate",
    "gradient_threshold": "per-element gradient clipping (<= 0: off)",
    "gradient_norm_threshold": "per-tensor gradient-norm clipping (<= 0: off)",
    "deterministic": "ablation: means instead of samples while meta-training",
    "random_prior": "ablation: z ~ N(0, I) instead of the encoder",
    "first_order": "drop second-order terms of the inner loops",
    "reference": "run the plain reference model.py instead of the fused fast path (same "
    "numbers; measured 1.8-2.4x slower to meta-train, 4-8x slower to evaluate)",
}

# TrainConfig fields -> the flags that set them (the other flags are named after their field).
_TRAIN_FLAGS = {
    "n_way": "--way",
    "k_shot": "--shot",
    "n_query": "--queries",
    "eval_n_query": "--eval-queries",
}


def _in_flag_terms(message: str) -> str:
    """A config error as the CLI user sees it: field names replaced by their flags."""
    names = {f.name: flag_name(f.name) for f in dataclasses.fields(LEOConfig)}
    names.update({f.name: flag_name(f.name) for f in dataclasses.fields(TrainConfig)})
    names.update(_TRAIN_FLAGS)
    pattern = r"(?<![\w-])(" + "|".join(sorted(map(re.escape, names), key=len, reverse=True))
    return re.sub(pattern + r")(?![\w-])", lambda m: names[m.group(1)], message)


def _count(minimum: int, why: str = ""):  # noqa: ANN202 (an argparse type)
    """An argparse type: a whole number >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}{why}, got {value}")
        return value

    parse.__name__ = f"whole number >= {minimum}"
    return parse


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
        type=_count(1),
        default=argparse.SUPPRESS,
        help="CPU threads for torch (if not given: torch's choice); 1 is faster "
        "on a machine busy with other work",
    )


def _add_device(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")


def _add_data(p: argparse.ArgumentParser) -> None:
    data = p.add_argument_group("data")
    data.add_argument(
        "--data",
        choices=SOURCES,
        default="synthetic",
        help="; ".join(f"{s.name}: {s.summary}" for s in SOURCES.values()),
    )
    for name, (kwargs, _) in DATA_FLAGS.items():
        data.add_argument(flag_name(name), default=None, **kwargs)


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
    task.add_argument(
        "--way",
        type=_count(2, " (a task needs two classes)"),
        default=d.n_way,
        help="N classes per task",
    )
    task.add_argument("--shot", type=_count(1), default=d.k_shot, help="K examples per class")
    task.add_argument(
        "--eval-queries",
        type=_count(1),
        default=None,
        help="queries per class at meta-val/test; None = every remaining image (official: 600 - K)",
    )
    task.add_argument("--steps", type=_count(0), default=steps, help=steps_help)
    task.add_argument("--val-every", type=_count(1), default=val_every)
    task.add_argument("--val-tasks", type=_count(1), default=val_tasks)
    task.add_argument("--test-tasks", type=_count(1), default=test_tasks)
    task.add_argument("--seed", type=_count(0), default=d.seed)


def _add_batch(task: argparse._ArgumentGroup) -> None:
    """Meta-training task flags of ``train`` and ``tune``."""
    d = TrainConfig()
    task.add_argument(
        "--queries",
        type=_count(1),
        default=d.n_query,
        help="query examples per class in meta-training tasks",
    )
    task.add_argument(
        "--batch-size", type=_count(1), default=d.batch_size, help="tasks per meta-step"
    )
    task.add_argument("--dtype", choices=("float32", "float64"), default=d.dtype)


def _add_preset(parser: argparse.ArgumentParser | argparse._ArgumentGroup, help: str) -> None:
    # default None = auto, so that --params can tell whether --preset was given
    parser.add_argument("--preset", choices=("auto", *PRESETS), default=None, help=help)


_PRESET_HELP = (
    "official defaults, the paper's tuned settings (for the official files on the official "
    "100 000-step schedule), or ours for CPU budgets; auto (default) = the preset the data "
    "source picks for --way/--shot/--steps"
)


def _add_model(parser: argparse.ArgumentParser, title: str) -> None:
    """--preset and one flag per LEOConfig field (not given: the preset's value)."""
    model = parser.add_argument_group(title)
    _add_preset(model, _PRESET_HELP)
    for f in dataclasses.fields(LEOConfig):
        # default=SUPPRESS: a flag not given leaves the preset's value (and --help says so).
        kw: dict[str, Any] = {"default": argparse.SUPPRESS, "help": _LEO_HELP[f.name]}
        if f.type in ("bool", bool):
            model.add_argument(flag_name(f.name), action="store_true", **kw)
        elif f.name == "inner_gradient":
            model.add_argument(flag_name(f.name), choices=("analytic", "autograd"), **kw)
        else:
            kind = _count(0) if f.type in ("int", int) else _number
            model.add_argument(flag_name(f.name), type=kind, **kw)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help with each flag's default, but no "(default: None)" after flags that have none."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="meta-train LEO, select on meta-val, report meta-test",
        formatter_class=_HelpFormatter,
    )
    _add_data(p)
    task = p.add_argument_group("tasks and schedule")
    d = TrainConfig()
    _add_schedule(task, d.steps, d.val_every, d.val_tasks, d.test_tasks, "meta-training steps")
    _add_batch(task)
    _add_model(p, "model (defaults: the preset's values)")
    p.add_argument(
        "--params",
        type=Path,
        metavar="FILE",
        help="the LEO setting a study found (best_params.json of `leo-tutorial tune`) instead "
        "of a preset; model flags still override it",
    )
    run = p.add_argument_group("run")
    _add_device(run)
    _add_threads(run)
    run.add_argument("--out", type=Path, required=True, help="run directory")
    run.add_argument("--resume", action="store_true", help="continue an interrupted run")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")


# tune's schedule per trial: a search is --trials runs of this, so shorter than train's.
TUNE_DEFAULTS: dict[str, Any] = dict(steps=500, val_every=100, val_tasks=200, test_tasks=2000)


def _add_tune(sub: argparse._SubParsersAction) -> None:
    from .tune import SAMPLERS

    p = sub.add_parser(
        "tune",
        help="search LEO's hyper-parameters on meta-val (Optuna), then train the best setting "
        "and test it once",
        formatter_class=_HelpFormatter,
    )
    _add_data(p)
    task = p.add_argument_group("tasks and schedule of every trial")
    _add_schedule(task, **TUNE_DEFAULTS, steps_help="meta-training steps of every trial")
    _add_batch(task)
    search = p.add_argument_group("search")
    search.add_argument(
        "--trials",
        type=_count(1),
        default=30,
        help="finished (complete or pruned) trials the study should hold, counting those of "
        "earlier runs and of other workers",
    )
    search.add_argument(
        "--sampler",
        choices=SAMPLERS,
        default="tpe",
        help="tpe: Optuna's tree-structured Parzen estimator; random: the paper's random search",
    )
    search.add_argument(
        "--storage",
        metavar="URL",
        default=None,
        help="database URL of the study, shared by every worker (default: sqlite:///OUT/study.db)",
    )
    search.add_argument(
        "--study-name", metavar="NAME", default=None, help="default: leo-DATA-Nway-Kshot"
    )
    search.add_argument(
        "--search-rates",
        action="store_true",
        help="also search the initial inner and fine-tuning rates",
    )
    search.add_argument(
        "--search-only",
        action="store_true",
        help="only run trials (an extra worker on a shared --storage): no final training",
    )
    _add_model(p, "model (searched fields: a flag given here fixes the field; others: preset)")
    run = p.add_argument_group("run")
    _add_device(run)
    _add_threads(run)
    run.add_argument(
        "--out",
        type=Path,
        required=True,
        help="folder of the study: study.db, best_params.json, study.json, importance.png and "
        "the best trial trained again (trial_NNNN/)",
    )
    run.add_argument("--json", action="store_true", help="print one JSON object")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")


# compare's schedule: every method gets the same budget; sized so that one full comparison
# (11 methods, 5-way 1-shot) takes a few minutes on a 2-core CPU (benchmarks/bench_compare.py).
COMPARE_DEFAULTS: dict[str, Any] = dict(steps=1000, val_every=250, val_tasks=200, test_tasks=1000)


def _add_compare(sub: argparse._SubParsersAction) -> None:
    from .compare import METHODS

    p = sub.add_parser(
        "compare",
        help="LEO, its ablations and baselines on the same test tasks (the paper's Table 2)",
        formatter_class=_HelpFormatter,
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
    _add_preset(p, "LEO's hyper-parameters (default auto: as for train)")
    p.add_argument(
        "--tune-trials",
        type=_count(0),
        default=0,
        metavar="T",
        help="search every meta-learned method's hyper-parameters with T trials on meta-val "
        "before the test (the same budget for each); 0: untuned",
    )
    p.add_argument(
        "--sampler", choices=("tpe", "random"), default="tpe", help="the search's sampler"
    )
    _add_device(p)
    _add_threads(p)
    p.add_argument("--json", action="store_true", help="print the rows as one JSON list")
    p.add_argument(
        "--out",
        type=Path,
        help="also save compare_<data>_<shot>shot.json and .png in this folder",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress messages")


# ----------------------------------------------------------------------- shared checks
def _auto_preset(args: argparse.Namespace, spec: dict[str, Any]) -> str | None:
    """The preset ``--preset auto`` (or no --preset and no --params) stands for, else None."""
    if args.preset not in (None, "auto") or getattr(args, "params", None) is not None:
        return None
    return SOURCES[args.data].preset(spec, args.way, args.shot, args.steps)


def _check_shape_then_note(
    args: argparse.Namespace, spec: dict[str, Any], bank: Any, tc: TrainConfig, test: bool = True
) -> str | None:
    """Once the data has loaded: check the task shape against the splits (an impossible shape
    fails here, so that its error stays the only line), then return what ``--preset auto``
    picked (None when another preset or ``--params`` was given)."""
    from .training import check_task_shape

    check_task_shape(bank, tc, ("train", "val", "test") if test else ("train", "val"))
    name = _auto_preset(args, spec)
    if name is None:
        return None
    return f"--preset auto: {name!r} for {args.way}-way {args.shot}-shot, {args.steps} steps"


def _configs(args: argparse.Namespace, spec: dict[str, Any]) -> tuple[LEOConfig, TrainConfig]:
    """The model and training configs the flags ask for, errors in flag terms. The model's
    base is ``--params FILE`` or the preset (``auto``: the data source's choice); model flags
    override it."""
    params = getattr(args, "params", None)
    if params is not None and args.preset is not None:
        raise UserError(
            "--params and --preset both set LEO's hyper-parameters; give one of them "
            "(model flags still override either)"
        )
    name = _auto_preset(args, spec) or args.preset
    overrides = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(LEOConfig)
        if hasattr(args, f.name)
    }
    schedule = {
        "n_way": args.way,
        "k_shot": args.shot,
        "eval_n_query": args.eval_queries,
        "steps": args.steps,
        "val_every": args.val_every,
        "val_tasks": args.val_tasks,
        "test_tasks": args.test_tasks,
        "seed": args.seed,
    }
    for name_, field in (("queries", "n_query"), ("batch_size", "batch_size"), ("dtype", "dtype")):
        if hasattr(args, name_):
            schedule[field] = getattr(args, name_)
    try:
        if params is not None:
            from .tune import read_params

            return read_params(params).replace(**overrides), TrainConfig(**schedule)
        return preset(name, **overrides), TrainConfig(**schedule)
    except UserError as e:
        raise UserError(_in_flag_terms(str(e))) from None


def _check_out(path: Path | None) -> None:
    from .rundir import check_out_dir

    if path is not None:
        check_out_dir(path)


# ------------------------------------------------------------------------------ commands
def _train(args: argparse.Namespace) -> int:
    from .runtime import resolve_device
    from .sources import load_bank, source_of
    from .training import train

    # every check the arguments allow, before any data is loaded
    device = resolve_device(args.device)
    _check_out(args.out)
    spec = spec_from_flags(args)
    leo_config, train_config = _configs(args, spec)

    bank = load_bank(spec, log=_log, progress=not args.no_progress)
    if note := _check_shape_then_note(args, spec, bank, train_config):
        _log(note)
    if args.params is not None:
        from .tune import params_note

        if note := params_note(args.params, spec, args.way, args.shot):
            _log(note)
    result = train(
        leo_config,
        train_config,
        bank,
        args.out,
        data_spec=spec,
        device=device,
        resume=args.resume,
        progress=not args.no_progress,
        log=_log,
    )
    print(
        f"best meta-val accuracy {100 * result.best_val_accuracy:.2f}% at step {result.best_step}"
    )
    print(result.test)
    notes = source_of(spec).notes
    for line in notes(spec, args.way, args.shot) if notes else []:
        print(line)
    if result.test is not None:
        from .compare import format_reference_rows, reference_rows

        rows = reference_rows(result.test, leo_config, bank, train_config, device)
        print(format_reference_rows(result.test, result.best_step, rows))
    skipped = len(result.history["skipped"])
    if skipped:
        print(
            f"{skipped} of {train_config.steps} updates were skipped for a non-finite meta-loss "
            "or gradient (see the messages above)"
        )
    print(f"run saved in {result.run_dir} ({result.seconds:.0f} s)")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from .compare import (
        format_table,
        parse_methods,
        rows_to_json,
        run_comparison,
        save_chart,
        save_rows,
    )
    from .rundir import RunLock
    from .runtime import resolve_device
    from .sources import load_bank

    methods = parse_methods(args.methods)  # fail fast, before any data is loaded
    device = resolve_device(args.device)
    _check_out(args.out)
    spec = spec_from_flags(args)
    leo_config, train_config = _configs(args, spec)
    quiet = args.no_progress or args.json

    def log(message: str) -> None:
        if not args.no_progress:
            _log(message)

    name = SOURCES[args.data].label(spec)
    lock = RunLock(args.out) if args.out is not None else None
    if lock is not None:
        lock.acquire()  # refuse a folder another comparison is writing, before hours of work
    try:
        bank = load_bank(spec, log=log, progress=not quiet)
        if note := _check_shape_then_note(args, spec, bank, train_config):
            log(note)
        tuned = None
        if args.tune_trials:
            from .tune import tune_methods

            tuned = tune_methods(
                bank,
                train_config,
                leo_config,
                methods,
                args.tune_trials,
                sampler=args.sampler,
                device=device,
                progress=not quiet,
                log=log,
            )
        rows = run_comparison(
            bank,
            train_config,
            leo_config,
            methods,
            data=name,
            device=device,
            progress=not quiet,
            log=log,
            tuned=tuned,
        )
        print(rows_to_json(rows) if args.json else format_table(rows))
        if args.out is not None:
            stem = args.out / f"compare_{name}_{args.shot}shot"
            save_rows(stem.with_suffix(".json"), rows)
            save_chart(stem.with_suffix(".png"), rows)
            log(f"saved {stem}.json and {stem}.png")
    finally:
        if lock is not None:
            lock.release()
    return 0


def _tune(args: argparse.Namespace) -> int:
    from .config import leo_search_space
    from .io import strict_json
    from .rundir import RunLock
    from .runtime import resolve_device
    from .sources import load_bank
    from .tune import prepare_study, run_study

    # every check the arguments allow, before any data is loaded
    device = resolve_device(args.device)
    _check_out(args.out)
    spec = spec_from_flags(args)
    leo_config, train_config = _configs(args, spec)
    fixed = {f.name for f in dataclasses.fields(LEOConfig) if hasattr(args, f.name)}
    space = {
        name: r
        for name, r in leo_search_space(leo_config, args.search_rates).items()
        if name not in fixed
    }
    if not space:
        raise UserError(
            "nothing to search: a flag fixes every searched field; drop one of "
            + ", ".join(flag_name(n) for n in sorted(fixed))
        )
    with RunLock(args.out):
        study, url = prepare_study(
            args.out,
            spec,
            train_config,
            leo_config,
            space,
            sampler=args.sampler,
            storage=args.storage,
            study_name=args.study_name,
        )
        bank = load_bank(spec, log=_log, progress=not args.no_progress)
        if note := _check_shape_then_note(
            args, spec, bank, train_config, test=not args.search_only
        ):
            _log(note)
        result = run_study(
            study,
            url,
            bank,
            train_config,
            leo_config,
            args.out,
            trials=args.trials,
            data_spec=spec,
            device=device,
            final=not args.search_only,
            progress=not args.no_progress,
            log=_log,
        )
    if args.json:
        print(json.dumps(strict_json(result.to_dict()), allow_nan=False))
        return 0
    print(
        f"best of {result.trials} trials (study {result.study_name!r}): trial {result.best_trial}, "
        f"meta-val accuracy {100 * result.best_val_accuracy:.2f}%"
    )
    for key, value in result.best_params.items():
        print(f"  {flag_name(key)} {value:.4g}")
    if result.run is not None and result.run.test is not None:
        print(result.run.test)
        print(f"best run saved in {result.run.run_dir}")
    print(
        f"saved {args.out / 'best_params.json'} (train --params uses it), study.json and "
        "importance.png"
    )
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from .rundir import load_run, steps_done
    from .runtime import SeedPurpose, resolve_device
    from .sources import load_bank
    from .training import evaluate

    device = resolve_device(args.device)
    model, record = load_run(args.run_dir, device)
    train_config = TrainConfig(**record["train_config"])
    done = steps_done(args.run_dir)
    finished = done is not None and done >= train_config.steps
    if not finished:
        _log(
            f"note: {args.run_dir} is an unfinished run ({done or 0} of {train_config.steps} "
            "steps); this scores the best model so far (finish it with the train command "
            "plus --resume)"
        )
    bank = load_bank(record["data"], log=_log, progress=not args.json)
    result = evaluate(
        model,
        bank.split(args.split),
        n_way=train_config.n_way,
        k_shot=train_config.k_shot,
        n_query=args.queries if args.queries else train_config.eval_n_query,
        tasks=args.tasks,
        batch_size=train_config.eval_batch_size,
        seed=[train_config.seed, SeedPurpose.TEST if args.split == "test" else SeedPurpose.VAL],
        split_name=args.split,
        progress=not args.json,
    )
    if args.json:
        info = {"run_dir": str(args.run_dir), "finished": finished, "steps_done": done}
        print(json.dumps({**result.to_dict(), **info}))
    else:
        print(result)
    return 0


def _prepare(args: argparse.Namespace) -> int:
    """Stage 1 explicitly: images -> backbone (shipped, cached or retrained) -> embeddings,
    optionally exported in the official pickle layout."""
    import time

    from .data import export_leo_pickles
    from .features import backbone_for, embed_dataset, image_bank
    from .rundir import RunLock
    from .sources import backbone_recipe, image_dataset

    _check_out(args.out)
    args.data = args.source
    spec = spec_from_flags(args)
    recipe = backbone_recipe(spec)
    if recipe is not None and args.retrain:
        raise UserError(
            f"--retrain does not apply to {args.source}: its backbone is fixed "
            f"({recipe.name}); drop --retrain"
        )
    times = {}
    start = time.perf_counter()
    dataset = image_dataset(spec, log=_log, progress=not args.no_progress)
    times["images"] = time.perf_counter() - start
    start = time.perf_counter()
    if recipe is not None:  # a backbone fixed by the source (cached with its embeddings)
        bank = image_bank(dataset, log=_log, recipe=recipe, progress=not args.no_progress)
        times["backbone + embed"] = time.perf_counter() - start
    else:
        backbone = backbone_for(dataset, retrain=args.retrain, epochs=args.epochs, log=_log)
        times["backbone"] = time.perf_counter() - start
        start = time.perf_counter()
        bank = embed_dataset(backbone, dataset)
        times["embed"] = time.perf_counter() - start
    for name, split in bank.splits.items():
        print(f"{name}: {split.n_classes} classes, {split.n_images} images -> {bank.dim}-d")
    if args.out is not None:
        with RunLock(args.out):
            folder = export_leo_pickles(bank, args.out, dataset=args.source)
        print(
            f"official pickle layout written to {folder}; train on it with: leo-tutorial "
            f"train --data leo-pickles --data-dir {args.out} --dataset {args.source} ..."
        )
    print("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in times.items()))
    return 0


def _info(args: argparse.Namespace) -> int:
    from .rundir import METRICS_FILE, RUN_FILE, TEST_FILE, read_json

    run_dir: Path = args.run_dir
    record = read_json(run_dir / RUN_FILE, "run record")
    metrics = (
        read_json(run_dir / METRICS_FILE, "metrics history")
        if (run_dir / METRICS_FILE).exists()
        else {"val": [], "train": [], "skipped": []}
    )
    val = metrics.get("val", [])
    best = max(val, key=lambda h: h["accuracy"]) if val else None
    test = read_json(run_dir / TEST_FILE, "test result") if (run_dir / TEST_FILE).exists() else None
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
    elif summary["steps_done"] < tc["steps"]:
        print(
            f"unfinished: {summary['steps_done']} of {tc['steps']} steps (continue with --resume)"
        )
    return 0


# -------------------------------------------------------------------------------- parser
class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error message (no usage dump) and, for a misspelt flag, the
    closest valid one."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def parse_args(self, args=None, namespace=None):  # noqa: ANN001, ANN201
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            subparsers = self._subparsers._group_actions[0].choices if self._subparsers else {}
            sub = subparsers.get(getattr(parsed, "command", None), self)
            flags = [f for f in sub._option_string_actions if f.startswith("--")]
            unknown = next((e for e in extras if e.startswith("-")), extras[0])
            guess = difflib.get_close_matches(unknown.split("=")[0], flags, n=1, cutoff=0.6)
            hint = f"; did you mean {guess[0]}?" if guess else ""
            sub.error(f"unrecognized argument {unknown}{hint}")
        return parsed


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="leo-tutorial", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_train(sub)
    p = sub.add_parser("evaluate", help="accuracy of a run's best model with a 95%% CI")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--split", choices=("test", "val"), default="test")
    p.add_argument("--tasks", type=_count(1), default=2000)
    p.add_argument(
        "--queries",
        type=_count(1),
        default=None,
        help="queries per class (default: the run's evaluation setting)",
    )
    _add_device(p)
    _add_threads(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    images = [s.name for s in SOURCES.values() if s.has_images]
    p = sub.add_parser(
        "prepare",
        help="stage 1: render/read images, pre-train or load the "
        "backbone, embed, optionally export the official pickle layout",
    )
    p.add_argument("source", choices=images)
    p.add_argument("--data-dir", type=Path, help="the Omniglot folder (omniglot only)")
    p.add_argument("--out", type=Path, help="write <out>/<source>/center/*_embeddings.pkl")
    p.add_argument(
        "--retrain",
        action="store_true",
        help="pre-train the backbone again (cached; later runs use it)",
    )
    p.add_argument("--epochs", type=_count(1), default=6, help="pre-training epochs")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_threads(p)
    _add_compare(sub)
    _add_tune(sub)
    p = sub.add_parser("info", help="a run's configuration and best validation accuracy")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2, one line printed already)
        return int(e.code or 0)
    command = {
        "train": _train,
        "evaluate": _evaluate,
        "prepare": _prepare,
        "compare": _compare,
        "tune": _tune,
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
        how = {
            "train": "the same command plus --resume continues the run",
            "tune": "the same command continues the study (finished trials are kept)",
        }
        print(
            f"leo-tutorial {args.command}: interrupted; "
            + how.get(args.command, "a train run continues with the same command plus --resume"),
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
