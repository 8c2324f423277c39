"""Meta-training and evaluation speed of LEO's fast path (fast.py) next to the reference
(model.py), measured in the same run, plus peak memory and the official protocol's projected time.

Shapes are miniImageNet's: D = 640, Z = 64, 5-way 1-shot and 5-shot, 15 queries per class, a
meta-batch of B = 12 tasks, 5 latent + 5 fine-tuning steps, second order, float32, default
``LEOConfig()`` (dropout 0.5, sampling on). Tasks are episodes of the synthetic bank, which has
miniImageNet's split sizes (64 / 16 / 20 classes of 600 images).

Sections:

1. **Profile**: a ``torch.profiler`` table of the fast meta-step (and the reference's) per shot.
2. **Meta-training**: ms per meta-step (``training.meta_step``: forward, backward, NaN guard,
   clipping, Adam) for ``reference`` (``LEOConfig(reference=True)``), ``fast`` (the default),
   ``fast, no helper thread`` (the same step with its random draws, weight penalties and
   dL/dg_d products made in the calling thread, as on a one-core machine) and ``fast +
   sampling`` (episodes sampled inside the timed loop, as in training). Rows are timed
   in interleaved rounds, so a busy machine slows all of them alike; the table gives the median
   wall time, the best round, the process's CPU time per step (what the step costs on a core
   of its own) and the speed-up over the reference from the same rounds.
3. **Evaluation**: tasks/s of ``training.evaluate`` with every remaining image as a query
   (V = 600 - K per class, the official meta-val/test protocol).
   Then the CPU time of the work both paths must do: every random draw of a step (the
   reference's random stream is kept) and the relation network's three big products.
   And the **arithmetic floor**: the matrix-product FLOPs of a meta-step (FlopCounterMode) at
   the machine's own GEMM rate, a bound no implementation of these products can beat.
4. **Official protocol**: 100 000 meta-steps + 100 validations on 2 000 tasks (every 1 000
   steps, step 0 included) + a test on 10 000 tasks, projected from sections 2 and 3.
5. **Peak memory**: peak RSS (VmHWM) of a separate process running ``training.train`` at these
   shapes (200 steps, validation every 100 steps on 200 tasks with V = 600 - K, 200 test tasks).

    python benchmarks/bench_meta_training.py --threads 1            # about 3 minutes idle
    python benchmarks/bench_meta_training.py --threads 1 --quick    # a rough table
    python benchmarks/bench_meta_training.py --threads 2 --no-profile  # both cores
    python benchmarks/bench_meta_training.py --device cuda          # on a GPU, when present
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
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from leo_tutorial import LEO, LEOConfig, TrainConfig, fast, noise
from leo_tutorial.data import EpisodeSampler, make_synthetic_bank
from leo_tutorial.training import evaluate, make_optimizer, meta_step

N_WAY, N_QUERY, BATCH = 5, 15, 12
PROTOCOL = dict(steps=100_000, validations=100, val_tasks=2_000, test_tasks=10_000)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load() -> str:
    return f"{os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else "n/a"


class Timer:
    """Wall and process CPU seconds of a block (CUDA synchronised)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __enter__(self) -> Timer:
        if self.cuda:
            torch.cuda.synchronize()
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            torch.cuda.synchronize()
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def training_rows(bank, k_shot: int, steps: int, rounds: int, device: torch.device):
    """{row: (wall seconds per step per round, CPU seconds per step per round)}."""
    sampler = EpisodeSampler(bank.split("train"), N_WAY, k_shot, N_QUERY)
    batches = [sampler.sample(BATCH, [0, i]).to(device) for i in range(steps)]
    rows: dict[str, Callable[[int], None]] = {}
    seed = [1000]
    cores = fast._CORES
    for name, config, sample, helper in (
        ("reference (model.py)", LEOConfig(reference=True), False, True),
        ("fast, no helper thread", LEOConfig(), False, False),
        ("fast (fast.py)", LEOConfig(), False, True),
        ("fast + sampling", LEOConfig(), True, True),
    ):
        torch.manual_seed(0)
        model = LEO(config).to(device).train()
        optimizer = make_optimizer(model)

        def step(i: int, model=model, optimizer=optimizer, sample=sample, helper=helper) -> None:
            if sample:
                seed[0] += 1
                batch = sampler.sample(BATCH, [1, seed[0]]).to(device)
            else:
                batch = batches[i]
            fast._CORES = cores if helper else 1  # 1: everything in the calling thread
            meta_step(model, optimizer, batch)
            fast._CORES = cores

        for i in range(2):  # warm-up
            step(i)
        rows[name] = step
    times: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in rows}
    timer = Timer(device)
    for _ in range(rounds):
        for name, step in rows.items():
            with timer:
                for i in range(steps):
                    step(i)
            times[name][0].append(timer.wall / steps)
            times[name][1].append(timer.cpu / steps)
    return times


def floors(bank, k_shot: int, device: torch.device, repeats: int = 20) -> tuple[float, float]:
    """CPU ms per meta-step of (every random draw of the step, the relation network's three
    [B M^2, 2Z] x [2Z, 2Z] products): work that both paths must do."""
    sampler = EpisodeSampler(bank.split("train"), N_WAY, k_shot, N_QUERY)
    batch = sampler.sample(BATCH, [3, 0]).to(device)
    model = LEO(LEOConfig()).to(device).train()
    x, qx, z_shape = batch.support_x, batch.query_x, (*batch.support_x.shape[:3], 64)

    def draws() -> None:  # the encoder's mask, the latent noise, then the loops' draws
        noise.dropout_mask(x.shape, model.config.dropout_rate, x.dtype, x.device)
        torch.randn(z_shape, dtype=x.dtype, device=x.device)
        fast._draw(model, x, qx)

    pairs = BATCH * (N_WAY * k_shot) ** 2
    a, w = torch.randn(pairs, 128, device=device), torch.randn(128, 128, device=device)

    def products() -> None:
        a @ w.T, a @ w, a.T @ a  # forward, and the two products of its backward

    timer, result = Timer(device), []
    for fn in (draws, products):
        fn()
        with timer:
            for _ in range(repeats):
                fn()
        result.append(1e3 * timer.cpu / repeats)
    return result[0], result[1]


def step_flops(bank, k_shot: int, reference: bool, device: torch.device) -> float:
    """Matrix-product FLOPs (torch's FlopCounterMode: mm, bmm, addmm, ...) of one meta-step's
    forward and backward; elementwise work is not counted."""
    sampler = EpisodeSampler(bank.split("train"), N_WAY, k_shot, N_QUERY)
    batch = sampler.sample(BATCH, [4, 0]).to(device)
    torch.manual_seed(0)
    model = LEO(LEOConfig(reference=reference)).to(device).train()
    cores, fast._CORES = fast._CORES, 1  # the counter sees this thread only: no helper thread
    try:
        with FlopCounterMode(display=False) as counter:
            out = model(batch)
            torch.autograd.grad(out.loss, list(model.parameters()), allow_unused=True)
    finally:
        fast._CORES = cores
    return float(counter.get_total_flops())


def gemm_rate(device: torch.device, size: int = 2048, repeats: int = 10) -> float:
    """FLOP/s of a large float32 [size, size] x [size, size] product at this thread count: the
    machine's arithmetic ceiling (the step's own, smaller products run below it)."""
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    for _ in range(2):
        a @ b
    timer = Timer(device)
    with timer:
        for _ in range(repeats):
            a @ b
    return 2 * size**3 * repeats / timer.wall


def profile_table(bank, k_shot: int, reference: bool, device: torch.device, rows: int) -> str:
    sampler = EpisodeSampler(bank.split("train"), N_WAY, k_shot, N_QUERY)
    batches = [sampler.sample(BATCH, [2, i]).to(device) for i in range(8)]
    torch.manual_seed(0)
    model = LEO(LEOConfig(reference=reference)).to(device).train()
    optimizer = make_optimizer(model)
    for batch in batches[:3]:
        meta_step(model, optimizer, batch)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities, record_shapes=True) as prof:
        for batch in batches[3:]:
            meta_step(model, optimizer, batch)
    table = prof.key_averages(group_by_input_shape=True).table(
        sort_by="self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total",
        row_limit=rows,
        max_name_column_width=28,
        max_shapes_column_width=44,
    )
    return f"(5 meta-steps, {k_shot}-shot)\n" + table


def eval_rate(bank, k_shot: int, reference: bool, tasks: int, device: torch.device):
    """(tasks/s wall, tasks/s CPU) of training.evaluate with V = 600 - K queries per class."""
    torch.manual_seed(0)
    model = LEO(LEOConfig(reference=reference)).to(device)
    split = bank.split("val")
    batch_size = TrainConfig().eval_batch_size
    evaluate(model, split, n_way=N_WAY, k_shot=k_shot, tasks=batch_size, batch_size=batch_size)
    timer = Timer(device)
    with timer:
        evaluate(
            model,
            split,
            n_way=N_WAY,
            k_shot=k_shot,
            n_query=None,
            tasks=tasks,
            batch_size=batch_size,
            seed=[5],
            device=device,
        )
    return tasks / timer.wall, tasks / timer.cpu


# Peak RSS of the child itself: VmHWM (reset by exec). ru_maxrss of a forked child would carry
# over the parent's peak at fork time (Linux keeps it across exec).
MEMORY_SCRIPT = textwrap.dedent("""
    import resource, sys, tempfile
    import torch
    def peak_kb():
        try:
            with open("/proc/self/status") as f:
                return next(int(l.split()[1]) for l in f if l.startswith("VmHWM:"))
        except (OSError, StopIteration):
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    torch.set_num_threads(int(sys.argv[5]))
    from leo_tutorial import LEOConfig, TrainConfig
    from leo_tutorial.data import make_synthetic_bank
    from leo_tutorial.training import train
    k_shot, steps, val_every, tasks = (int(a) for a in sys.argv[1:5])
    bank = make_synthetic_bank()
    bank_rss = peak_kb()
    schedule = TrainConfig(k_shot=k_shot, steps=steps, val_every=val_every, val_tasks=tasks,
                           test_tasks=tasks, eval_n_query=None)
    with tempfile.TemporaryDirectory() as out:
        result = train(LEOConfig(), schedule, bank, out, device=sys.argv[6], progress=False,
                       log=lambda message: None)
    peak = peak_kb()
    print(bank_rss, peak, result.seconds, result.test.accuracy)
""")


def peak_memory(k_shot: int, steps: int, val_every: int, tasks: int, device: torch.device):
    """(MB after building the bank, peak MB, seconds, test accuracy) of a training process."""
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            MEMORY_SCRIPT,
            str(k_shot),
            str(steps),
            str(val_every),
            str(tasks),
            str(torch.get_num_threads()),
            str(device),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "TQDM_DISABLE": "1"},
        check=True,
    )
    bank_kb, peak_kb, seconds, accuracy = result.stdout.split()[-4:]
    return int(bank_kb) / 1024, int(peak_kb) / 1024, float(seconds), float(accuracy)


def minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--steps", type=int, default=None, help="meta-steps per timed round (default 10; --quick 4)"
    )
    parser.add_argument(
        "--rounds", type=int, default=None, help="interleaved timed rounds (default 5; --quick 2)"
    )
    parser.add_argument(
        "--eval-tasks",
        type=int,
        default=None,
        help="tasks per evaluation "
        "timing, fast path (default 400; --quick 100; the reference gets 1/4)",
    )
    parser.add_argument("--quick", action="store_true", help="a rough table, fewer repeats")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--no-profile", action="store_true", help="skip the profiler tables")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    args = parser.parse_args()
    steps = args.steps or (4 if args.quick else 10)
    rounds = args.rounds or (2 if args.quick else 5)
    eval_tasks = args.eval_tasks or (100 if args.quick else 400)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")

    start = time.perf_counter()
    where = torch.cuda.get_device_name() if device.type == "cuda" else cpu_model()
    print(
        f"torch {torch.__version__}, {device.type} ({where}), {torch.get_num_threads()} "
        f"threads, {os.cpu_count()} CPUs, load average {load()} at start"
    )
    print(
        f"LEO, float32: D=640, Z=64, {N_WAY}-way, {N_QUERY} queries/class, B={BATCH} tasks/step, "
        "5 latent + 5 fine-tuning steps, second order, LEOConfig() defaults\n"
    )
    bank = make_synthetic_bank()

    if not args.no_profile:
        for k_shot in (1, 5):
            for reference in (False, True):
                name = "reference (model.py)" if reference else "fast (fast.py)"
                print(f"== profile: {name}, " + profile_table(bank, k_shot, reference, device, 14))

    header = (
        f"{'shot':>4}  {'meta-step':<22} {'ms/step':>9} {'best':>7} {'CPU ms':>7} "
        f"{'tasks/s':>8} {'vs ref':>7}"
    )
    print(f"== meta-training: median of {rounds} interleaved rounds of {steps} steps")
    print(header)
    print("-" * len(header))
    step_seconds = {}
    for k_shot in (1, 5):
        times = training_rows(bank, k_shot, steps, rounds, device)
        ref_rounds = times["reference (model.py)"][0]
        for name, (wall, cpu) in times.items():
            median = statistics.median(wall)
            ratio = statistics.median(r / w for r, w in zip(ref_rounds, wall, strict=True))
            print(
                f"{k_shot:>4}  {name:<22} {1e3 * median:>9.1f} {1e3 * min(wall):>7.1f} "
                f"{1e3 * statistics.median(cpu):>7.1f} {BATCH / median:>8.0f} {ratio:>6.2f}x",
                flush=True,
            )
            step_seconds[k_shot, name] = median
    print(f"(load average {load()} after timing)\n")

    print(
        "== work both paths must do, CPU ms per meta-step (fixed by the shared random stream "
        "and by eq. 3's (N K)^2 pairs)"
    )
    for k_shot in (1, 5):
        draw_ms, product_ms = floors(bank, k_shot, device)
        print(
            f"{k_shot:>4}-shot  random draws {draw_ms:5.1f} ms, relation-network products "
            f"{product_ms:5.1f} ms (together {draw_ms + product_ms:.1f} ms = "
            f"{BATCH / (draw_ms + product_ms) * 1e3:.0f} tasks/s at most)"
        )
    print()

    rate = gemm_rate(device)
    print(
        f"== arithmetic floor: matrix-product FLOPs per meta-step at the machine's GEMM rate "
        f"({rate / 1e9:.0f} GFLOP/s, float32 [2048, 2048] products, "
        f"{torch.get_num_threads()} threads)"
    )
    for k_shot in (1, 5):
        for reference, name in ((True, "reference (model.py)"), (False, "fast (fast.py)")):
            flops = step_flops(bank, k_shot, reference, device)
            print(
                f"{k_shot:>4}-shot  {name:<22} {flops / 1e9:6.3f} GFLOP per step: at least "
                f"{1e3 * flops / rate:5.1f} ms, {BATCH * rate / flops:5.0f} tasks/s at most"
            )
    print()

    print(
        f"== evaluation: training.evaluate, V = 600 - K queries per class, eval batches of "
        f"{TrainConfig().eval_batch_size} tasks"
    )
    rates = {}
    for k_shot in (1, 5):
        for reference in (True, False):
            tasks = max(TrainConfig().eval_batch_size, eval_tasks // 4 if reference else eval_tasks)
            wall, cpu = eval_rate(bank, k_shot, reference, tasks, device)
            name = "reference (model.py)" if reference else "fast (fast.py)"
            rates[k_shot, reference] = wall
            print(
                f"{k_shot:>4}-shot  {name:<22} {wall:>7.0f} tasks/s ({cpu:.0f} per CPU-second, "
                f"{tasks} tasks)",
                flush=True,
            )

    p = PROTOCOL
    print(
        f"\n== official protocol, projected: {p['steps']} meta-steps (+ sampling) + "
        f"{p['validations']} x {p['val_tasks']} validation tasks + {p['test_tasks']} test tasks"
    )
    for k_shot in (1, 5):
        for reference, name in ((True, "reference (model.py)"), (False, "fast (fast.py)")):
            step = step_seconds[k_shot, "fast + sampling"]
            if reference:  # sampling costs the same on both paths
                step += step_seconds[k_shot, name] - step_seconds[k_shot, "fast (fast.py)"]
            train_s = p["steps"] * step
            eval_s = (p["validations"] * p["val_tasks"] + p["test_tasks"]) / rates[
                k_shot, reference
            ]
            print(
                f"{k_shot:>4}-shot  {name:<22} {minutes(train_s + eval_s):>9} "
                f"(meta-training {minutes(train_s)}, evaluation {minutes(eval_s)})"
            )

    if not args.no_memory:
        steps_m, every, tasks = (20, 10, 50) if args.quick else (200, 100, 200)
        print(
            f"\n== peak memory (peak RSS) of training.train: {steps_m} steps, validation "
            f"every {every} steps on {tasks} tasks and {tasks} test tasks, V = 600 - K"
        )
        for k_shot in (1, 5):
            bank_mb, peak_mb, seconds, accuracy = peak_memory(k_shot, steps_m, every, tasks, device)
            print(
                f"{k_shot:>4}-shot  {peak_mb:.0f} MB peak ({bank_mb:.0f} MB after building the "
                f"synthetic bank); the run took {seconds:.1f} s, test accuracy "
                f"{100 * accuracy:.1f}%",
                flush=True,
            )
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"(this process: {own:.0f} MB peak; total {time.perf_counter() - start:.0f} s; load "
        f"average {load()} at end)"
    )


if __name__ == "__main__":
    main()
