"""Meta-training throughput (tasks/s, ms per meta-step) and peak memory of LEO on CPU.

Shapes are miniImageNet's: D = 640, 5-way 1-shot and 5-shot, 15 queries per class, a meta-batch
of B = 12 tasks, 5 latent + 5 fine-tuning steps, default ``LEOConfig()`` (dropout 0.5, sampling
on), float32. Tasks are real episodes of the synthetic bank (``make_synthetic_bank()``).

Rows:

- ``batched (analytic)``: ``leo_tutorial.training.meta_step`` on a TaskBatch of 12 tasks, with
  the library's closed-form inner gradients (the default). Batches are sampled before timing;
  the ``+ sampling`` row also samples each batch inside the timed loop.
- ``batched (autograd)``: the same with ``LEOConfig(inner_gradient="autograd")``: inner
  gradients by ``torch.autograd.grad(create_graph=True)``, meta-gradient by double backward.
- ``per-task loop``: the typical port. A Python loop over the 12 tasks, each run alone (a batch
  of one) through the library model with autograd inner gradients; the 12 meta-losses are
  averaged (the regularisers, identical in every task, are thus counted once, as in the batched
  loss), then one backward, the same NaN guard and clipping, and one Adam step per batch.

Every row uses the same Adam (``fused`` as ``training.train`` builds it) and clipping. Peak
memory is ``ru_maxrss`` of a separate process running ``leo_tutorial.training.train`` at the paper's
shapes (1-shot, 200 steps, validation every 100 steps on 200 tasks with every remaining image as
a query, as in the official protocol, then 200 test tasks).

    python benchmarks/bench_meta_training.py            # about a minute on 2 idle cores
    python benchmarks/bench_meta_training.py --quick    # a rough table in about 15 s
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable

import torch

from leo_tutorial import LEO, LEOConfig, TrainConfig
from leo_tutorial.data import EpisodeSampler, TaskBatch, make_synthetic_bank
from leo_tutorial.training import apply_meta_gradient, make_optimizer, meta_step

N_WAY, N_QUERY, BATCH = 5, 15, 12


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def per_task_meta_step(model: LEO, optimizer: torch.optim.Optimizer, batch: TaskBatch) -> None:
    """One outer update computed task by task (see the module docstring)."""
    loss = torch.stack([model(batch[i]).loss for i in range(batch.batch_size)]).mean()
    apply_meta_gradient(model, optimizer, loss)


def time_steps(
    step: Callable[[int], None], steps: int, repeats: int, warmup: int = 3
) -> list[float]:
    """Seconds per call of ``step(i)``, one number per repeat of ``steps`` calls."""
    for i in range(warmup):
        step(i)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(steps):
            step(i)
        times.append((time.perf_counter() - start) / steps)
    return times


def bench_shot(bank, k_shot: int, steps: int, repeats: int) -> list[tuple[str, list[float]]]:
    sampler = EpisodeSampler(bank.split("train"), N_WAY, k_shot, N_QUERY)
    batches = [sampler.sample(BATCH, [0, i]) for i in range(steps + 2)]
    rows = []

    def batched(config: LEOConfig, sample: bool = False) -> list[float]:
        torch.manual_seed(0)
        model, seed = LEO(config).train(), [1]
        optimizer = make_optimizer(model)

        def step(i: int) -> None:
            if sample:
                seed[0] += 1
                meta_step(model, optimizer, sampler.sample(BATCH, [1, seed[0]]))
            else:
                meta_step(model, optimizer, batches[i % len(batches)])

        return time_steps(step, steps, repeats)

    rows.append(("batched (analytic)", batched(LEOConfig())))
    rows.append(("batched (analytic) + sampling", batched(LEOConfig(), sample=True)))
    threads = torch.get_num_threads()
    if threads > 1:
        torch.set_num_threads(1)
        try:
            rows.append(("batched (analytic), 1 thread", batched(LEOConfig())))
        finally:
            torch.set_num_threads(threads)
    rows.append(("batched (autograd)", batched(LEOConfig(inner_gradient="autograd"))))

    torch.manual_seed(0)
    model = LEO(LEOConfig(inner_gradient="autograd")).train()
    optimizer = make_optimizer(model)
    rows.append(
        (
            "per-task loop (12 x batch of 1, autograd)",
            time_steps(
                lambda i: per_task_meta_step(model, optimizer, batches[i % len(batches)]),
                max(2, steps // 2),
                repeats,
                warmup=1,
            ),
        )
    )
    return rows


MEMORY_SCRIPT = textwrap.dedent("""
    import resource, sys, tempfile
    import torch
    from leo_tutorial import LEOConfig, TrainConfig
    from leo_tutorial.data import make_synthetic_bank
    from leo_tutorial.training import train
    steps, val_every, tasks = (int(a) for a in sys.argv[1:4])
    bank = make_synthetic_bank()
    bank_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    schedule = TrainConfig(k_shot=1, steps=steps, val_every=val_every, val_tasks=tasks,
                           test_tasks=tasks, eval_n_query=None)
    with tempfile.TemporaryDirectory() as out:
        result = train(LEOConfig(), schedule, bank, out, device="cpu", progress=False,
                       log=lambda message: None)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(bank_rss, peak, result.seconds, result.test.accuracy)
""")


def peak_memory(steps: int, val_every: int, tasks: int) -> tuple[float, float, float, float]:
    """(MB after building the bank, peak MB, seconds, test accuracy) of a training process."""
    env = {**os.environ, "TQDM_DISABLE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, str(steps), str(val_every), str(tasks)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    bank_kb, peak_kb, seconds, accuracy = result.stdout.split()[-4:]
    return int(bank_kb) / 1024, int(peak_kb) / 1024, float(seconds), float(accuracy)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="timed meta-steps per repeat of a batched row (default 20; "
        "--quick 4); the per-task loop runs half as many",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed repeats per row; the table shows their median (default 3)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="fewer steps and a short training run for the memory figure",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory run")
    args = parser.parse_args()
    steps = args.steps or (4 if args.quick else 20)
    repeats = args.repeats or (2 if args.quick else 3)
    if args.threads:
        torch.set_num_threads(args.threads)

    start = time.perf_counter()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {cpu_model()}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start"
    )
    print(
        f"LEO meta-training, float32, CPU: D=640, {N_WAY}-way, {N_QUERY} queries/class, "
        f"B={BATCH} tasks/step, 5 latent + 5 fine-tuning steps, LEOConfig() defaults; "
        f"median (best) of {repeats} repeats of {steps} steps ({max(2, steps // 2)} for the "
        f"per-task loop)\n"
    )
    bank = make_synthetic_bank()
    header = f"{'shot':>4}  {'mode':<42} {'ms/step':>16} {'tasks/s':>8} {'vs loop':>8}"
    print(header)
    print("-" * len(header))
    for k_shot in (1, 5):
        rows = bench_shot(bank, k_shot, steps, repeats)
        loop = statistics.median(rows[-1][1])
        for name, times in rows:
            median = statistics.median(times)
            ms = f"{1e3 * median:.1f} ({1e3 * min(times):.1f})"
            print(
                f"{k_shot:>4}  {name:<42} {ms:>16} {BATCH / median:>8.0f} {loop / median:>7.1f}x",
                flush=True,
            )
    print(f"\nload average {os.getloadavg()[0]:.2f} at end of timing")

    if not args.no_memory:
        steps_m, every, tasks = (20, 10, 50) if args.quick else (200, 100, 200)
        bank_mb, peak_mb, seconds, accuracy = peak_memory(steps_m, every, tasks)
        print(
            f"\npeak memory (ru_maxrss) of leo_tutorial.training.train, 1-shot, {steps_m} "
            f"steps, validation every {every} on {tasks} tasks and {tasks} test tasks, every "
            f"remaining image as a query (V = 599), eval batches of "
            f"{TrainConfig().eval_batch_size} tasks:"
        )
        print(
            f"  {peak_mb:.0f} MB peak ({bank_mb:.0f} MB after building the synthetic bank); "
            f"run took {seconds:.1f} s, test accuracy {100 * accuracy:.1f}%"
        )
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"(this benchmark process: {own:.0f} MB peak; total {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
