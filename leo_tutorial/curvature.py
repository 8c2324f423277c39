"""Why adapting in latent space works: curvature, coverage and preconditioning (paper §4.6, Fig. 4).

Plain functions on a trained model and a :class:`leo_tutorial.data.TaskBatch`, always in
evaluation mode (means, no dropout: deterministic). Notebook 10 draws the paper's three panels
from them:

- (a) curvature: :func:`hessian_eigenvalues` of the support loss L^tr (eq. 5, the *summed*
  cross-entropy) w.r.t. the latent codes z_n (:func:`latent_space`, LEO) or the class weights
  w_n, the paper's theta (:func:`weight_space`: LEO's gen+ft ablation, Meta-SGD);
- (b) coverage: :func:`decoder_singular_values`, the singular values of the decoder's mean half;
- (c) step size: :func:`theta_step_norms`, how far theta moves in each latent step (LEO) or in
  each Meta-SGD step.

And two views the paper does not draw:

- the preconditioning identity: at evaluation one latent step moves the class weights by
  ``Delta w_n = -P grad_{w_n} L^tr`` with ``P = W_mu diag(alpha) W_mu^T / K``
  (:func:`latent_preconditioner`, :func:`predicted_latent_step`): a theta step preconditioned by
  a learned matrix of rank <= Z, where Meta-SGD's preconditioner is a learned diagonal
  (:func:`preconditioner_eigenvalues`, :func:`subspace_alignment`);
- what meta-learning found on the synthetic bank, whose class means lie in a known subspace:
  :func:`principal_angles` between the decoder's column space and that subspace, tracked over
  meta-training by :class:`SubspaceTracker` (a ``training.train`` callback).

Conventions. All parameters are per *class*: z_n [Z] and w_n [D], as in the paper. The model
tiles each class code and weight to K shot slots (LEO_SPEC §2.5) and averages the K slots in the
logits; at evaluation the K copies are equal, and the gradient w.r.t. one copy is 1/K of the
class gradient. So the Hessian w.r.t. the K tiled copies has the class-level eigenvalues divided
by K (and zeros), and a step of rate alpha on every copy moves the class code by alpha / K times
the class gradient: this is where the 1/K in P comes from.

Example::

    space = latent_space(leo, batch)                 # z_n of every task in the batch
    hessian_eigenvalues(space)                       # [B, R], largest first
    stats = {"LEO": curvature_statistics(leo, bank.split("test"), tasks=1000),
             "Meta-SGD": curvature_statistics(meta_sgd, bank.split("test"), tasks=1000)}
    plot_figure4(stats)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from . import losses
from .baselines import MAML, linear_logits
from .data import EpisodeSampler, FeatureSplit, TaskBatch
from .errors import UserError
from .io import atomic_write
from .latent import evaluation_mode
from .model import LEO

HESSIAN_METHODS = ("factored", "full")


# ------------------------------------------------------------------- the space a step moves in
@dataclass
class AdaptationSpace:
    """The variables an inner step moves, for B tasks, as the linear classifier they are.

    At evaluation every model here scores the support set linearly in its adapted variables:
    logits[b, n, k, c] = <features[b, n, k], point[b, c]>. For the class weights w_n (the
    paper's theta) the features are the embeddings x; for LEO's class codes z_n they are
    W_mu^T x, because <x, W_mu z_c> = <W_mu^T x, z_c> (eq. 4 without sampling, then eq. 5).
    Adapting z is fitting a linear classifier on decoder-projected embeddings.

    name: ``"latent"`` (F = Z) or ``"weights"`` (F = D). point [B, N, F]: where the analysis is
    done. features [B, N, K, F]; support_y [B, N, K].
    """

    name: str
    point: Tensor
    features: Tensor
    support_y: Tensor

    @property
    def rank_bound(self) -> int:
        """(N - 1) min(N K, F): the most non-zero eigenvalues the Hessian of L^tr can have.

        Each of the N K examples adds a softmax Hessian of rank N - 1, and moving every class's
        parameters by the same vector changes no probability (a null space of dimension F).
        """
        _, n, k, f = self.features.shape
        return (n - 1) * min(n * k, f)

    def task(self, i: int) -> AdaptationSpace:
        """Task ``i`` alone (a space of one task)."""
        s = slice(i, i + 1)
        return replace(
            self, point=self.point[s], features=self.features[s], support_y=self.support_y[s]
        )

    def logits(self, point: Tensor | None = None) -> Tensor:
        """Support logits [B,N,K,N] at ``point`` [B, N, F] (default: the space's point)."""
        return linear_logits(self.features, self.point if point is None else point)

    def support_loss(self, point: Tensor | None = None) -> Tensor:
        """L^tr = sum over the support set of the softmax cross-entropy (eq. 5), per task [B]."""
        return losses.cross_entropy(self.logits(point), self.support_y).flatten(1).sum(1)

    def gradient(self, point: Tensor | None = None) -> Tensor:
        """grad L^tr w.r.t. the point, per task: [B, N, F] (tasks are independent, so the
        gradient of the sum over tasks holds each task's own gradient)."""
        point = (self.point if point is None else point).detach().requires_grad_()
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(self.support_loss(point).sum(), point)
        return grad


def _task_tensors(model: nn.Module, batch: TaskBatch) -> tuple[Tensor, Tensor]:
    """Support tensors on the model's device and dtype, with a clear error for a bad shape."""
    dtype = model.dtype
    device = next(model.parameters()).device
    x, y = batch.support_x.to(device, dtype), batch.support_y.to(device)
    if x.dim() != 4 or x.shape[1] != model.n_way or x.shape[-1] != model.embedding_dim:
        raise UserError(
            f"expected {model.n_way}-way tasks of {model.embedding_dim}-d embeddings "
            f"[B, N, K, D], got shape {tuple(x.shape)}"
        )
    return x, y


def _check_leo(model: nn.Module, what: str) -> None:
    if not isinstance(model, LEO):
        raise UserError(f"{what} needs a LEO model, got {type(model).__name__}")


def _class_codes(model: LEO, x: Tensor) -> Tensor:
    """The encoder's class codes at evaluation: [B,N,K,D] -> z [B,N,Z] (one of K equal copies)."""
    with evaluation_mode(model), torch.no_grad():
        z, _, _ = model.forward_encoder(x)
    return z[:, :, 0]


def _latent_adaptation(model: LEO, x: Tensor, y: Tensor) -> Any:
    """The model's own forward pass at evaluation (an ``LEOOutput``); the latent loop only reads
    the support set, which is scored as the query set too."""
    if model.config.inner_unroll_length == 0:
        raise UserError(
            "this LEO takes no latent steps (inner_unroll_length=0, the gen+ft ablation); "
            "use step=0 or a LEO with inner_unroll_length >= 1"
        )
    with evaluation_mode(model), torch.no_grad():
        return model(SimpleNamespace(support_x=x, support_y=y, query_x=x, query_y=y))


def _check_step(step: int, steps: int) -> None:
    if not 0 <= step <= steps:
        raise UserError(f"step must be in 0..{steps} (the model's inner steps), got {step}")


def latent_space(model: LEO, batch: TaskBatch, step: int = 0) -> AdaptationSpace:
    """LEO's class codes z_n [B, N, Z] with features W_mu^T x: the encoder's output (eval: the
    means of eq. 3) for ``step=0``, the codes after ``step`` latent steps otherwise."""
    _check_leo(model, "latent_space")
    x, y = _task_tensors(model, batch)
    _check_step(step, model.config.inner_unroll_length)
    if step == 0:
        z = _class_codes(model, x)
    else:
        z = _latent_adaptation(model, x, y).z_trajectory[step][:, :, 0]
    return AdaptationSpace("latent", z, x @ decoder_mean(model).to(x.dtype), y)


def weight_space(model: LEO | MAML, batch: TaskBatch, step: int = 0) -> AdaptationSpace:
    """Class weights w_n [B, N, D] (the paper's theta) with features x, where the model starts
    adapting them (``step=0``) or after ``step`` of its inner steps (:func:`theta_trajectory`).

    LEO (any variant; gen+ft is ``LEOConfig(inner_unroll_length=0)``): the weights decoded
    from the encoder's codes, where fine-tuning starts when there are no latent steps.
    MAML / Meta-SGD: the meta-learned initialisation W_0, the same for every task.
    """
    x, y = _task_tensors(model, batch)
    b, n, k, d = x.shape
    if not isinstance(model, (LEO, MAML)):
        raise UserError(
            f"weight_space needs a LEO, MAML or MetaSGD model, got {type(model).__name__}"
        )
    _check_step(step, model.config.inner_unroll_length)
    if step > 0:
        w = theta_trajectory(model, batch)[:, step]
    elif isinstance(model, LEO):
        z = _class_codes(model, x)
        with evaluation_mode(model), torch.no_grad():
            _, W = model.forward_decoder(z[:, :, None].expand(-1, -1, k, -1), x, y)
        w = W.mean(dim=2)
    else:
        w = model.w_init.detach().expand(b, n, d)
    return AdaptationSpace("weights", w, x, y)


# ---------------------------------------------------------------------------- (a) curvature
def full_hessian(space: AdaptationSpace) -> Tensor:
    """The Hessian of L^tr w.r.t. the point, task by task, with ``torch.func.hessian``
    (forward-over-reverse): [B, N F, N F], class-major. The plain reference; N F = 3 200 for
    640-d embeddings makes this about 80 MB and seconds per task."""
    hessians = []
    for i in range(space.point.shape[0]):
        one = space.task(i)
        shape = one.point.shape

        def loss(p: Tensor, one: AdaptationSpace = one, shape: torch.Size = shape) -> Tensor:
            return one.support_loss(p.view(shape))[0]

        hessians.append(torch.func.hessian(loss)(one.point.flatten()).detach())
    return torch.stack(hessians)


def factored_hessian_eigenvalues(space: AdaptationSpace) -> Tensor:
    """The non-zero spectrum of the Hessian of L^tr from its factorisation, in M = N K N
    dimensions instead of N F: [B, M] eigenvalues, ascending (float64).

    With logits l_i = <phi_i, p_c> (phi_i the features of example i), H = sum_i S_i (x) phi_i
    phi_i^T exactly, S_i = diag(q_i) - q_i q_i^T the softmax Hessian of example i (q_i its
    probabilities). S_i = A_i A_i^T with A_i = diag(sqrt q_i) - q_i sqrt(q_i)^T, so H = F^T F
    with F_i = A_i^T (x) phi_i^T, and the non-zero eigenvalues of F^T F are those of
    F F^T [M, M], whose blocks are (F F^T)_ij = <phi_i, phi_j> A_i^T A_j [N, N].
    """
    b, n, k, f = space.features.shape
    phi = space.features.detach().double().reshape(b, n * k, f)
    q = torch.softmax(space.logits().detach().double(), dim=-1).view(b, n * k, n)  # [B, NK, N]
    root = q.sqrt()
    a = torch.diag_embed(root) - q[..., :, None] * root[..., None, :]  # A_i [B, NK, N, N]
    kernel = phi @ phi.transpose(1, 2)  # <phi_i, phi_j> [B, NK, NK]
    blocks = torch.einsum("bica,bjcd->bijad", a, a) * kernel[..., None, None]
    return torch.linalg.eigvalsh(blocks.transpose(2, 3).reshape(b, n * k * n, n * k * n))


def hessian_eigenvalues(space: AdaptationSpace, method: str = "factored") -> Tensor:
    """Absolute eigenvalues of the Hessian of L^tr w.r.t. the space's point (Fig. 4a):
    [B, R], largest first, float64, with R = ``space.rank_bound``.

    The other N F - R eigenvalues are exactly zero (see ``AdaptationSpace.rank_bound``).
    ``method="factored"`` (default) computes the spectrum from the Hessian's factorisation in
    N K N dimensions (:func:`factored_hessian_eigenvalues`: milliseconds per task); ``"full"``
    builds the whole Hessian with ``torch.func`` (:func:`full_hessian`) and diagonalises it: the
    reference the tests compare with.
    """
    if method not in HESSIAN_METHODS:
        raise UserError(f"unknown method {method!r}; use one of {', '.join(HESSIAN_METHODS)}")
    if method == "full":
        values = torch.linalg.eigvalsh(full_hessian(space).double())
    else:
        values = factored_hessian_eigenvalues(space)
    values = values.abs().sort(dim=1, descending=True).values
    return values[:, : space.rank_bound]


# ----------------------------------------------------------------------------- (b) coverage
def decoder_mean(model: LEO) -> Tensor:
    """W_mu [D, Z]: the mean half of the decoder's weight (g_d.weight is [2D, Z], mean first),
    so that mu_d(z) = W_mu z (eq. 4)."""
    _check_leo(model, "decoder_mean")
    return model.g_d.weight.detach()[: model.embedding_dim]


def decoder_singular_values(model: LEO) -> Tensor:
    """Singular values of W_mu (Fig. 4b): [Z], largest first. A latent step of length s moves
    the class weights by between s * min and s * max of them."""
    return torch.linalg.svdvals(decoder_mean(model).double())


def decoder_gain(model: LEO, batch: TaskBatch) -> Tensor:
    """||W_mu^T x||^2 / ||x||^2 for every support embedding: [B, N, K].

    How much curvature the decoder adds for this data: logits <x, W_mu z_n> see the embedding
    through W_mu^T, so the Hessian in z is the Hessian in theta with x x^T replaced by
    W_mu^T x x^T W_mu (eq. 5 with w_n = W_mu z_n). For one example, or at a uniform softmax,
    the eigenvalues in z are those in theta times this gain; it lies between the smallest and
    the largest squared singular value of W_mu, near the largest only for embeddings in the
    decoder's most expanded directions.
    """
    x, _ = _task_tensors(model, batch)
    w_mu = decoder_mean(model).to(x.dtype)
    return (x @ w_mu).pow(2).sum(-1) / x.pow(2).sum(-1)


# ----------------------------------------------------------------------------- (c) step size
def theta_trajectory(model: LEO | MAML, batch: TaskBatch) -> Tensor:
    """Class weights [B, T+1, N, D] before and after each of the model's own inner steps in
    theta space: LEO's latent steps (decoded means, eval mode; fine-tuning not included) or
    MAML's / Meta-SGD's steps."""
    x, y = _task_tensors(model, batch)
    if isinstance(model, LEO):
        path = [W.mean(dim=2) for W in _latent_adaptation(model, x, y).w_trajectory]
    elif isinstance(model, MAML):
        with evaluation_mode(model), torch.no_grad():
            path = model.adapt(x, y)
    else:
        raise UserError(
            f"theta_trajectory needs a LEO, MAML or MetaSGD model, got {type(model).__name__}"
        )
    return torch.stack(path, dim=1).detach()  # (W_0 is a view of a parameter)


def theta_step_norms(model: LEO | MAML, batch: TaskBatch) -> Tensor:
    """||w^(t+1) - w^(t)||, the Frobenius norm over all N D class weights, of each inner step
    (Fig. 4c): [B, T]."""
    path = theta_trajectory(model, batch)
    return (path[:, 1:] - path[:, :-1]).flatten(2).norm(dim=2)


# ------------------------------------------------------------------- preconditioning identity
def latent_preconditioner(model: LEO, k_shot: int) -> Tensor:
    """P = W_mu diag(alpha) W_mu^T / K [D, D], rank <= Z: one latent step at evaluation moves
    each class's weights by -P grad_{w_n} L^tr (see :func:`predicted_latent_step`).

    Derivation: z_{n,k}' = z_{n,k} - alpha * grad_{z_{n,k}} L^tr for each of the K copies; the
    logits use mean_k W_{n,k}, so grad_{W_{n,k}} L^tr = grad_{w_n} L^tr / K, and W_{n,k} =
    W_mu z_{n,k} gives grad_{z_{n,k}} L^tr = W_mu^T grad_{w_n} L^tr / K. Decoding the new
    codes, w_n' = W_mu mean_k z_{n,k}' = w_n - W_mu diag(alpha) W_mu^T grad_{w_n} L^tr / K.
    """
    if k_shot < 1:
        raise UserError(f"k_shot must be >= 1, got {k_shot}")
    w_mu = decoder_mean(model)
    return (w_mu * model.inner_lr.detach()) @ w_mu.T / k_shot


def predicted_latent_step(model: LEO, batch: TaskBatch) -> Tensor:
    """Delta w = -P grad_w L^tr at the decoded weights: [B, N, D], the class weights' change in
    the first latent step as the identity predicts it (compare with
    ``theta_trajectory(model, batch)[:, 1] - [:, 0]``)."""
    space = weight_space(model, batch)
    grad = space.gradient()  # [B, N, D]
    k = space.features.shape[2]
    return -grad @ latent_preconditioner(model, k).to(grad.dtype)  # P is symmetric


def preconditioner_eigenvalues(model: LEO | MAML, k_shot: int) -> Tensor:
    """The spectrum of the matrix each model multiplies grad_{w_n} L^tr by, largest |.| first.

    LEO: the Z (at most) non-zero eigenvalues of P = W_mu diag(alpha) W_mu^T / K: [Z] (the
    other D - Z are zero). Meta-SGD: its diagonal preconditioner diag(alpha_n) per class, whose
    eigenvalues are its N D learned rates: [N D]. MAML: its fixed rate, N D times. Rates may be
    negative (they are learned), so these are eigenvalues, not their absolute values.
    """
    if isinstance(model, LEO):
        values = torch.linalg.eigvalsh(latent_preconditioner(model, k_shot).double())
        z = min(model.config.num_latents, model.embedding_dim)
        values = values[values.abs().argsort(descending=True)][:z]
    elif isinstance(model, MAML):
        rate = torch.as_tensor(model.learning_rate()).detach().double()
        values = rate.expand(model.n_way, model.embedding_dim).flatten()
        values = values[values.abs().argsort(descending=True)]
    else:
        raise UserError(
            f"preconditioner_eigenvalues needs a LEO or MAML/MetaSGD model, got "
            f"{type(model).__name__}"
        )
    return values


# ------------------------------------------------------------------------- subspaces (item 3)
def _orthonormal_basis(a: Tensor, what: str) -> Tensor:
    """An orthonormal basis [D, rank] of the column space of ``a`` [D, p] (SVD, so a
    rank-deficient ``a`` gives only its rank)."""
    a = torch.as_tensor(a).double()
    if a.dim() != 2:
        raise UserError(f"{what} must be a matrix [D, p], got shape {tuple(a.shape)}")
    u, s, _ = torch.linalg.svd(a, full_matrices=False)
    tol = s.max().clamp_min(1e-300) * max(a.shape) * torch.finfo(torch.float64).eps
    rank = int((s > tol).sum())
    if rank == 0:
        raise UserError(f"{what} is zero; it spans no subspace")
    return u[:, :rank]


def principal_angles(a: Tensor | np.ndarray, b: Tensor | np.ndarray) -> Tensor:
    """Principal angles (radians, smallest first) between the column spaces of a [D, p] and
    b [D, q]: [min(rank a, rank b)]. 0: a shared direction; pi / 2: orthogonal directions.

    cos theta_i are the singular values of Qa^T Qb for orthonormal bases Qa, Qb
    (Björck & Golub, 1973); small angles come from the sines instead (accurate near 0).
    """
    qa, qb = _orthonormal_basis(a, "a"), _orthonormal_basis(b, "b")
    if qa.shape[0] != qb.shape[0]:
        raise UserError(
            f"a and b must have the same number of rows, got {qa.shape[0]}, {qb.shape[0]}"
        )
    if qa.shape[1] < qb.shape[1]:
        qa, qb = qb, qa
    cos = torch.linalg.svdvals(qa.T @ qb).clamp(0, 1)  # descending
    sin = torch.linalg.svdvals(qb - qa @ (qa.T @ qb)).clamp(0, 1).flip(0)  # ascending
    return torch.where(cos**2 < 0.5, torch.arccos(cos), torch.arcsin(sin))


def subspace_alignment(matrix: Tensor, basis: Tensor | np.ndarray) -> float:
    """||U U^T M||_F^2 / ||M||_F^2 in [0, 1]: the fraction of what ``matrix`` M [D, D] (or
    [D, Z]) outputs that lands in the subspace spanned by ``basis`` U [D, r].

    For a preconditioner M, how much of every preconditioned step goes into the subspace; for
    the decoder W_mu, how much of its output does. A diagonal M = diag(a) reaches at most
    max_d ||U_d||^2 (:func:`best_diagonal_alignment`), whatever its entries.
    """
    u = _orthonormal_basis(basis, "basis")
    m = torch.as_tensor(matrix).double()
    if m.shape[0] != u.shape[0]:
        raise UserError(f"matrix has {m.shape[0]} rows but the basis {u.shape[0]}")
    total = (m**2).sum()
    if total == 0:
        raise UserError("matrix is zero; its alignment is undefined")
    return float(((u.T @ m) ** 2).sum() / total)


def best_diagonal_alignment(basis: Tensor | np.ndarray) -> float:
    """max over diagonal D x D matrices of :func:`subspace_alignment` = max_d ||U_d||^2 (the
    largest leverage score of the subspace; r / D on average for a random r-d subspace).

    ||U U^T diag(a)||_F^2 = sum_d a_d^2 ||U_d||^2, a weighted mean of the row norms."""
    u = _orthonormal_basis(basis, "basis")
    return float((u**2).sum(dim=1).max())


@dataclass
class SubspaceTracker:
    """A ``training.train`` callback that records how the decoder's column space meets a known
    subspace (the synthetic bank's class subspace, ``data.subspace_basis``) after every
    validation.

    Lists, one entry per call: ``steps``; ``angles`` (principal angles, radians, [r] each);
    ``alignment`` (:func:`subspace_alignment` of W_mu); ``val_accuracy``.

    Example::

        tracker = SubspaceTracker(subspace_basis(config))
        train(leo_config, train_config, bank, out_dir, callback=tracker)
        np.degrees(tracker.angles[-1])
    """

    basis: Any
    steps: list[int] | None = None
    angles: list[np.ndarray] | None = None
    alignment: list[float] | None = None
    val_accuracy: list[float] | None = None

    def __post_init__(self) -> None:
        self.basis = _orthonormal_basis(self.basis, "basis")
        self.steps, self.angles, self.alignment, self.val_accuracy = [], [], [], []

    def __call__(self, step: int, metrics: dict[str, Any]) -> None:
        model = metrics["model"]
        w_mu = decoder_mean(model)
        self.steps.append(int(step))
        self.angles.append(principal_angles(w_mu, self.basis).numpy())
        self.alignment.append(subspace_alignment(w_mu, self.basis))
        self.val_accuracy.append(float(metrics.get("val_accuracy", math.nan)))


# -------------------------------------------------------------------- many tasks (Fig. 4 data)
def curvature_statistics(
    model: LEO | MAML,
    split: FeatureSplit,
    *,
    n_way: int = 5,
    k_shot: int = 1,
    tasks: int = 1000,
    batch_size: int = 50,
    seed: int | list[int] = 0,
    method: str = "factored",
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """Everything Fig. 4 needs from one model, over ``tasks`` tasks of ``split`` (the same seed
    and batch_size give the same tasks for every model).

    Keys (float64): ``hessian_weights`` [T, R] (always); ``hessian_latent`` [T, R],
    ``theta_steps`` [T, S] and ``preconditioner`` [Z] (LEO with latent steps);
    ``decoder_singular_values`` [Z] and ``decoder_gain`` [T, N K] (every LEO);
    ``theta_steps`` [T, S] and ``preconditioner`` [N D] (MAML, Meta-SGD).
    """
    sampler = EpisodeSampler(split, n_way, k_shot, 1)  # queries are not used
    latent = isinstance(model, LEO) and model.config.inner_unroll_length > 0
    steps = latent or isinstance(model, MAML)
    out: dict[str, list[np.ndarray]] = {"hessian_weights": []}
    if latent:
        out["hessian_latent"] = []
    if isinstance(model, LEO):
        out["decoder_gain"] = []
    if steps:
        out["theta_steps"] = []
    for batch in tqdm(
        sampler.iter_batches(tasks, batch_size, seed),
        total=math.ceil(tasks / batch_size),
        disable=not progress,
        desc="curvature",
        leave=False,
    ):
        out["hessian_weights"].append(hessian_eigenvalues(weight_space(model, batch), method))
        if latent:
            out["hessian_latent"].append(hessian_eigenvalues(latent_space(model, batch), method))
        if isinstance(model, LEO):
            out["decoder_gain"].append(decoder_gain(model, batch).flatten(1))
        if steps:
            out["theta_steps"].append(theta_step_norms(model, batch))
    stats = {key: torch.cat(v).double().cpu().numpy() for key, v in out.items()}
    if isinstance(model, LEO):
        stats["decoder_singular_values"] = decoder_singular_values(model).cpu().numpy()
    if steps:
        stats["preconditioner"] = preconditioner_eigenvalues(model, k_shot).cpu().numpy()
    return stats


def save_statistics(path: str | Path, statistics: dict[str, dict[str, np.ndarray]]) -> Path:
    """Write {model name: :func:`curvature_statistics`} to one ``.npz``, atomically."""
    arrays = {}
    for name, stats in statistics.items():
        if "/" in name or not name:
            raise UserError(f"model names must be non-empty and without '/', got {name!r}")
        for key, value in stats.items():
            arrays[f"{name}/{key}"] = np.asarray(value)
    return atomic_write(path, lambda f: np.savez_compressed(f, **arrays))


def load_statistics(path: str | Path) -> dict[str, dict[str, np.ndarray]]:
    """Read what :func:`save_statistics` wrote (no pickled objects: nothing is executed)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"no curvature statistics at {path}; compute them with "
            "curvature_statistics and save_statistics"
        )
    try:
        with np.load(path, allow_pickle=False) as data:
            items = {key: data[key] for key in data.files}
    except (ValueError, OSError) as error:
        raise UserError(f"{path} is not a curvature-statistics .npz file ({error})") from None
    statistics: dict[str, dict[str, np.ndarray]] = {}
    for key, value in items.items():
        name, _, field = key.partition("/")
        if not field:
            raise UserError(f"{path} is not a curvature-statistics file (array {key!r})")
        statistics.setdefault(name, {})[field] = value
    return statistics


# ------------------------------------------------------------------------------ the figure
def figure4_boxes(
    statistics: dict[str, dict[str, np.ndarray]],
) -> list[tuple[str, list[tuple[str, np.ndarray]]]]:
    """The boxes of the paper's three panels from {model name: :func:`curvature_statistics`}:
    [(panel title, [(box label, values), ...]) x 3]. (a) each model's curvature in the space it
    adapts in (z for LEO, theta otherwise); (b) decoder singular values; (c) theta steps."""
    curv, cover, steps = [], [], []
    for name, stats in statistics.items():
        if "hessian_latent" in stats:
            curv.append((f"{name} (z)", stats["hessian_latent"]))
        else:
            curv.append((f"{name} (θ)", stats["hessian_weights"]))
        if "decoder_singular_values" in stats:
            cover.append((name, stats["decoder_singular_values"]))
        if "theta_steps" in stats:
            steps.append((name, stats["theta_steps"]))
    return [
        ("(a) curvature: |eigenvalues| of the Hessian of L^tr", curv),
        ("(b) coverage: singular values of the decoder", cover),
        ("(c) ||Δθ|| of each inner step", steps),
    ]


def plot_figure4(
    statistics: dict[str, dict[str, np.ndarray]],
    axes: Any = None,
    log: tuple[bool, bool, bool] = (True, True, True),
) -> Any:
    """The paper's Fig. 4 as three box plots: boxes at the quartiles, the median marked,
    whiskers at the 5th and 95th percentiles (as the paper's), no outliers drawn. ``log``:
    log scale per panel. Returns the three matplotlib Axes."""
    import matplotlib.pyplot as plt

    from .viz import PALETTE

    panels = figure4_boxes(statistics)
    if not any(boxes for _, boxes in panels):
        raise UserError("no statistics to plot; compute them with curvature_statistics")
    if axes is None:
        _, axes = plt.subplots(1, 3, figsize=(11, 3.4))
    for ax, (title, boxes), use_log in zip(axes, panels, log, strict=True):
        if boxes:
            # matplotlib's whis=(5, 95) stops at the last data point inside; these are exact
            quantiles = [np.percentile(np.ravel(v), (5, 25, 50, 75, 95)) for _, v in boxes]
            parts = ax.bxp(
                [
                    dict(whislo=q[0], q1=q[1], med=q[2], q3=q[3], whishi=q[4], label=label)
                    for q, (label, _) in zip(quantiles, boxes, strict=True)
                ],
                showfliers=False,
                patch_artist=True,
                medianprops={"color": "black"},
            )
            for i, box in enumerate(parts["boxes"]):
                box.set_facecolor(PALETTE[i % len(PALETTE)])
            if use_log:
                ax.set_yscale("log")
        ax.set_title(title, fontsize=9)
    return axes
