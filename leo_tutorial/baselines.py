"""Baselines on the same frozen embeddings as LEO, batched over tasks like :mod:`model`.

Every baseline is an ``nn.Module`` that takes a :class:`leo_tutorial.data.TaskBatch`
(support_x [B,N,K,D], query_x [B,N,V,D], the L2-normalised embeddings LEO sees) and returns a
:class:`BaselineOutput` with the same fields :func:`leo_tutorial.training.evaluate` and
:func:`leo_tutorial.training.meta_step` read from LEO's output (``loss``, ``query_loss``,
``query_accuracy``). So every method is meta-trained, selected on S^val and tested by the same
code, on the same tasks, with the same 95% CI.

- :class:`NearestCentroid` -- ProtoNet without training (Snell et al., 2017): class centroids of
  the support embeddings, logits = -squared Euclidean distance. The embeddings are
  L2-normalised (as LEO's input), so this ranks classes like cosine similarity to centroids.
- :class:`ProtoNet` -- the same with a meta-learned linear projection x -> P x.
- :class:`MAML` -- MAML (Finn et al., 2017) on a bias-free linear classifier logits = x W^T (the
  form of LEO's classifier): a meta-learned initialisation W_0 [N, D], ``inner_unroll_length``
  steps W <- W - alpha grad_W sum L^tr(W) with a fixed alpha, second order.
- :class:`MetaSGD` -- Meta-SGD (Li et al., 2017): the same, with a meta-learned learning rate per
  parameter alpha [N, D].
- :class:`LogisticRegressionProbe` -- a multinomial logistic regression (scikit-learn) fitted on
  each task's support set; no meta-training (only its regularisation C is chosen on S^val).

MAML and Meta-SGD compute inner gradients in closed form, like LEO's analytic path:
d(sum CE)/dW = (softmax - onehot)^T x, written with differentiable operations, so autograd
differentiates through it and the meta-gradient is exactly second order (``first_order=True``
detaches it instead; tests/test_baselines.py checks both against finite differences).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from . import losses
from .config import Range
from .errors import UserError


@dataclass(frozen=True)
class BaselineConfig:
    """Hyper-parameters of the meta-learned baselines.

    ``inner_unroll_length``: MAML / Meta-SGD inner steps (LEO's default, 5).
    ``inner_lr_init``: MAML's fixed alpha and Meta-SGD's initial per-parameter alpha (chosen on
    S^val among ``INNER_LRS`` by :mod:`leo_tutorial.compare`). For summed cross-entropy on
    unit-norm embeddings one step from W = 0 moves each logit by at most alpha * K: the best
    alpha depends on K and on how similar the embeddings are (glyphs 5-shot: 0.1 beats 1 by
    6 points; nearly orthogonal synthetic embeddings want larger steps).
    ``projection_dim``: ProtoNet's output size (LEO's latent size, 64).
    ``outer_lr``, ``gradient_threshold``, ``gradient_norm_threshold``: Adam and the official
    clipping, as for LEO (:func:`leo_tutorial.training.apply_meta_gradient`).
    ``first_order``: drop the second-order terms of MAML / Meta-SGD (first-order MAML).
    ``probe_c``: inverse L2 strength of the logistic-regression probe (chosen on S^val by
    :mod:`leo_tutorial.compare` among ``PROBE_CS``).
    """

    inner_unroll_length: int = 5
    inner_lr_init: float = 1.0
    projection_dim: int = 64
    outer_lr: float = 1e-3
    gradient_threshold: float = 0.1
    gradient_norm_threshold: float = 0.1
    first_order: bool = False
    probe_c: float = 1.0

    def __post_init__(self) -> None:
        if self.inner_unroll_length < 0:
            raise UserError("inner_unroll_length must be >= 0")
        if self.projection_dim < 1:
            raise UserError(f"projection_dim must be >= 1, got {self.projection_dim}")
        if self.outer_lr <= 0 or self.probe_c <= 0:
            raise UserError("outer_lr and probe_c must be > 0")

    def replace(self, **changes: Any) -> BaselineConfig:
        return replace(self, **changes)


PROBE_CS = (0.1, 1.0, 10.0, 100.0)  # candidate C of the logistic-regression probe
INNER_LRS = (0.01, 0.1, 1.0, 10.0)  # candidate alpha of MAML / initial alpha of Meta-SGD
# Search ranges of `compare --tune-trials` (BaselineConfig fields; see leo_tutorial.tune).
OUTER_LR_RANGE = Range(1e-4, 1e-2)
INNER_LR_RANGE = Range(min(INNER_LRS), max(INNER_LRS))


@dataclass
class BaselineOutput:
    """loss: scalar meta-loss (mean query CE); query_loss, query_accuracy [B];
    query_logits [B,N,V,N]."""

    loss: Tensor
    query_loss: Tensor
    query_accuracy: Tensor
    query_logits: Tensor

    def training_metrics(self) -> dict[str, float]:
        """What the training loop logs for this step: means over the batch's tasks."""
        return {
            "loss": self.query_loss.detach().mean().item(),
            "accuracy": self.query_accuracy.detach().mean().item(),
        }


class Baseline(nn.Module):
    """Shared plumbing: shapes, dtype, and the query loss / accuracy from ``query_logits``."""

    meta_learned: ClassVar[bool] = False  # whether it is meta-trained (by training.meta_train)
    # BaselineConfig fields chosen on S^val before meta-training, with their candidates
    selected_on_val: ClassVar[dict[str, tuple[float, ...]]] = {}
    # BaselineConfig fields searched by `compare --tune-trials` (meta-learned baselines only);
    # a field searched there is not also chosen from ``selected_on_val``
    search_space: ClassVar[dict[str, Range]] = {}

    def __init__(
        self,
        config: BaselineConfig | None = None,
        embedding_dim: int = 640,
        n_way: int = 5,
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        if embedding_dim < 1 or n_way < 2:
            raise UserError(f"need embedding_dim >= 1 and n_way >= 2, got {embedding_dim}, {n_way}")
        self.config = config or BaselineConfig()
        self.embedding_dim, self.n_way, self._dtype = embedding_dim, n_way, dtype

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    def query_logits(self, support_x: Tensor, support_y: Tensor, query_x: Tensor) -> Tensor:
        """[B,N,K,D], [B,N,K], [B,N,V,D] -> logits [B,N,V,N]."""
        raise NotImplementedError

    def forward(self, batch) -> BaselineOutput:  # noqa: ANN001 (a TaskBatch)
        x, qx = batch.support_x, batch.query_x
        for t in (x, qx):
            if t.dim() != 4 or t.shape[-1] != self.embedding_dim or t.shape[1] != self.n_way:
                raise UserError(
                    f"expected {self.n_way}-way tasks of {self.embedding_dim}-d "
                    f"embeddings [B, N, K, D], got shape {tuple(t.shape)}"
                )
        logits = self.query_logits(x.to(self.dtype), batch.support_y, qx.to(self.dtype))
        query_loss = losses.cross_entropy(logits, batch.query_y).flatten(1).mean(1)
        return BaselineOutput(
            query_loss.mean(), query_loss, losses.accuracy(logits, batch.query_y), logits
        )


def negative_squared_distances(query: Tensor, centroids: Tensor) -> Tensor:
    """-||q - c_n||^2: query [B,N,V,E], centroids [B,N,E] -> logits [B,N,V,N]."""
    b, n, v, e = query.shape
    flat = query.reshape(b, n * v, e)
    d2 = torch.cdist(flat, centroids).pow(2)  # [B, N V, N]
    return -d2.view(b, n, v, -1)


class NearestCentroid(Baseline):
    """ProtoNet's classifier on the frozen (L2-normalised) embeddings, no parameters:
    logits[b,i,j,n] = -||x_{b,i,j} - mean_k s_{b,n,k}||^2."""

    def query_logits(self, support_x: Tensor, support_y: Tensor, query_x: Tensor) -> Tensor:
        return negative_squared_distances(query_x, support_x.mean(dim=2))


class ProtoNet(Baseline):
    """Nearest centroid after a meta-learned linear projection P: R^D -> R^E (bias-free,
    Glorot-uniform), trained on the query cross-entropy of -squared distances."""

    meta_learned: ClassVar[bool] = True
    search_space: ClassVar[dict[str, Range]] = {"outer_lr": OUTER_LR_RANGE}

    def __init__(
        self,
        config: BaselineConfig | None = None,
        embedding_dim: int = 640,
        n_way: int = 5,
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__(config, embedding_dim, n_way, dtype)
        self.projection = nn.Linear(
            embedding_dim, self.config.projection_dim, bias=False, dtype=dtype
        )
        nn.init.xavier_uniform_(self.projection.weight)

    def query_logits(self, support_x: Tensor, support_y: Tensor, query_x: Tensor) -> Tensor:
        centroids = self.projection(support_x).mean(dim=2)  # [B, N, E]
        return negative_squared_distances(self.projection(query_x), centroids)


def linear_logits(x: Tensor, W: Tensor) -> Tensor:
    """logits = x W^T per task: x [B,N,K,D], W [B,N,D] -> [B,N,K,N]."""
    b, n, k, d = x.shape
    return torch.bmm(x.reshape(b, n * k, d), W.transpose(1, 2)).view(b, n, k, -1)


def linear_support_gradient(x: Tensor, y: Tensor, W: Tensor) -> Tensor:
    """d(sum of support CE)/dW = (softmax(x W^T) - onehot(y))^T x: [B,N,K,D], [B,N,K], [B,N,D]
    -> [B,N,D], in differentiable closed form (autograd through it = second order)."""
    b, n, k, d = x.shape
    g_logits = losses.cross_entropy_grad(linear_logits(x, W), y)  # [B, N, K, N]
    return torch.bmm(g_logits.reshape(b, n * k, -1).transpose(1, 2), x.reshape(b, n * k, d))


class MAML(Baseline):
    """MAML on a linear classifier: W_0 [N, D] meta-learned (zeros at first), then
    ``inner_unroll_length`` steps W <- W - alpha * grad_W sum L^tr(W) with a fixed alpha.

    Labels are a fresh permutation in every task, so W_0's rows can only learn what all classes
    share; the adaptation does the work. Its alpha (Meta-SGD's initial alpha) is chosen on S^val.
    """

    meta_learned: ClassVar[bool] = True
    selected_on_val: ClassVar[dict[str, tuple[float, ...]]] = {"inner_lr_init": INNER_LRS}
    search_space: ClassVar[dict[str, Range]] = {
        "outer_lr": OUTER_LR_RANGE,
        "inner_lr_init": INNER_LR_RANGE,
    }

    def __init__(
        self,
        config: BaselineConfig | None = None,
        embedding_dim: int = 640,
        n_way: int = 5,
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__(config, embedding_dim, n_way, dtype)
        self.w_init = nn.Parameter(torch.zeros(n_way, embedding_dim, dtype=dtype))

    def learning_rate(self) -> Tensor | float:
        """alpha: a fixed scalar for MAML."""
        return self.config.inner_lr_init

    def adapt(self, support_x: Tensor, support_y: Tensor) -> list[Tensor]:
        """Inner loop: the weights [B,N,D] before and after every step (T + 1 tensors)."""
        W = self.w_init.expand(support_x.shape[0], -1, -1)
        trajectory = [W]
        alpha = self.learning_rate()
        for _ in range(self.config.inner_unroll_length):
            grad = linear_support_gradient(support_x, support_y, W)
            if self.config.first_order:
                grad = grad.detach()
            W = W - alpha * grad
            trajectory.append(W)
        return trajectory

    def query_logits(self, support_x: Tensor, support_y: Tensor, query_x: Tensor) -> Tensor:
        return linear_logits(query_x, self.adapt(support_x, support_y)[-1])


class MetaSGD(MAML):
    """Meta-SGD: MAML whose learning rate is a meta-learned tensor alpha [N, D], one rate per
    classifier weight (initialised at ``inner_lr_init``)."""

    def __init__(
        self,
        config: BaselineConfig | None = None,
        embedding_dim: int = 640,
        n_way: int = 5,
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__(config, embedding_dim, n_way, dtype)
        self.inner_lr = nn.Parameter(
            torch.full((n_way, embedding_dim), self.config.inner_lr_init, dtype=dtype)
        )

    def learning_rate(self) -> Tensor:
        return self.inner_lr


class LogisticRegressionProbe(Baseline):
    """A multinomial logistic regression (L2, lbfgs, scikit-learn) fitted on each task's
    N K support embeddings (with an unpenalised bias, scikit-learn's default); logits = its
    decision function on the queries. One task at a time (scikit-learn has no batched solver);
    no meta-training; C is chosen on S^val."""

    selected_on_val: ClassVar[dict[str, tuple[float, ...]]] = {"probe_c": PROBE_CS}

    def query_logits(self, support_x: Tensor, support_y: Tensor, query_x: Tensor) -> Tensor:
        from sklearn.linear_model import LogisticRegression
        from threadpoolctl import threadpool_limits

        b, n, v, d = query_x.shape
        xs = support_x.detach().cpu().double().numpy().reshape(b, -1, d)
        ys = support_y.cpu().numpy().reshape(b, -1)
        xq = query_x.detach().cpu().double().numpy().reshape(b, -1, d)
        # The L2-regularised solution lies in the span of the N K support embeddings
        # (representer theorem), so fitting in the coordinates of an orthonormal basis V of
        # that span, x -> x V^T, gives exactly the same logits, in N K dimensions instead of D.
        basis = np.linalg.svd(xs, full_matrices=False)[2]  # [B, min(NK, D), D], rows orthonormal
        xs, xq = xs @ basis.transpose(0, 2, 1), xq @ basis.transpose(0, 2, 1)
        logits = np.empty((b, n * v, n))
        with threadpool_limits(1):  # tiny problems: extra BLAS threads only add overhead
            for t in range(b):
                probe = LogisticRegression(C=self.config.probe_c, max_iter=1000)
                probe.fit(xs[t], ys[t])
                logits[t] = probe.decision_function(xq[t])
        return torch.from_numpy(logits).to(query_x.device, query_x.dtype).view(b, n, v, n)


BASELINES: dict[str, type[Baseline]] = {
    "nearest-centroid": NearestCentroid,
    "logreg": LogisticRegressionProbe,
    "protonet": ProtoNet,
    "maml": MAML,
    "meta-sgd": MetaSGD,
}
