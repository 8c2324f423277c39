"""Automatic checks for the exercise cells of the notebooks (``notebooks/exercises/``).

In a notebook, the learner writes a small function and passes it to its check::

    latent_step = checks.check_latent_step(latent_step)

The check runs the function on a few small cases, compares it with the library's reference and
prints one line: ``✓ ... passed``, a specific hint for a typical mistake (``✗ ...``), or, while
the function still raises ``NotImplementedError``, the first hint and that the notebook goes on
with the reference. It returns the function the notebook continues with: the learner's once it
passes, the reference otherwise, so an untouched exercise notebook runs to the end. Passing the
reference itself back (re-running only the check cell after a failed check) is recognised and
answered with "re-run the cell that defines it". Checks never change the caller's random state
or models.

Hints come in tiers, from the idea to the solution: ``checks.hint("latent_step")`` is the first
(the exercise stub raises it), ``checks.hint("latent_step", 2)`` says more, the last tier is the
code. :func:`diagnose` gives the verdict as a value (``None`` = passed, else the hint) for tests.
"""

from __future__ import annotations

import math
import traceback
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from . import losses
from .config import LEOConfig
from .data.episodes import TaskBatch
from .errors import UserError
from .model import LEO, STD_FLOOR

# ------------------------------------------------------------------------------ machinery
Mistakes = list[tuple[str, Tensor]]  # (hint, what that wrong answer returns)


@dataclass(frozen=True)
class Exercise:
    """One exercise: the function the learner writes (``name``), where, what it computes, the
    library's reference (same signature), ``diagnose(fn) -> None | hint`` and the tiered hints
    (idea first, code last)."""

    name: str
    notebook: str
    title: str
    reference: Callable
    diagnose: Callable[[Callable], str | None]
    hints: tuple[str, ...]


EXERCISES: dict[str, Exercise] = {}
_DTYPE = torch.float64  # checks run in float64: wrong answers differ by far more than rounding
# Words in the message of an exception raised by a shape mismatch (RuntimeError, IndexError).
_SIZE_WORDS = ("size", "shape", "dimension", "out of bounds", "mat1 and mat2", "broadcast")


class Hint(str):
    """A hint's text; shown without quotes when it is the value of a notebook cell."""

    def __repr__(self) -> str:
        return str(self)


def hint(name: str, level: int = 1) -> Hint:
    """Hint number ``level`` (1 = the idea; the last = the solution) for exercise ``name``.

    Example: ``checks.hint("latent_step", 2)`` in a notebook cell shows the second hint.
    """
    if name not in EXERCISES:
        raise UserError(f"no exercise {name!r}; the exercises are: {', '.join(EXERCISES)}")
    hints = EXERCISES[name].hints
    if not 1 <= level <= len(hints):
        raise UserError(f"{name} has hints 1 to {len(hints)}; ask for one of those")
    more = (
        f" (more: checks.hint({name!r}, {level + 1}))"
        if level < len(hints)
        else " (this is the solution)"
    )
    return Hint(f"hint {level}/{len(hints)} for {name}: {hints[level - 1]}{more}")


def _close(a: Tensor, b: Tensor) -> bool:
    """Equal up to rounding: float64 tolerances (tight enough to tell the 1e-10 std floor from
    0), float32 ones when the learner computed in single precision."""
    if a.shape != b.shape:
        return False
    rtol, atol = (1e-7, 1e-13) if a.dtype == b.dtype == _DTYPE else (1e-4, 1e-6)
    return torch.allclose(a.double(), b.double(), rtol=rtol, atol=atol)


def _compare(
    got: object, expected: Tensor, mistakes: Mistakes, what: str = "the result"
) -> str | None:
    """None when ``got`` equals ``expected``; else the hint of the first mistake it equals, or a
    description of the difference."""
    if not isinstance(got, Tensor):
        return f"{what} must be a tensor, got {type(got).__name__}"
    got = got.detach()
    if _close(got, expected):
        return None
    for hint_text, wrong in mistakes:
        if _close(got, wrong.detach()):
            return hint_text
    if got.shape != expected.shape:
        return (
            f"wrong shape of {what}: {tuple(got.shape)}, expected {tuple(expected.shape)} "
            "(see the shapes in the comments of the cell)"
        )
    difference = (got.double() - expected.double()).abs().max().item()
    return (
        f"{what}: up to {difference:.3g} away from the reference; compare your code with "
        "the equation above the cell"
    )


def _randn(*shape: int, generator: torch.Generator, scale: float = 1.0) -> Tensor:
    return torch.randn(shape, generator=generator, dtype=_DTYPE) * scale


def _raised(error: Exception, fn: Callable) -> str:
    """What to tell a learner whose function raised ``error``: the error, the line of their
    function it came from, and, for a shape mismatch only, that the check uses other sizes."""
    where = ""
    code = getattr(fn, "__code__", None)
    frames = [f for f in traceback.extract_tb(error.__traceback__) if code is not None]
    mine = [f for f in frames if f.filename == code.co_filename and f.name == code.co_name]
    if mine and mine[-1].line:
        where = f" at `{mine[-1].line.strip()}`"
    message = f"your function raised {type(error).__name__}: {error}{where}"
    if isinstance(error, RuntimeError | IndexError | ValueError) and any(
        word in str(error).lower() for word in _SIZE_WORDS
    ):
        message += (
            " (the check uses other sizes than the notebook: take them from the arguments, "
            "not from the notebook's globals)"
        )
    return message


def diagnose(name: str, fn: Callable) -> str | None:
    """The verdict on ``fn`` for exercise ``name``: None when it passes, else the hint.

    Raises NotImplementedError while ``fn`` is the stub. Deterministic; the caller's random
    state is left untouched.
    """
    exercise = EXERCISES[name]
    with torch.random.fork_rng(devices=[]), torch.enable_grad():
        torch.manual_seed(0)
        return exercise.diagnose(fn)


def check(name: str, fn: Callable) -> Callable:
    """Run exercise ``name``'s check on ``fn``, print the verdict and return the function to
    continue with (``fn`` when it passes, else the library's reference)."""
    exercise = EXERCISES[name]
    if fn is exercise.reference:
        print(
            f"✗ {name} is the library's reference, put in its place by an earlier failed check "
            f"(`{name} = checks.check_{name}(...)`): re-run the cell that defines your {name}, "
            "then this one"
        )
        return exercise.reference
    try:
        problem = diagnose(name, fn)
    except NotImplementedError:
        print(
            f"… {name}: not implemented yet — the notebook uses the library's reference below.\n"
            f"  {hint(name)}"
        )
        return exercise.reference
    except Exception as error:  # noqa: BLE001 (the learner's code may raise anything)
        problem = _raised(error, fn)
    if problem is None:
        print(f"✓ {name} passed: {exercise.title}")
        return fn
    print(
        f"✗ {name}: {problem}\n  (the cells below use the library's reference until it passes; "
        f"hints: checks.hint({name!r}), checks.hint({name!r}, 2), ...)"
    )
    return exercise.reference


def _exercise(
    name: str, notebook: str, title: str, reference: Callable, *, hints: tuple[str, ...]
) -> Callable[[Callable], Callable]:
    """Register the decorated function as the ``diagnose`` of exercise ``name``."""

    def register(diagnose_fn: Callable[[Callable], str | None]) -> Callable:
        EXERCISES[name] = Exercise(name, notebook, title, reference, diagnose_fn, hints)
        return diagnose_fn

    return register


def _logits(x: Tensor, W: Tensor) -> Tensor:
    """logits[b, i, j, l] = <x_{b,i,j}, mean_k W_{b,l,k}>: [B, N, V, D], [B, N, K, D] ->
    [B, N, V, N] (``LEO.predict`` without dropout)."""
    return torch.einsum("bijd,bld->bijl", x, W.mean(dim=2))


# ------------------------------------------------------------------- 01: MAML inner step
def maml_inner_step_reference(
    theta: Tensor, batch: TaskBatch, alpha: float, create_graph: bool = True
) -> Tensor:
    """eq. 1 for every task, in closed form: theta [N, D] -> theta'_i [B, N, D].

    The gradient of the *mean* support cross-entropy of a linear classifier is
    sum_i (softmax - onehot)_i x_i^T / (N K) (``losses.cross_entropy_grad``); with
    ``create_graph=False`` it is a constant (first order).
    """
    x, y = batch.support_x, batch.support_y
    theta_b = theta.expand(x.shape[0], *theta.shape)
    logits = _logits(x, theta_b.unsqueeze(2))  # [B, N, K, N]
    grad = torch.einsum("bnkl,bnkd->bld", losses.cross_entropy_grad(logits, y), x)
    grad = grad / (x.shape[1] * x.shape[2])
    return theta_b - alpha * (grad if create_graph else grad.detach())


def _maml_case(
    generator: torch.Generator, b: int = 3, n: int = 3, k: int = 2, d: int = 5
) -> tuple[Tensor, TaskBatch]:
    x = F.normalize(_randn(b, n, k + 2, d, generator=generator), dim=-1)
    y = torch.arange(n)[None, :, None].expand(b, n, k + 2)
    batch = TaskBatch(
        x[:, :, :k], y[:, :, :k], x[:, :, k:], y[:, :, k:], torch.arange(n).expand(b, n)
    )
    theta = _randn(n, d, generator=generator, scale=0.5).requires_grad_()
    return theta, batch


@_exercise(
    "maml_inner_step",
    "01_problem_setup",
    "theta' = theta - alpha grad (eq. 1) for every task, differentiable for the meta-gradient",
    maml_inner_step_reference,
    hints=(
        "eq. 1 for every task at once: one copy of theta per task, one gradient step on that "
        "task's support loss, kept differentiable for the meta-gradient.",
        "expand theta to theta_b [B, N, D] (one copy per task); sum task_loss over the "
        "support sets; torch.autograd.grad of that sum with respect to theta_b, passing "
        "create_graph=create_graph; return theta_b - alpha * grad.",
        "theta_b = theta.expand(batch.batch_size, *theta.shape); support_loss = "
        "task_loss(batch.support_x, batch.support_y, theta_b).sum(); (grad,) = "
        "torch.autograd.grad(support_loss, theta_b, create_graph=create_graph); return "
        "theta_b - alpha * grad",
    ),
)
def _diagnose_maml_inner_step(fn: Callable) -> str | None:
    generator = torch.Generator().manual_seed(1)
    alpha = 2.0
    for theta, batch in (_maml_case(generator), _maml_case(generator, b=2, n=4, k=1, d=3)):
        ref = maml_inner_step_reference(theta, batch, alpha)
        step = theta - ref  # alpha * g per task, [B, N, D]
        n_examples = batch.n_way * batch.k_shot
        mistakes = [
            (
                "step *down* the gradient: theta' = theta - alpha * grad (you added it)",
                theta + step,
            ),
            (
                "task_loss is the *mean* cross-entropy over the N K support examples: take the "
                "gradient of task_loss(...).sum() over tasks (LEO's inner loss is the sum, MAML's "
                "here the mean)",
                theta - step * n_examples,
            ),
            (
                "differentiate with respect to the expanded theta_b [B, N, D] (one copy per "
                "task): the gradient with respect to the shared theta sums the tasks' gradients",
                (theta - step.sum(dim=0)).expand_as(ref),
            ),
            ("multiply the gradient by the inner learning rate alpha", theta - step / alpha),
            ("return one adapted theta'_i per task, [B, N, D]", theta - step.mean(dim=0)),
        ]
        out = fn(theta, batch, alpha)
        problem = _compare(out, ref, mistakes, "theta'")
        if problem:
            return problem
        if out.grad_fn is None:
            return (
                "theta' must stay connected to theta (no .detach(), no torch.no_grad()): the "
                "meta-gradient flows through it"
            )
        (meta,) = torch.autograd.grad((out**2).sum(), theta)
        (meta_ref,) = torch.autograd.grad((ref**2).sum(), theta)
        if not _close(meta, meta_ref):
            return (
                "pass create_graph=create_graph to torch.autograd.grad: without it the "
                "meta-gradient misses the second-order term through the inner step"
            )
        first = fn(theta, batch, alpha, create_graph=False)
        (meta_first,) = torch.autograd.grad((first**2).sum(), theta)
        first_ref = maml_inner_step_reference(theta, batch, alpha, create_graph=False)
        (meta_first_ref,) = torch.autograd.grad((first_ref**2).sum(), theta)
        if not _close(meta_first, meta_first_ref):
            return (
                "with create_graph=False the inner gradient is a constant (first order): "
                "pass create_graph on to torch.autograd.grad instead of a fixed value"
            )
    return None


def check_maml_inner_step(fn: Callable) -> Callable:
    """Notebook 01: ``maml_inner_step(theta [N, D], batch, alpha, create_graph) -> [B, N, D]``."""
    return check("maml_inner_step", fn)


# ------------------------------------------------------------------ 02: eq. 3 and sampling
def official_std_reference(u: Tensor, offset: float) -> Tensor:
    """std = max(exp(u) - (1 - offset), 1e-10), elementwise (LEO_SPEC §2.3)."""
    return torch.clamp(torch.exp(u) - (1.0 - offset), min=STD_FLOOR)


def _std_mistakes(u: Tensor, offset: float) -> Mistakes:
    """Typical wrong standard deviations, for every check that builds one."""
    formula = "std = max(exp(u) - 1 + offset, 1e-10)"
    mistakes = [
        (
            f"that is softplus(u); LEO's {formula} is the floor at u = 0 (offset 0), not log 2",
            F.softplus(u),
        ),
        (
            f"keep the 1e-10 floor: {formula} (torch.clamp(..., min=1e-10))",
            torch.exp(u) - 1 + offset,
        ),
        (
            f"the floor is 1e-10, not 0 (log std appears in the KL): {formula}",
            torch.clamp(torch.exp(u) - 1 + offset, min=0.0),
        ),
        (f"subtract 1 - offset from exp(u): {formula}", torch.clamp(torch.exp(u), min=STD_FLOOR)),
        (f"u is an unnormalised std, not the std itself: {formula}", u),
        (f"u is not a log-variance: {formula}", torch.exp(u / 2)),
        (
            f"the offset is added, not subtracted: exp(u) - (1 - offset), i.e. {formula}",
            torch.clamp(torch.exp(u) - 1 - offset, min=STD_FLOOR),
        ),
    ]
    if offset:
        mistakes.append(
            (f"you ignored the offset: {formula}", torch.clamp(torch.exp(u) - 1, min=STD_FLOOR))
        )
    return mistakes


@_exercise(
    "official_std",
    "02_encoder_relation_net",
    "std = max(exp(u) - (1 - offset), 1e-10)",
    official_std_reference,
    hints=(
        "not softplus: LEO's std is exp(u) shifted down by 1 - offset, and never below 1e-10.",
        "std = max(exp(u) - (1 - offset), 1e-10), elementwise (torch.exp, then torch.clamp "
        "with min=1e-10).",
        "return torch.clamp(torch.exp(u) - (1 - offset), min=1e-10)",
    ),
)
def _diagnose_official_std(fn: Callable) -> str | None:
    generator = torch.Generator().manual_seed(2)
    cases = [
        (torch.linspace(-3, 2, 11, dtype=_DTYPE), 0.0),
        (torch.linspace(-3, 2, 11, dtype=_DTYPE), 0.1),
        (_randn(2, 3, 4, generator=generator), math.sqrt(2 / 13)),
    ]
    for u, offset in cases:
        problem = _compare(
            fn(u, offset), official_std_reference(u, offset), _std_mistakes(u, offset), "the std"
        )
        if problem:
            return problem
    return None


def check_official_std(fn: Callable) -> Callable:
    """Notebook 02: ``official_std(u, offset) -> std``, elementwise."""
    return check("official_std", fn)


def sample_z_reference(codes: Tensor, eps: Tensor) -> Tensor:
    """z = mean + std * eps with (mean, u) the halves of ``codes`` [..., 2Z] and the official
    std (offset 0): the reparameterised sample of ``LEO.possibly_sample`` for the noise eps
    [..., Z] -> z [..., Z]."""
    mean, u = codes.chunk(2, dim=-1)
    return mean + official_std_reference(u, 0.0) * eps


@_exercise(
    "sample_z",
    "02_encoder_relation_net",
    "z = mu + sigma * eps with sigma = official_std(u, 0) (reparameterised)",
    sample_z_reference,
    hints=(
        "the reparameterisation trick: z is the mean plus the std times the noise you are given.",
        "split codes into its halves (mu, u) along the last axis; sigma = official_std(u, "
        "0.0); z = mu + sigma * eps.",
        "mu, u = codes.chunk(2, dim=-1); return mu + official_std(u, 0.0) * eps",
    ),
)
def _diagnose_sample_z(fn: Callable) -> str | None:
    generator = torch.Generator().manual_seed(3)
    for shape in [(2, 3, 2, 8), (1, 2, 1, 4)]:
        codes = _randn(*shape, generator=generator).requires_grad_()
        eps = _randn(*shape[:-1], shape[-1] // 2, generator=generator)
        ref = sample_z_reference(codes, eps)
        mean, u = codes.detach().chunk(2, dim=-1)
        std = official_std_reference(u, 0.0)
        mistakes = [(hint, mean + wrong * eps) for hint, wrong in _std_mistakes(u, 0.0)]
        mistakes += [
            ("multiply the noise by sigma, not by the variance sigma^2", mean + std**2 * eps),
            ("you returned the mean: z = mu + sigma * eps", mean),
            (
                "the first half of the code is the mean, the second half u",
                u + official_std_reference(mean, 0.0) * eps,
            ),
            (
                "split the last axis into two halves (codes.chunk(2, dim=-1)), "
                "not even/odd entries",
                codes.detach()[..., ::2]
                + official_std_reference(codes.detach()[..., 1::2], 0.0) * eps,
            ),
        ]
        out = fn(codes, eps)
        if isinstance(out, Tensor) and not _close(out.detach(), ref.detach()):
            again = fn(codes, eps)
            if isinstance(again, Tensor) and not _close(out.detach(), again.detach()):
                return (
                    "use the noise eps you are given (z = mu + sigma * eps): drawing new noise "
                    "inside the function makes z random for fixed inputs"
                )
        problem = _compare(out, ref.detach(), mistakes, "z")
        if problem:
            return problem
        if out.grad_fn is None:
            return (
                "z must be a differentiable function of the codes (the reparameterisation "
                "trick): no .detach(), .item(), numpy or torch.no_grad()"
            )
        (grad,) = torch.autograd.grad(out.sum(), codes)
        (grad_ref,) = torch.autograd.grad(ref.sum(), codes)
        if not _close(grad, grad_ref):
            return (
                "the gradient of z must reach both mu and u (dz/dmu = 1, dz/du = eps exp(u) "
                "above the floor): compute z from the codes with tensor operations"
            )
    return None


def check_sample_z(fn: Callable) -> Callable:
    """Notebook 02: ``sample_z(codes [..., 2Z], eps [..., Z]) -> z [..., Z]``."""
    return check("sample_z", fn)


def eq3_codes_reference(h: Tensor, g_r: Callable[[Tensor], Tensor]) -> Tensor:
    """eq. 3 for one task: h [N, K, Z] -> per-class codes [N, 2Z], the mean of
    g_r([h_i; h_j]) over all (N K)^2 ordered pairs with i in the class.

    The same numbers as ``LEO.average_codes_per_class(LEO.relation_network(h))`` for g_r =
    ``model.g_r``, computed on the materialised pairs so that any pair function works.
    """
    n, k, z = h.shape
    flat = h.reshape(n * k, z)
    pairs = torch.cat(
        [flat[:, None].expand(-1, n * k, -1), flat[None].expand(n * k, -1, -1)], dim=-1
    )  # [M(i), M(j), 2Z]
    return g_r(pairs).mean(dim=1).reshape(n, k, -1).mean(dim=1)


def _pair_mean(h: Tensor, g_r: Callable, keep: Tensor, swap: bool = False) -> Tensor:
    """Per-class mean of g_r over the ordered pairs where ``keep`` [M, M] is True."""
    n, k, z = h.shape
    flat = h.reshape(n * k, z)
    left, right = flat[:, None].expand(-1, n * k, -1), flat[None].expand(n * k, -1, -1)
    out = g_r(torch.cat([right, left] if swap else [left, right], dim=-1))  # [M, M, 2Z]
    total = (out * keep[..., None]).sum(dim=1).reshape(n, k, -1).sum(dim=1)
    return total / keep.reshape(n, k, n * k).sum(dim=(1, 2))[:, None]


@_exercise(
    "eq3_codes",
    "02_encoder_relation_net",
    "per-class codes = mean of g_r([h_i; h_j]) over all N K^2 pairs of a class (eq. 3)",
    eq3_codes_reference,
    hints=(
        "eq. 3: the code of class n averages g_r over pairs (an example of class n, any "
        "example of the task), self-pairs included.",
        "for every class n, add g_r(torch.cat([h[n, kn], h[m, km]])) over its K shots kn and "
        "over all N K partners (m, km), then divide by N K^2; the result is [N, 2Z].",
        "codes = torch.zeros(N, 2 * Z, dtype=h.dtype); four nested loops over n, kn, m, km: "
        "codes[n] += g_r(torch.cat([h[n, kn], h[m, km]])); return codes / (N * K**2), with N,"
        " K, Z = h.shape",
    ),
)
def _diagnose_eq3_codes(fn: Callable) -> str | None:
    generator = torch.Generator().manual_seed(4)
    for n, k, z in [(3, 2, 3), (2, 3, 2)]:
        model = LEO(LEOConfig(num_latents=z), embedding_dim=4, n_way=max(n, 2), dtype=_DTYPE)
        h = _randn(n, k, z, generator=generator)
        with torch.no_grad():
            library = model.average_codes_per_class(model.relation_network(h[None]))[0, :, 0]
            m = n * k
            every = torch.ones(m, m, dtype=torch.bool)
            cls = torch.arange(m) // k
            same = cls[:, None] == cls[None, :]
            prototypes = h.mean(dim=1)
            proto_pairs = torch.cat(
                [prototypes[:, None].expand(-1, n, -1), prototypes[None].expand(n, -1, -1)], dim=-1
            )
            mistakes = [
                (
                    "eq. 3 includes the self-pairs (i = j): average over all N K partners of each "
                    "example",
                    _pair_mean(h, model.g_r, ~torch.eye(m, dtype=torch.bool)),
                ),
                (
                    "pair each example with the examples of *every* class (m = 1..N), not only its "
                    "own: the codes are relational",
                    _pair_mean(h, model.g_r, same),
                ),
                (
                    "the pair is [h_i; h_j], the example of class n first: "
                    "torch.cat([h[n, kn], h[m, km]]) (g_r is not symmetric)",
                    _pair_mean(h, model.g_r, every, swap=True),
                ),
                ("divide by N K^2 (K shots times N K partners), not by N K", library * k),
                ("divide the sum by N K^2 (eq. 3 is an average)", library * n * k * k),
                ("the normaliser is N K^2, not (N K)^2", library / n),
                (
                    "apply g_r to pairs of *examples*, then average (eq. 3 averages g_r's outputs, "
                    "not its inputs)",
                    model.g_r(proto_pairs).mean(dim=1),
                ),
            ]
        out = fn(h, model.g_r)
        if isinstance(out, Tensor) and out.shape == (n, k, 2 * z):
            return "return one code per class, [N, 2Z]: average over the K shots too"
        problem = _compare(out, library, mistakes, "the codes")
        if problem:
            return problem
    return None


def check_eq3_codes(fn: Callable) -> Callable:
    """Notebook 02: ``eq3_codes(h [N, K, Z], g_r) -> codes [N, 2Z]`` (eq. 3)."""
    return check("eq3_codes", fn)


# ---------------------------------------------------------------------- 03: the decoder
def decode_weights_reference(
    z: Tensor, decoder_weight: Tensor, offset: float
) -> tuple[Tensor, Tensor]:
    """eq. 4: (mean, u) = g_d(z) = z W_d^T, std = max(exp(u) - (1 - offset), 1e-10).

    z [B, N, K, Z], decoder_weight [2D, Z] (torch layout) -> (mean, std), each [B, N, K, D];
    as ``LEO.decoder`` followed by ``LEO.gaussian_params``.
    """
    mean, u = F.linear(z, decoder_weight).chunk(2, dim=-1)
    return mean, official_std_reference(u, offset)


@_exercise(
    "decode_weights",
    "03_decoder",
    "(mean, std) of p(w | z): params = z W_d^T, std with the decoder's offset (eq. 4)",
    decode_weights_reference,
    hints=(
        "eq. 4: one linear map gives a mean and an unnormalised std u for every weight; the "
        "std is notebook 02's, with the decoder's offset.",
        "params = z @ decoder_weight.T is [B, N, K, 2D]; its first half (last axis) is the "
        "mean, the second u; std = max(exp(u) - (1 - offset), 1e-10); return (mean, std).",
        "mean_w, u_w = (z @ decoder_weight.T).chunk(2, dim=-1); return mean_w, "
        "torch.clamp(torch.exp(u_w) - (1 - offset), min=1e-10)",
    ),
)
def _diagnose_decode_weights(fn: Callable) -> str | None:
    generator = torch.Generator().manual_seed(5)
    for b, n, k, z, d in [(2, 3, 2, 4, 5), (1, 2, 1, 3, 7)]:
        latents = _randn(b, n, k, z, generator=generator)
        weight = _randn(2 * d, z, generator=generator, scale=0.4)
        offset = math.sqrt(2 / (d + n))
        mean, std = decode_weights_reference(latents, weight, offset)
        params = latents @ weight.T
        first, second = params.chunk(2, dim=-1)
        try:
            out = fn(latents, weight, offset)
        except NotImplementedError:
            raise
        except RuntimeError as error:
            return (
                f"your function raised RuntimeError ({error}); decoder_weight has torch's "
                "layout [2D, Z]: params = z @ decoder_weight.T"
            )
        if not (isinstance(out, tuple) and len(out) == 2):
            return "return the pair (mean, std), each [B, N, K, D]"
        if isinstance(out[0], Tensor) and out[0].shape[-1] == 2 * d:
            return (
                "the mean has all 2D entries of params: split them into halves with "
                "params.chunk(2, dim=-1) (not with the notebook's global D)"
            )
        if _close(out[0].detach(), std) and _close(out[1].detach(), mean):
            return "return (mean, std) in that order"
        if _close(out[0].detach(), second) and _close(
            out[1].detach(), official_std_reference(first, offset)
        ):
            return "the first D outputs of g_d are the mean, the last D are u"
        if _close(out[0].detach(), params[..., ::2]):
            return "split params into two halves (params.chunk(2, dim=-1)), not even/odd entries"
        problem = _compare(out[0], mean, [], "the mean") or _compare(
            out[1], std, _std_mistakes(second, offset), "the std"
        )
        if problem:
            return problem
        if offset and _close(out[1].detach(), official_std_reference(second, 0.0)):
            return "use the decoder's offset sqrt(2 / (D + N)), not 0"
    return None


def check_decode_weights(fn: Callable) -> Callable:
    """Notebook 03: ``decode_weights(z, decoder_weight [2D, Z], offset) -> (mean, std)``."""
    return check("decode_weights", fn)


def predict_reference(x: Tensor, W: Tensor) -> Tensor:
    """logits[b, i, j, l] = <x_{b,i,j}, mean_k W_{b,l,k}>: x [B, N, V, D], W [B, N, K, D] ->
    [B, N, V, N] (``LEO.predict`` without dropout)."""
    return _logits(x, W)


@_exercise(
    "predict_mine",
    "03_decoder",
    "logits = x . mean_K(W): no bias, no normalisation",
    predict_reference,
    hints=(
        "a bias-free linear classifier: the score of class l is the inner product of x with "
        "class l's weight, the mean of its K slots.",
        "average W over its K slots (dim 2) to [B, N, D]; take the inner product of every x "
        "[B, N, V, D] with every class weight: logits [B, N, V, N].",
        "return x @ W.mean(dim=2).transpose(1, 2).unsqueeze(1)",
    ),
)
def _diagnose_predict(fn: Callable) -> str | None:
    generator = torch.Generator().manual_seed(6)
    for b, n, v, k, d in [(2, 3, 4, 3, 5), (1, 4, 2, 2, 3)]:
        x = F.normalize(_randn(b, n, v, d, generator=generator), dim=-1)
        W = _randn(b, n, k, d, generator=generator)
        ref = predict_reference(x, W)
        mistakes = [
            (
                "average the K weight samples of a class (W.mean(dim=2)), not just the first",
                predict_reference(x, W[:, :, :1]),
            ),
            ("the class weight is the *mean* of the K slots, not their sum", ref * k),
            (
                "return the logits (scores before the softmax), not probabilities",
                ref.softmax(dim=-1),
            ),
            ("return the raw logits; the loss applies the log-softmax", ref.log_softmax(dim=-1)),
            (
                "no normalisation: the logits are plain inner products x . mean_K(W)",
                predict_reference(x, F.normalize(W.mean(dim=2, keepdim=True), dim=-1)),
            ),
        ]
        problem = _compare(fn(x, W), ref, mistakes, "the logits")
        if problem:
            return problem
    return None


def check_predict(fn: Callable) -> Callable:
    """Notebook 03: ``predict_mine(x [B, N, V, D], W [B, N, K, D]) -> logits [B, N, V, N]``."""
    return check("predict_mine", fn)


# --------------------------------------------------------------------- 04: the inner loop
def latent_step_reference(model: LEO, z: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """One latent step, z' = z - alpha * grad_z L^tr with L^tr the summed support cross-entropy
    (eq. 5; the step itself is unnumbered in the paper): the first step of
    ``model.leo_inner_loop`` (z, z' [B, N, K, Z]). Differentiable to second order when ``z``
    requires grad: z' carries the graph back to z, alpha and the decoder."""
    if model.config.inner_unroll_length < 1:
        raise UserError("latent_step_reference needs inner_unroll_length >= 1")
    return model.leo_inner_loop(x, y, z).z_trajectory[1]


def _latent_step_autograd(
    model: LEO, z: Tensor, x: Tensor, y: Tensor, create_graph: bool = True
) -> Tensor:
    """The step with ``torch.autograd.grad``; ``create_graph=False`` is the first-order
    mistake (the gradient becomes a constant)."""
    W, _ = model.possibly_sample(model.decoder(z), model.decoder_stddev_offset)
    support_loss = model.loss_fn(model.predict(x, W), y).sum()
    (grad_z,) = torch.autograd.grad(support_loss, z, create_graph=create_graph)
    return z - model.inner_lr * grad_z


def _meta_gradients(out: Tensor, probe: Tensor, wrt: list[Tensor]) -> list[Tensor]:
    """Gradients of sum(probe * out) with respect to ``wrt`` (zeros where none flows)."""
    grads = torch.autograd.grad((probe * out).sum(), wrt, allow_unused=True, retain_graph=True)
    return [torch.zeros_like(t) if g is None else g for g, t in zip(grads, wrt, strict=True)]


@_exercise(
    "latent_step",
    "04_inner_loop",
    "z' = z - alpha * grad_z L^tr, L^tr the summed support cross-entropy (eq. 5), "
    "differentiable to second order",
    latent_step_reference,
    hints=(
        "decode weights from z, score the support set, and move z down the gradient of the "
        "summed loss (eq. 5); keep the graph, because meta-training differentiates through "
        "the step.",
        "W from model.possibly_sample(model.decoder(z), model.decoder_stddev_offset); "
        "support_loss = model.loss_fn(model.predict(x, W), y).sum(); its gradient with "
        "respect to z by torch.autograd.grad with create_graph=True; return z - "
        "model.inner_lr * grad (no .detach() anywhere).",
        "W, _ = model.possibly_sample(model.decoder(z), model.decoder_stddev_offset); "
        "support_loss = model.loss_fn(model.predict(x, W), y).sum(); (grad_z,) = "
        "torch.autograd.grad(support_loss, z, create_graph=True); return z - model.inner_lr "
        "* grad_z",
    ),
)
def _diagnose_latent_step(fn: Callable) -> str | None:
    generator = torch.Generator().manual_seed(7)
    b, n, k, d, z_dim = 2, 3, 2, 6, 3
    model = LEO(LEOConfig(num_latents=z_dim), embedding_dim=d, n_way=n, dtype=_DTYPE).eval()
    with torch.no_grad():
        model.inner_lr.copy_(torch.tensor([0.5, 1.0, 2.0], dtype=_DTYPE))
        model.g_d.weight.mul_(3.0)  # larger gradients than at initialisation
    x = F.normalize(_randn(b, n, k, d, generator=generator), dim=-1)
    y = torch.arange(n)[None, :, None].expand(b, n, k)
    source = _randn(b, n, k, z_dim, generator=generator).requires_grad_()
    z_encoder = model.forward_encoder(x)[0]  # a code inside the encoder's graph
    params = [model.inner_lr, model.g_d.weight, model.g_e.weight]
    names = ["alpha (model.inner_lr)", "the decoder g_d", "the encoder g_e"]
    for z in (z_encoder, 0.5 * source + 0.1):
        ref = latent_step_reference(model, z, x, y)
        step = (z - ref).detach()  # alpha * grad
        z_value, alpha = z.detach(), model.inner_lr.detach()
        mistakes = [
            ("step *down* the gradient: z' = z - alpha * grad (you added it)", z_value + step),
            (
                "the inner loss is the *sum* of the N K support cross-entropies, not their mean "
                "(eq. 5, notebook 03)",
                z_value - step / (n * k),
            ),
            (
                "the inner loss is the *sum* of the support cross-entropies, not their mean",
                z_value - step / (b * n * k),
            ),
            (
                "multiply the gradient by the learned rates model.inner_lr (alpha, one per latent "
                "dimension)",
                z_value - step / alpha,
            ),
            (
                "alpha has one rate per latent dimension: multiply by model.inner_lr itself, not "
                "by its mean",
                z_value - step / alpha * alpha.mean(),
            ),
            ("return the new code z', not the gradient", step / alpha),
            ("return z' = z - alpha * grad, not only the step", -step),
        ]
        out = fn(model, z, x, y)
        problem = _compare(out, ref.detach(), mistakes, "z'")
        if problem:
            return problem
        if out.grad_fn is None:
            return (
                "z' must stay in the autograd graph (no .detach(), no torch.no_grad()): "
                "meta-training differentiates the query loss through this step"
            )
        probe = _randn(*ref.shape, generator=generator)
        wrt = [source if z is not z_encoder else model.g_e.weight, *params[:2]]
        what = ["z" if z is not z_encoder else names[2], *names[:2]]
        mine = _meta_gradients(out, probe, wrt)
        expected = _meta_gradients(ref, probe, wrt)
        first = _meta_gradients(_latent_step_autograd(model, z, x, y, False), probe, wrt)
        for name, g_mine, g_ref in zip(what, mine, expected, strict=True):
            if _close(g_mine, g_ref):
                continue
            if name in ("z", names[2]) and not bool(g_mine.abs().sum() > 0):
                return (
                    "z' must depend on the z you are given: do not detach z (no "
                    "z.detach().requires_grad_()); differentiate with respect to z itself, so "
                    f"that the meta-gradient reaches {'z' if name == 'z' else name}"
                )
            if all(_close(a, c) for a, c in zip(mine, first, strict=True)):
                return (
                    "pass create_graph=True to torch.autograd.grad: without it grad_z is a "
                    "constant and the meta-gradient misses the second-order terms (through "
                    "the decoder and z itself)"
                )
            return (
                f"z' has the right value, but its gradient with respect to {name} is not the "
                "library's: compute grad_z with torch.autograd.grad(..., create_graph=True) "
                "from the z you are given"
            )
    return None


def check_latent_step(fn: Callable) -> Callable:
    """Notebook 04: ``latent_step(model, z, x, y) -> z'`` (one latent step, differentiable)."""
    return check("latent_step", fn)


# ------------------------------------------------------------------ 05: the meta-objective
def kl_one_sample_reference(s: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """One-sample KL(N(mean, std^2) || N(0, I)) at the sample s, mean over the elements of each
    task: [B, ...] -> [B] (``losses.kl_estimate``)."""
    return losses.kl_estimate(s, mean, std)


@_exercise(
    "kl_one_sample",
    "05_meta_objective",
    "mean over a task's elements of log N(s; mu, sigma^2) - log N(s; 0, 1)",
    kl_one_sample_reference,
    hints=(
        "the official KL is not the closed form: evaluate log q(s) - log p(s) at the sample s"
        " you are given, and average.",
        "log q(s) = log_normal(s, mean, std) and log p(s) = log N(s; 0, 1); average their "
        "difference over every axis but the task axis, giving [B].",
        "log_prior = -0.5 * s**2 - 0.5 * math.log(2 * math.pi); return (log_normal(s, mean, "
        "std) - log_prior).flatten(1).mean(dim=1)",
    ),
)
def _diagnose_kl_one_sample(fn: Callable) -> str | None:
    generator = torch.Generator().manual_seed(8)
    for b, n, k, z in [(2, 3, 2, 4), (3, 2, 1, 5)]:
        mean = _randn(b, n, k, z, generator=generator)
        std = torch.exp(_randn(b, n, k, z, generator=generator, scale=0.5))
        std = torch.where(_randn(b, n, k, z, generator=generator) > 0.5, STD_FLOOR, std)
        s = mean + std * _randn(b, n, k, z, generator=generator)
        ref = kl_one_sample_reference(s, mean, std)
        log_q = losses.normal_log_prob(s, mean, std)
        log_p = losses.normal_log_prob(s, 0.0, 1.0)
        mistakes = [
            (
                "the official KL is the *mean* over the N K Z elements of a task, not the sum",
                (log_q - log_p).flatten(1).sum(dim=1),
            ),
            (
                "the official KL is the *mean* over all N K Z elements of a task: you averaged "
                "over the latent dimension only and summed over N and K",
                (log_q - log_p).mean(dim=-1).flatten(1).sum(dim=1),
            ),
            (
                "that is the closed-form KL; the official term is the one-sample estimate "
                "log q(s) - log p(s) at the drawn s",
                losses.analytic_kl(mean, std),
            ),
            ("KL(q || p) = E_q[log q(s) - log p(s)]: you computed log p - log q", -ref),
            (
                "the prior p(z) is N(0, I): log p(s) = log N(s; 0, 1)",
                (log_q - losses.normal_log_prob(s, mean, 1.0)).flatten(1).mean(dim=1),
            ),
            (
                "log N(s; mu, sigma^2) includes -log sigma: you left it out",
                ref + torch.log(std).flatten(1).mean(dim=1),
            ),
            (
                "the -log(2 pi) / 2 constant must appear in both log-densities (or in neither)",
                ref + 0.5 * math.log(2 * math.pi),
            ),
            (
                "the -log(2 pi) / 2 constant must appear in both log-densities (or in neither)",
                ref - 0.5 * math.log(2 * math.pi),
            ),
            ("keep one KL per task, [B]: do not average over the task axis", ref.mean()),
            (
                "reduce over every axis but the task axis: .flatten(1).mean(dim=1) -> [B]",
                (log_q - log_p).mean(dim=-1),
            ),
        ]
        problem = _compare(fn(s, mean, std), ref, mistakes, "the KL")
        if problem:
            return problem
    return None


def check_kl_one_sample(fn: Callable) -> Callable:
    """Notebook 05: ``kl_one_sample(s, mean, std) -> [B]`` (one-sample KL estimate)."""
    return check("kl_one_sample", fn)


def encoder_penalty_reference(z: Tensor, z_prime: Tensor) -> Tensor:
    """mean((z - stopgrad(z'))^2) over each task's elements: [B, ...] -> [B]
    (``losses.encoder_penalty``)."""
    return losses.encoder_penalty(z, z_prime)


@_exercise(
    "encoder_penalty",
    "05_meta_objective",
    "mean((z - stopgrad(z'))^2) per task; the gradient reaches z only",
    encoder_penalty_reference,
    hints=(
        "the penalty pulls the encoder's code z towards the adapted z', and z' is a fixed "
        "target (a stop-gradient).",
        "square z - z_prime.detach() elementwise and average over every axis but the task "
        "axis, giving [B].",
        "return ((z - z_prime.detach()) ** 2).flatten(1).mean(dim=1)",
    ),
)
def _diagnose_encoder_penalty(fn: Callable) -> str | None:
    generator = torch.Generator().manual_seed(9)
    for shape in [(2, 3, 2, 4), (3, 2, 1, 5)]:
        z = _randn(*shape, generator=generator).requires_grad_()
        source = _randn(*shape, generator=generator).requires_grad_()
        z_prime = 1.5 * source + 0.1  # an adapted code with a graph behind it
        ref = encoder_penalty_reference(z, z_prime).detach()
        squares = ((z - z_prime) ** 2).detach()
        mistakes = [
            (
                "the official penalty is the *mean* over the N K Z elements, not the sum",
                squares.flatten(1).sum(dim=1),
            ),
            (
                "square the differences: ||z - z'||^2, not the norm ||z - z'||",
                squares.flatten(1).sum(dim=1).sqrt(),
            ),
            (
                "square the differences (mean of (z - z')^2), not their absolute values",
                (z - z_prime).detach().abs().flatten(1).mean(dim=1),
            ),
            ("keep one penalty per task, [B]: do not average over the task axis", ref.mean()),
            (
                "reduce over every axis but the task axis: .flatten(1).mean(dim=1) -> [B]",
                squares.mean(dim=-1),
            ),
        ]
        out = fn(z, z_prime)
        problem = _compare(out, ref, mistakes, "the penalty")
        if problem:
            return problem
        if out.grad_fn is None:
            return (
                "the gradient must reach z (the encoder's code): detach z_prime, not z "
                "(and no torch.no_grad())"
            )
        grad_z, grad_source = torch.autograd.grad(out.sum(), [z, source], allow_unused=True)
        if grad_source is not None and bool(grad_source.abs().sum() > 0):
            return (
                "the gradient reaches z' — stop it with z_prime.detach(): the penalty must "
                "move the encoder's z towards z', never z' towards z"
            )
        if grad_z is None or not bool(grad_z.abs().sum() > 0):
            return "the gradient must reach z (the encoder's code): detach z_prime, not z"
    return None


def check_encoder_penalty(fn: Callable) -> Callable:
    """Notebook 05: ``encoder_penalty(z, z_prime) -> [B]`` with the stop-gradient on z'."""
    return check("encoder_penalty", fn)


# ------------------------------------------------------------ 10: curvature and coverage
def latent_preconditioner_reference(w_mu: Tensor, alpha: Tensor, k_shot: int) -> Tensor:
    """P = W_mu diag(alpha) W_mu^T / K: w_mu [D, Z], alpha [Z] -> [D, D], the matrix one latent
    step multiplies grad_{w_n} L^tr by (``curvature.latent_preconditioner``)."""
    return (w_mu * alpha) @ w_mu.T / k_shot


@_exercise(
    "latent_preconditioner",
    "10_curvature_and_coverage",
    "P = W_mu diag(alpha) W_mu^T / K, the preconditioner of one latent step",
    latent_preconditioner_reference,
    hints=(
        "follow the chain rule from the derivation: grad_z = W_mu^T grad_w (per shot copy, "
        "1/K of the class gradient), the step is alpha times it, and the decoder maps it back "
        "through W_mu.",
        "scale the columns of W_mu by alpha (broadcast w_mu * alpha), multiply by W_mu^T on the "
        "right and divide by k_shot: a [D, D] matrix.",
        "return (w_mu * alpha) @ w_mu.T / k_shot",
    ),
)
def _diagnose_latent_preconditioner(fn: Callable) -> str | None:
    generator = torch.Generator().manual_seed(10)
    for d, z, k in [(6, 3, 2), (4, 5, 3), (5, 2, 1)]:
        w_mu = _randn(d, z, generator=generator)
        alpha = torch.rand(z, generator=generator, dtype=_DTYPE) + 0.5
        alpha[0] = -0.3  # learned rates can be negative
        ref = latent_preconditioner_reference(w_mu, alpha, k)
        gram = w_mu @ w_mu.T
        mistakes = [
            (
                "divide by K: each of the K tiled copies of z_n gets 1/K of the class gradient "
                "(the logits average the K weight slots)",
                ref * k,
            ),
            ("divide by K, do not multiply: the 1/K comes from the shot tiling", ref * k * k),
            (
                "alpha has one rate per latent dimension: use diag(alpha), not its mean",
                gram * alpha.mean() / k,
            ),
            ("multiply by the learned rates alpha (diag(alpha) between W_mu and W_mu^T)", gram / k),
            ("P is the preconditioner itself; the step is -P grad: leave out the minus", -ref),
        ]
        if k == 1:
            mistakes = mistakes[2:]
        out = fn(w_mu, alpha, k)
        if isinstance(out, Tensor) and tuple(out.shape) == (z, z) and z != d:
            return (
                "P acts on class weights w_n [D]: W_mu diag(alpha) W_mu^T is [D, D]; you built "
                "a [Z, Z] matrix (W_mu^T ... W_mu)"
            )
        problem = _compare(out, ref, mistakes, "P")
        if problem:
            return problem
    return None


def check_latent_preconditioner(fn: Callable) -> Callable:
    """Notebook 10: ``latent_preconditioner(w_mu [D, Z], alpha [Z], k_shot) -> P [D, D]``."""
    return check("latent_preconditioner", fn)
