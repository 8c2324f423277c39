"""Speed-ups tried for the fast meta-step that are *not* in the package, measured next to it.

Issue 16 asks for 1 500 / 800 tasks/s (1- / 5-shot) on a 2-core CPU; the fast path
(``fast.py``) reaches less than half of that (``bench_meta_training.py``). This script shows
where its time goes and measures three more ways to spend the machine on the step, so that
anyone can check why they were left out:

1. **Where the step's time goes**: wall ms per meta-step of its parts with everything in one
   thread (the fast path's own functions, timed by wrapping them; the rest is the loss
   assembly, the weight penalties, the autograd engine, the NaN guard, clipping and Adam), and
   the step with the helper thread that ``fast.py`` uses on a CPU with 2+ cores.
2. **Two Python threads on task halves**: the unrolled loops and their hand-written backward
   (``fast._loops`` + ``fast._backward``, most of the step) for tasks 0..B/2-1 and B/2..B-1 at
   the same time, one intra-op thread each, against one thread on all B tasks. The random draws
   stay in one thread (the shared seeded stream); the meta-gradients agree to rounding.
3. **Two intra-op threads** (``torch.set_num_threads(2)``) for the whole meta-step (with the
   helper thread, as by default).
4. **torch.compile** of ``fast._loops`` and ``fast._backward`` (Inductor, static shapes; the
   helper thread off, both eager and compiled): the whole meta-step's time, the cold compile
   time (Inductor's cache goes to a fresh temporary folder) and the largest relative
   difference of the meta-gradients from the eager step's (float32). Skipped with
   ``--no-compile`` or when no C++ compiler is found.
5. **Sampling the next batch ahead** on the helper thread during the step's backward pass
   (the episodes are seeded by the step, so nothing changes but the timing), against sampling
   it in place before the step, stepping through distinct pre-sampled batches (no sampling,
   fresh memory every step) and cycling 10 batches (what ``bench_meta_training``'s ``fast``
   row does: they stay in the caches).

    python benchmarks/bench_alternatives.py               # about 2-3 minutes idle
    python benchmarks/bench_alternatives.py --no-compile  # sections 1-3 only, under a minute
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import os
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

CACHE = tempfile.mkdtemp(prefix="leo-inductor-")  # a cold compile: Inductor's cache starts empty
os.environ["TORCHINDUCTOR_CACHE_DIR"] = CACHE

import torch  # noqa: E402 (after the cache folder is chosen)

from leo_tutorial import LEO, LEOConfig, fast  # noqa: E402
from leo_tutorial.data import EpisodeSampler, make_synthetic_bank  # noqa: E402
from leo_tutorial.training import apply_meta_gradient, make_optimizer, meta_step  # noqa: E402

N_WAY, N_QUERY, BATCH = 5, 15, 12


def batches(bank, k_shot: int, count: int = 10) -> list:
    sampler = EpisodeSampler(bank.split("train"), N_WAY, k_shot, N_QUERY)
    return [sampler.sample(BATCH, [0, i]) for i in range(count)]


def step_ms(model: LEO, optimizer, data: list, rounds: int) -> float:
    """Median over ``rounds`` of the wall ms per meta-step over ``data`` (after 2 warm-ups)."""
    for batch in data[:2]:
        meta_step(model, optimizer, batch)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for batch in data:
            meta_step(model, optimizer, batch)
        times.append((time.perf_counter() - start) / len(data))
    return 1e3 * statistics.median(times)


def fresh_model() -> tuple[LEO, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = LEO(LEOConfig()).train()
    return model, make_optimizer(model)


def parts(data: list, rounds: int) -> tuple[float, dict[str, float]]:
    """(ms per step, {part: ms per step}) with the fast path's functions wrapped by timers."""
    spent: dict[str, float] = collections.defaultdict(float)
    names = {
        "_draw": "random draws of the loops",
        "_encode": "encoder + relation net (forward)",
        "_loops": "unrolled loops (forward)",
        "_backward": "unrolled loops (backward)",
    }
    originals = {name: getattr(fast, name) for name in names}

    def timed(name: str, fn):  # noqa: ANN001, ANN202
        def call(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            start = time.perf_counter()
            result = fn(*args, **kwargs)
            spent[names[name]] += time.perf_counter() - start
            return result

        return call

    model, optimizer = fresh_model()
    cores, fast._CORES = fast._CORES, 1  # no helper thread: every part in this thread
    try:
        for name, fn in originals.items():
            setattr(fast, name, timed(name, fn))
        for batch in data[:2]:
            meta_step(model, optimizer, batch)
        spent.clear()
        start = time.perf_counter()
        for _ in range(rounds):
            for batch in data:
                meta_step(model, optimizer, batch)
        total = (time.perf_counter() - start) / (rounds * len(data))
    finally:
        fast._CORES = cores
        for name, fn in originals.items():
            setattr(fast, name, fn)
    per_step = {part: 1e3 * seconds / (rounds * len(data)) for part, seconds in spent.items()}
    return 1e3 * total, per_step


def captured_problem(model: LEO, batch) -> tuple:  # noqa: ANN001
    """The arguments (z0, g_d, alpha, alpha_ft, problem) of the fused loops in one forward."""
    seen = {}
    original = fast._InnerLoops.apply

    def capture(*args):  # noqa: ANN002, ANN202
        seen["args"] = args
        return original(*args)

    fast._InnerLoops.apply = capture
    try:
        model(batch)
    finally:
        fast._InnerLoops.apply = original
    z0, g_d, alpha, alpha_ft, problem = seen["args"]
    return (z0.detach(), g_d.detach(), alpha.detach(), alpha_ft.detach(), problem)


def task_slice(pb, part: slice):  # noqa: ANN001, ANN201
    """The loops' problem restricted to the tasks ``part`` (every tensor is batched first)."""

    def cut(t):  # noqa: ANN001, ANN202
        t = fast._ready(t)  # a draw of the helper thread, once made
        return None if t is None else t[part]

    return dataclasses.replace(
        pb,
        x=pb.x[part],
        y=pb.y[part],
        onehot=pb.onehot[part],
        qx=cut(pb.qx),
        qy=cut(pb.qy),
        q_onehot=cut(pb.q_onehot),
        masks=[cut(m) for m in pb.masks],
        query_mask=cut(pb.query_mask),
        eps=None if pb.eps is None else [cut(e) for e in pb.eps],
        tape=None,
    )


def threads_on_halves(data: list, repeats: int = 30) -> tuple[float, float, float]:
    """(ms serial on B tasks, ms with two threads on B/2 each, max |d g_d| difference)."""
    model, _ = fresh_model()
    z0, g_d, alpha, alpha_ft, pb = captured_problem(model, data[0])
    b = z0.shape[0]

    def loops_and_backward(pb=pb, z0=z0):  # noqa: ANN001, ANN202
        tape = fast._loops(z0, g_d, alpha, alpha_ft, pb)
        d_loss = torch.full((z0.shape[0],), 1.0 / b)
        none = [None] * len(tape.grads)
        return fast._backward(
            tape, d_loss, pb.q_onehot, g_d, alpha, alpha_ft, pb.k_shot, True, none
        )

    halves = [(task_slice(pb, s), z0[s]) for s in (slice(0, b // 2), slice(b // 2, b))]
    pool = ThreadPoolExecutor(2)

    def two_threads():  # noqa: ANN202
        futures = [pool.submit(loops_and_backward, p, z) for p, z in halves]
        return [f.result() for f in futures]

    def ms(fn) -> float:  # noqa: ANN001
        fn()
        fn()
        best = []
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(repeats):
                fn()
            best.append((time.perf_counter() - start) / repeats)
        return 1e3 * statistics.median(best)

    serial, parallel = ms(loops_and_backward), ms(two_threads)
    whole, split = loops_and_backward(), two_threads()
    difference = (whole[1] - (split[0][1] + split[1][1])).abs().max().item()
    pool.shutdown()
    return serial, parallel, difference


def compiled(data: list, rounds: int) -> tuple[float, float, float]:
    """(ms per step with fast._loops and fast._backward compiled, compile seconds, largest
    relative difference of a meta-gradient to the eager one, same seed and batch)."""
    originals = fast._loops, fast._backward

    def gradients() -> list[torch.Tensor]:
        model, _ = fresh_model()
        torch.manual_seed(100)
        out = model(data[0])
        return torch.autograd.grad(out.loss, list(model.parameters()))

    eager = gradients()
    cores, fast._CORES = fast._CORES, 1  # no helper thread inside the compiled functions
    try:
        fast._loops = torch.compile(originals[0], dynamic=False)
        fast._backward = torch.compile(originals[1], dynamic=False)
        start = time.perf_counter()
        result = gradients()  # compiles on the first call
        seconds = time.perf_counter() - start
        model, optimizer = fresh_model()
        ms = step_ms(model, optimizer, data, rounds)
    finally:
        fast._loops, fast._backward = originals
        fast._CORES = cores
    difference = max(
        ((a - b).abs().max() / a.abs().max()).item() for a, b in zip(eager, result, strict=True)
    )
    return ms, seconds, difference


def sampling_ahead(bank, k_shot: int, steps: int = 150) -> dict[str, float]:
    """ms per meta-step (helper thread on) with the batches cycled, distinct, sampled in place
    and sampled ahead; each over ``steps`` steps."""
    sampler = EpisodeSampler(bank.split("train"), N_WAY, k_shot, N_QUERY)
    cycled = [sampler.sample(BATCH, [0, i]) for i in range(10)]
    distinct = [sampler.sample(BATCH, [1, i]) for i in range(steps)]
    model, optimizer = fresh_model()
    helper = fast._helper(torch.device("cpu"))
    ahead: list = []

    def in_place(i: int) -> None:
        meta_step(model, optimizer, sampler.sample(BATCH, [2, i]))

    def sampled_ahead(i: int) -> None:
        batch = ahead.pop().result() if ahead else sampler.sample(BATCH, [3, i])
        out = model(batch)
        if helper is not None:  # the next batch, while this step's backward runs
            ahead.append(helper.submit(sampler.sample, BATCH, [3, i + 1]))
        apply_meta_gradient(model, optimizer, out.loss)

    rows = {
        "10 batches cycled": lambda i: meta_step(model, optimizer, cycled[i % 10]),
        "distinct batches": lambda i: meta_step(model, optimizer, distinct[i]),
        "sampled in place": in_place,
        "sampled ahead": sampled_ahead,
    }
    times: dict[str, list[float]] = {name: [] for name in rows}
    for _ in range(2):  # interleaved rounds
        for name, step in rows.items():
            for i in range(3):
                step(i)  # warm-up
            ahead.clear()
            start = time.perf_counter()
            for i in range(steps):
                step(i)
            times[name].append(1e3 * (time.perf_counter() - start) / steps)
    return {name: min(ms) for name, ms in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds of 10 steps")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    args = parser.parse_args()
    torch.set_num_threads(1)
    bank = make_synthetic_bank()
    data = {k: batches(bank, k) for k in (1, 5)}
    print(
        f"torch {torch.__version__}, LEO float32, D=640, Z=64, {N_WAY}-way, {N_QUERY} queries, "
        f"B={BATCH}, 5 + 5 steps, second order, LEOConfig() defaults; 1 thread unless said"
    )

    print("\n== 1. where a fast meta-step's time goes (ms per step, wrapped functions)")
    for k in (1, 5):
        total, spent = parts(data[k], args.rounds)
        shares = ", ".join(f"{part} {ms:.1f}" for part, ms in spent.items())
        rest = total - sum(spent.values())
        model, optimizer = fresh_model()
        helped = step_ms(model, optimizer, data[k], args.rounds)
        print(
            f"{k}-shot  {total:5.1f} ms in one thread: {shares}, the rest (losses, autograd, "
            f"Adam) {rest:.1f}; with the helper thread {helped:.1f} ms ({total / helped:.2f}x)"
        )

    print("\n== 2. two Python threads on task halves: unrolled loops + their backward")
    for k in (1, 5):
        serial, parallel, difference = threads_on_halves(data[k])
        print(
            f"{k}-shot  one thread on {BATCH} tasks {serial:5.2f} ms, two threads on "
            f"{BATCH // 2} each {parallel:5.2f} ms: {serial / parallel:.2f}x "
            f"(d g_d agrees to {difference:.1e})"
        )

    print("\n== 3. intra-op threads: the whole meta-step")
    for k in (1, 5):
        times = {}
        for threads in (1, 2):
            torch.set_num_threads(threads)
            model, optimizer = fresh_model()
            times[threads] = step_ms(model, optimizer, data[k], args.rounds)
        torch.set_num_threads(1)
        print(
            f"{k}-shot  1 thread {times[1]:5.1f} ms ({BATCH / times[1] * 1e3:.0f} tasks/s), "
            f"2 threads {times[2]:5.1f} ms ({BATCH / times[2] * 1e3:.0f} tasks/s): "
            f"{times[1] / times[2]:.2f}x"
        )

    print("\n== 4. torch.compile of the unrolled loops and their backward (Inductor)")
    if args.no_compile:
        print("skipped (--no-compile)")
    elif not any(shutil.which(cc) for cc in ("c++", "g++", "clang++")):
        print("skipped: no C++ compiler on PATH (Inductor needs one on the CPU)")
    else:
        for k in (1, 5):
            model, optimizer = fresh_model()
            cores, fast._CORES = fast._CORES, 1  # eager without the helper, as compiled
            eager = step_ms(model, optimizer, data[k], args.rounds)
            fast._CORES = cores
            ms, seconds, difference = compiled(data[k], args.rounds)
            print(
                f"{k}-shot  eager {eager:5.1f} ms, compiled {ms:5.1f} ms: {eager / ms:.2f}x, "
                f"{BATCH / ms * 1e3:.0f} tasks/s; cold compile {seconds:.0f} s; "
                f"meta-gradients differ by {difference:.1e} (relative)",
                flush=True,
            )

    print("\n== 5. episode sampling: the next batch sampled ahead on the helper thread")
    for k in (1, 5):
        ms = sampling_ahead(bank, k)
        print(f"{k}-shot  " + ", ".join(f"{name} {value:.1f} ms" for name, value in ms.items()))
    shutil.rmtree(CACHE, ignore_errors=True)


if __name__ == "__main__":
    main()
