"""The latent space of a trained LEO, as plain functions (notebook 08; paper §4.5, Fig. 3).

Everything runs the model in evaluation mode (means, no dropout: deterministic), one task or a
batch of tasks at a time:

- :func:`collect_codes`: z and the adapted z' (and the whole inner-loop path) over many tasks;
- :func:`fit_pca` / :func:`tsne`: 2-D pictures of those codes;
- :func:`within_task_separation`, :func:`class_silhouette`: how separated the codes are, as
  numbers;
- :func:`inner_step`, :func:`task_trajectory`: the latent update (§2.3.2) one step at a time
  (the explorer widget's callback);
- :func:`interpolate_class_code`: decode classifiers along the line between two class codes;
- :func:`weight_samples`: several w drawn from p(w | z) for one z (eq. 4).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from . import losses
from .data import EpisodeSampler, FeatureSplit, TaskBatch
from .errors import UserError
from .model import LEO


@contextmanager
def evaluation_mode(model: LEO) -> Iterator[LEO]:
    """Run ``model`` in eval mode (means, no dropout) and restore its previous mode after."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


# ------------------------------------------------------------------------ codes of many tasks
@dataclass
class LatentCodes:
    """Per-class codes of T tasks along the latent inner loop (S steps; eval mode).

    z_trajectory [T, S+1, N, Z] (step 0 = the encoder's z, step S = z'); classes [T, N] (class
    ids in the split); accuracy_before / accuracy_after [T]: query accuracy of the classifier
    decoded from z and from z' (no fine-tuning).
    """

    z_trajectory: np.ndarray
    classes: np.ndarray
    class_names: list[str]
    accuracy_before: np.ndarray
    accuracy_after: np.ndarray

    @property
    def z(self) -> np.ndarray:
        """[T, N, Z] the encoder's codes."""
        return self.z_trajectory[:, 0]

    @property
    def z_prime(self) -> np.ndarray:
        """[T, N, Z] the adapted codes."""
        return self.z_trajectory[:, -1]


def collect_codes(
    model: LEO,
    split: FeatureSplit,
    *,
    n_way: int = 5,
    k_shot: int = 1,
    n_query: int = 15,
    tasks: int = 500,
    batch_size: int = 50,
    seed: int | list[int] = 0,
) -> LatentCodes:
    """z, z' and the inner-loop path of ``tasks`` tasks of ``split`` (the same seed and
    batch_size give the same tasks). With K > 1 the K slots of a class hold the same code; one
    is kept."""
    device = next(model.parameters()).device
    sampler = EpisodeSampler(split, n_way, k_shot, n_query)
    paths, classes, before, after = [], [], [], []
    with evaluation_mode(model), torch.no_grad():
        for batch in sampler.iter_batches(tasks, batch_size, seed):
            batch = batch.to(device, model.dtype)
            out = model(batch)
            paths.append(torch.stack(out.z_trajectory, dim=1)[:, :, :, 0].cpu())
            classes.append(batch.classes.cpu())
            for kept, w in ((before, out.w_init), (after, out.w_adapted)):
                logits = model.predict(batch.query_x, w)
                kept.append(losses.accuracy(logits, batch.query_y).cpu())
    return LatentCodes(
        torch.cat(paths).double().numpy(),
        torch.cat(classes).numpy(),
        list(split.class_names),
        torch.cat(before).double().numpy(),
        torch.cat(after).double().numpy(),
    )


# ---------------------------------------------------------------------------- 2-D pictures
@dataclass
class PCA:
    """A linear projection x -> (x - mean) @ components.T onto the top principal directions.

    mean [F]; components [C, F] orthonormal rows; explained [C]: fraction of the variance each
    direction carries. Signs are fixed (largest coordinate of each row positive) so the same data
    always gives the same picture.
    """

    mean: np.ndarray
    components: np.ndarray
    explained: np.ndarray

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """[..., F] -> [..., C]."""
        return (np.asarray(x, dtype=np.float64) - self.mean) @ self.components.T


def fit_pca(x: np.ndarray, n_components: int = 2) -> PCA:
    """Principal directions of the rows of ``x`` [M, F] (any leading axes are flattened)."""
    x = np.asarray(x, dtype=np.float64)
    x = x.reshape(-1, x.shape[-1])
    if len(x) < 2 or n_components > min(x.shape):
        raise UserError(
            f"PCA with {n_components} components needs at least {n_components} "
            f"rows and columns, got {x.shape}; pass more codes"
        )
    mean = x.mean(axis=0)
    _, singular, vt = np.linalg.svd(x - mean, full_matrices=False)
    components = vt[:n_components]
    signs = np.sign(components[np.arange(n_components), np.abs(components).argmax(axis=1)])
    variance = singular**2
    return PCA(mean, components * signs[:, None], variance[:n_components] / variance.sum())


def tsne(x: np.ndarray, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """t-SNE (scikit-learn, PCA initialisation) of the rows of ``x`` [M, F] -> [M, 2].

    Deterministic for a given seed. Distances between far-apart clusters mean little in t-SNE;
    who is next to whom does.
    """
    from sklearn.manifold import TSNE

    x = np.asarray(x, dtype=np.float64).reshape(-1, np.shape(x)[-1])
    perplexity = min(perplexity, (len(x) - 1) / 3)
    # 500 iterations (default 1 000): scikit-learn >= 1.5 calls the argument max_iter, n_iter before
    iterations = "max_iter" if "max_iter" in inspect.signature(TSNE).parameters else "n_iter"
    return TSNE(
        n_components=2, perplexity=perplexity, init="pca", random_state=seed, **{iterations: 500}
    ).fit_transform(x)


# ------------------------------------------------------------------------------- separation
def within_task_separation(codes: np.ndarray) -> float:
    """How far apart the N class codes of one task are, relative to codes of different tasks.

    codes [T, N, Z] -> mean distance between two codes of the same task / mean distance between
    codes of different tasks (pairs (t, n) vs (t + 1, n)). 0: a task's classes share one code;
    about 1: they are as different as codes of unrelated classes.
    """
    codes = np.asarray(codes, dtype=np.float64)
    t, n, _ = codes.shape
    if t < 2 or n < 2:
        raise UserError(f"need at least 2 tasks of 2 classes, got codes of shape {codes.shape}")
    pairs = np.linalg.norm(codes[:, :, None] - codes[:, None], axis=-1)  # [T, N, N]
    within = pairs[:, ~np.eye(n, dtype=bool)].mean()
    across = np.linalg.norm(codes - np.roll(codes, 1, axis=0), axis=-1).mean()
    return float(within / across)


def class_silhouette(codes: np.ndarray, classes: np.ndarray, min_count: int = 5) -> float:
    """Silhouette score (scikit-learn, -1..1) of the codes grouped by class identity.

    codes [..., Z] with classes [...] (same leading shape); classes seen fewer than ``min_count``
    times are left out. High: codes of the same class lie together, away from other classes.
    """
    from sklearn.metrics import silhouette_score

    codes = np.asarray(codes, dtype=np.float64).reshape(-1, np.shape(codes)[-1])
    classes = np.asarray(classes).reshape(-1)
    values, counts = np.unique(classes, return_counts=True)
    keep = np.isin(classes, values[counts >= min_count])
    if len(np.unique(classes[keep])) < 2:
        raise UserError(f"fewer than 2 classes occur {min_count} times; collect more tasks")
    return float(silhouette_score(codes[keep], classes[keep]))


# ------------------------------------------------------------------- one task, step by step
def inner_step(model: LEO, support_x: Tensor, support_y: Tensor, z: Tensor) -> Tensor:
    """One latent update (§2.3.2), z' = z - alpha * grad_z sum L^tr(decode(z)), in eval mode.

    The update is unnumbered in the paper (eq. 5 is L^tr itself); W = the decoder's means.

    support_x [B,N,K,D], support_y [B,N,K], z [B,N,K,Z] -> z' [B,N,K,Z] (no graph kept).
    """
    with evaluation_mode(model), torch.enable_grad():
        z = z.detach().requires_grad_()
        loss, _ = model.forward_decoder(z, support_x, support_y)
        (grad,) = torch.autograd.grad(loss.sum(), z)
    return (z - model.inner_lr * grad).detach()


@dataclass
class TaskTrajectory:
    """One task along S latent steps (eval mode, no fine-tuning), index 0..S.

    z [S+1, N, Z]; w [S+1, N, D] (decoded means); support_loss [S+1] (mean CE);
    query_probs [S+1, N, V, N] (softmax of the query logits); query_accuracy [S+1].
    """

    z: np.ndarray
    w: np.ndarray
    support_loss: np.ndarray
    query_probs: np.ndarray
    query_accuracy: np.ndarray

    @property
    def steps(self) -> int:
        return len(self.z) - 1


def task_trajectory(model: LEO, task: TaskBatch, steps: int | None = None) -> TaskTrajectory:
    """Adapt one task (a TaskBatch of size 1) for ``steps`` latent steps (default: the model's
    ``inner_unroll_length``) from the encoder's z, recording codes, weights and predictions."""
    if task.batch_size != 1:
        raise UserError(
            f"task_trajectory takes one task, got a batch of {task.batch_size}; pass batch.task(i)"
        )
    steps = model.config.inner_unroll_length if steps is None else steps
    task = task.to(next(model.parameters()).device, model.dtype)
    x, y = task.support_x, task.support_y
    with evaluation_mode(model), torch.no_grad():
        z, _, _ = model.forward_encoder(x)
    records: dict[str, list] = {
        "z": [],
        "w": [],
        "support_loss": [],
        "query_probs": [],
        "query_accuracy": [],
    }
    for step in range(steps + 1):
        if step:
            z = inner_step(model, x, y, z)
        with evaluation_mode(model), torch.no_grad():
            loss, w = model.forward_decoder(z, x, y)
            logits = model.predict(task.query_x, w)
            records["z"].append(z[0, :, 0])
            records["w"].append(w[0].mean(dim=1))
            records["support_loss"].append(loss.mean())
            records["query_probs"].append(torch.softmax(logits[0], dim=-1))
            records["query_accuracy"].append(losses.accuracy(logits, task.query_y)[0])
    return TaskTrajectory(**{k: torch.stack(v).double().cpu().numpy() for k, v in records.items()})


def interpolate_class_code(
    model: LEO, task: TaskBatch, z: Tensor, a: int, b: int, points: int = 21
) -> tuple[np.ndarray, np.ndarray]:
    """Move class ``a``'s code along the line to class ``b``'s and decode the classifier.

    z [1,N,K,Z] (codes of ``task``); the code of class a becomes (1 - t) z_a + t z_b for
    ``points`` values of t in [0, 1], the others stay. Returns (t [P], probs [P, N, N]):
    probs[p, c, l] is the mean predicted probability of label l over the queries of class c.
    """
    n = z.shape[1]
    if not (0 <= a < n and 0 <= b < n) or a == b:
        raise UserError(f"a and b must be two different classes in 0..{n - 1}, got {a}, {b}")
    task = task.to(z.device, model.dtype)
    t = torch.linspace(0, 1, points, dtype=z.dtype, device=z.device)
    codes = z.expand(points, -1, -1, -1).clone()  # [P, N, K, Z]
    codes[:, a] = (1 - t)[:, None, None] * z[:, a] + t[:, None, None] * z[:, b]
    x = task.support_x.expand(points, -1, -1, -1)
    y = task.support_y.expand(points, -1, -1)
    with evaluation_mode(model), torch.no_grad():
        _, w = model.forward_decoder(codes, x, y)
        logits = model.predict(task.query_x.expand(points, -1, -1, -1), w)  # [P, N, V, N]
        probs = torch.softmax(logits, dim=-1).mean(dim=2)
    return t.double().cpu().numpy(), probs.double().cpu().numpy()


def weight_samples(model: LEO, z: Tensor, samples: int, seed: int = 0) -> Tensor:
    """``samples`` draws w ~ p(w | z) = N(mu_d(z), sigma_d(z)^2) (eq. 4) for one task's codes.

    z [1,N,K,Z] -> w [S,N,K,D]; the std is the decoder's, with its offset (LEO_SPEC §2.3).
    """
    generator = torch.Generator(device=z.device).manual_seed(seed)
    with torch.no_grad():
        mean, std, _ = model.gaussian_params(model.decoder(z), model.decoder_stddev_offset)
        noise = torch.randn(
            (samples, *mean.shape[1:]), generator=generator, dtype=mean.dtype, device=mean.device
        )
        return mean + std * noise
