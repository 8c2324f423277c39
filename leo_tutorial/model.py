"""LEO for N-way K-shot classification, batched over tasks (LEO_SPEC §2): the reference.

One method per step of the algorithm, with the official method names, in the order the data
flows::

    support_x [B,N,K,D] -> encoder -> relation_network -> average_codes_per_class
        -> possibly_sample -> z [B,N,K,Z]                              (forward_encoder, eq. 3)
    z -> decoder -> possibly_sample -> W [B,N,K,D] -> predict -> loss_fn (forward_decoder, eq. 4)
    z -> z' = z - alpha * grad_z L^tr (eq. 5), T times  (leo_inner_loop, latent update §2.3.2)
    W -> W' = W - alpha_ft * grad_W L^tr, T' times                      (finetuning_inner_loop)
    query loss with W' + beta * KL + gamma * penalty + regularisers     (forward, eq. 6-7)

Every tensor carries the task batch first, so one call adapts and evaluates B tasks.
``model.train()`` gives the official meta-training semantics (sampling, dropout, KL, encoder
penalty); ``model.eval()`` the evaluation ones (means, no dropout, KL = 0, penalty = 0).

This file is written to be read: plain tensor code and ``torch.autograd.grad`` in the inner
loops, as in the official code. ``forward`` runs the same maths through the fused meta-step of
:mod:`leo_tutorial.fast` unless ``LEOConfig(reference=True)`` (or a step method is overridden);
the tests hold the two paths to the same loss and gradients.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields

import torch
from torch import Tensor, nn

from . import losses, noise
from .config import LEOConfig
from .errors import UserError

STD_FLOOR = 1e-10  # official lower bound on every standard deviation


def floored_std(u: Tensor, stddev_offset: float) -> tuple[Tensor, Tensor]:
    """(std = max(exp(u) - (1 - offset), 1e-10), exp(u)), elementwise (LEO_SPEC §2.3)."""
    exp_u = torch.exp(u)
    return torch.clamp(exp_u - (1.0 - stddev_offset), min=STD_FLOOR), exp_u


@dataclass
class SupportPass:
    """Classifier weights W [B,N,K,D] and their support loss per example [B,N,K] (the
    official ``(tr_loss, classifier_weights)`` pair that fine-tuning starts from)."""

    loss: Tensor
    W: Tensor


@dataclass
class LatentAdaptation:
    """Result of the latent inner loop: the last support pass, z and W after every step
    (T+1 each, [B,N,K,Z] and [B,N,K,D]), mean support loss per task [B] at every step and
    the encoder penalty [B]."""

    state: SupportPass
    z_trajectory: list[Tensor]
    w_trajectory: list[Tensor]
    support_losses: list[Tensor]
    encoder_penalty: Tensor


@dataclass
class LEOOutput:
    """Everything one forward pass computed, batched over tasks B.

    loss: scalar meta-loss; query_loss, query_accuracy, kl, encoder_penalty: [B];
    l2, orthogonality: unweighted scalars; codes [B,N,K,2Z] (relation-net output, averaged per
    class: the parameters of q(z|D^tr)); z [B,N,K,Z]; z_trajectory: T+1 tensors [B,N,K,Z];
    query_logits [B,N,V,N]; support_losses: mean support loss per task [B] before and after
    every inner and fine-tuning step; weights: the T+1 weight samples decoded along the latent
    loop, then the fine-tuned weights, [B,N,K,D] each (or a function that computes them, called
    on first use), read as w_trajectory (the first T+1), w_init, w_adapted (after the latent
    loop) and w (after fine-tuning).
    """

    loss: Tensor
    query_loss: Tensor
    query_accuracy: Tensor
    kl: Tensor
    encoder_penalty: Tensor
    l2: Tensor
    orthogonality: Tensor
    codes: Tensor
    z: Tensor
    z_trajectory: list[Tensor]
    query_logits: Tensor
    support_losses: list[Tensor] = field(default_factory=list)
    weights: list[Tensor] | Callable[[], list[Tensor]] = field(default_factory=list, repr=False)

    def _weights(self) -> list[Tensor]:
        if callable(self.weights):
            self.weights = self.weights()  # computed on first use
        return self.weights

    @property
    def w_trajectory(self) -> list[Tensor]:
        return self._weights()[:-1]

    @property
    def w_init(self) -> Tensor:
        return self._weights()[0]

    @property
    def w_adapted(self) -> Tensor:
        return self._weights()[-2]

    @property
    def w(self) -> Tensor:
        return self._weights()[-1]

    def training_metrics(self) -> dict[str, float]:
        """What the training loop logs for this step: means over the batch's tasks."""
        terms = {
            "loss": self.query_loss,
            "accuracy": self.query_accuracy,
            "kl": self.kl,
            "encoder_penalty": self.encoder_penalty,
        }
        return {name: t.detach().mean().item() for name, t in terms.items()}

    def detach(self) -> LEOOutput:
        """The same output with every tensor detached from the autograd graph."""
        return LEOOutput(
            **{
                f.name: [t.detach() for t in value] if isinstance(value, list) else value.detach()
                for f in fields(self)
                for value in [self._weights() if f.name == "weights" else getattr(self, f.name)]
            }
        )


def inner_gradient(loss: Tensor, wrt: Tensor, create_graph: bool) -> Tensor:
    """d(sum of ``loss``)/d ``wrt`` (the official ``tf.gradients`` of the per-example loss).

    ``create_graph=True`` keeps it differentiable: the meta-gradient is then second order.
    """
    (grad,) = torch.autograd.grad(loss.sum(), wrt, create_graph=create_graph)
    return grad


class LEO(nn.Module):
    """Latent Embedding Optimization (Rusu et al., 2019), faithful to the official code.

    Parameters (all weights bias-free, Glorot-uniform; LEO_SPEC §2.1): ``g_e`` encoder D -> Z,
    ``g_r`` relation network 2Z -> 2Z -> 2Z -> 2Z (ReLU between, none at the end), ``g_d``
    decoder Z -> 2D, ``inner_lr`` alpha [Z], ``finetune_lr`` alpha_ft [D]
    (no symbol in the paper; eta is the outer learning rate).

    ``embedding_dim`` (D) and ``n_way`` (N) are fixed at construction: they size the parameters
    and the decoder's std offset sqrt(2 / (D + N)). Any K and any number of queries work.

    Example::

        model = LEO(LEOConfig(), embedding_dim=640, n_way=5).train()
        out = model(batch)                # batch: a TaskBatch of B tasks
        out.loss.backward()               # second-order meta-gradient of eq. 6
    """

    def __init__(
        self,
        config: LEOConfig | None = None,
        embedding_dim: int = 640,
        n_way: int = 5,
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        self.config = config = config or LEOConfig()
        if embedding_dim < 1 or n_way < 2:
            raise UserError(f"need embedding_dim >= 1 and n_way >= 2, got {embedding_dim}, {n_way}")
        self.embedding_dim, self.n_way = embedding_dim, n_way
        z, d = config.num_latents, embedding_dim
        self.g_e = nn.Linear(d, z, bias=False)
        self.g_r = nn.Sequential(
            nn.Linear(2 * z, 2 * z, bias=False),
            nn.ReLU(),
            nn.Linear(2 * z, 2 * z, bias=False),
            nn.ReLU(),
            nn.Linear(2 * z, 2 * z, bias=False),
        )
        self.g_d = nn.Linear(z, 2 * d, bias=False)
        self.inner_lr = nn.Parameter(torch.full((z,), config.inner_lr_init, dtype=dtype))
        self.finetune_lr = nn.Parameter(torch.full((d,), config.finetuning_lr_init, dtype=dtype))
        self.to(dtype)
        for weight in self.weights():
            nn.init.xavier_uniform_(weight)
        self.decoder_stddev_offset = math.sqrt(2.0 / (embedding_dim + n_way))

    # ----------------------------------------------------------------------------- helpers
    def weights(self) -> list[Tensor]:
        """The five weight matrices (L2-regularised; alpha and alpha_ft are not)."""
        return [
            self.g_e.weight,
            self.g_r[0].weight,
            self.g_r[2].weight,
            self.g_r[4].weight,
            self.g_d.weight,
        ]

    @property
    def dtype(self) -> torch.dtype:
        return self.g_e.weight.dtype

    @property
    def sampling(self) -> bool:
        """True when latents and weights are sampled (meta-training, not the deterministic
        ablation); otherwise the means are used and the KL is 0."""
        return self.training and not self.config.deterministic

    def dropout(self, x: Tensor) -> Tensor:
        """Dropout on embeddings, meta-training only (a fresh mask every call; masks are drawn
        by :func:`leo_tutorial.noise.dropout_mask`)."""
        return noise.dropout(x, self.config.dropout_rate) if self.training else x

    def check_inputs(self, support_x: Tensor, *others: Tensor) -> None:
        """Clear errors for tensors that do not fit this model."""
        for x in (support_x, *others):
            if x.dim() != 4:
                raise UserError(
                    f"expected embeddings [B, N, K, D], got shape {tuple(x.shape)}; "
                    "add the task axis with x.unsqueeze(0)"
                )
            if x.shape[-1] != self.embedding_dim:
                raise UserError(
                    f"embeddings are {x.shape[-1]}-d but the model was built for "
                    f"{self.embedding_dim}-d; build LEO(embedding_dim={x.shape[-1]})"
                )
            if x.shape[1] != self.n_way:
                raise UserError(
                    f"tasks are {x.shape[1]}-way but the model was built for "
                    f"{self.n_way}-way; build LEO(n_way={x.shape[1]})"
                )
            if x.dtype != self.dtype:
                raise UserError(
                    f"embeddings are {x.dtype} but the model is {self.dtype}; "
                    "convert with batch.to(dtype=model.dtype)"
                )

    # ------------------------------------------------------------------- encoding (eq. 3)
    def encoder(self, x: Tensor) -> Tensor:
        """g_e(dropout(x)): [B,N,K,D] -> [B,N,K,Z] (before the relation network of eq. 3)."""
        return self.g_e(self.dropout(x))

    def relation_network(self, h: Tensor) -> Tensor:
        """g_r on all (N K)^2 ordered pairs of codes, averaged over j: [B,N,K,Z] -> [B,N,K,2Z].

        Pair (i, j) is concat(h_i, h_j), self-pairs and cross-class pairs included (eq. 3
        before the per-class mean).
        """
        b, n, k, z = h.shape
        codes = h.reshape(b, n * k, z)  # [B, M, Z], M = N K
        left = codes[:, :, None, :].expand(b, n * k, n * k, z)  # h_i: [B, M, M, Z]
        right = codes[:, None, :, :].expand(b, n * k, n * k, z)  # h_j: [B, M, M, Z]
        pairs = self.g_r(torch.cat([left, right], dim=-1))  # [B, M, M, 2Z]
        return pairs.mean(dim=2).reshape(b, n, k, 2 * z)  # mean over j

    @staticmethod
    def average_codes_per_class(codes: Tensor) -> Tensor:
        """Mean over the K shots, tiled back to K slots: [B,N,K,C] -> [B,N,K,C] (eq. 3)."""
        return codes.mean(dim=2, keepdim=True).expand_as(codes)

    def gaussian_params(
        self, params: Tensor, stddev_offset: float
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Split [..., 2C] into mean and std = max(exp(u) - (1 - offset), 1e-10) (LEO_SPEC §2.3).

        Returns (mean, std, u) with u the raw second half.
        """
        mean, u = params.chunk(2, dim=-1)
        std, _ = floored_std(u, stddev_offset)
        return mean, std, u

    def possibly_sample(self, params: Tensor, stddev_offset: float = 0.0) -> tuple[Tensor, Tensor]:
        """Reparameterised sample of N(mean, std^2) and its one-sample KL to N(0, I) per task.

        params [B,...,2C] -> (value [B,...,C], kl [B]). Sampling only in meta-training (and not
        in the deterministic ablation); otherwise (mean, 0).
        """
        mean, std, _ = self.gaussian_params(params, stddev_offset)
        if not self.sampling:
            return mean, mean.new_zeros(mean.shape[0])
        sample = mean + std * torch.randn_like(std)  # pathwise gradients
        return sample, losses.kl_estimate(sample, mean, std)

    def forward_encoder(self, support_x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """z ~ q(z | D^tr) = N(mu^e, sigma^e) (eq. 3): [B,N,K,D] -> (z [B,N,K,Z], kl [B],
        codes [B,N,K,2Z]).

        With the random-prior ablation, z ~ N(0, I) (zeros at evaluation) and the encoder is
        not used.
        """
        b, n, k, _ = support_x.shape
        if self.config.random_prior:
            shape = (b, n, k, self.config.num_latents)
            codes = support_x.new_zeros(shape[:-1] + (2 * self.config.num_latents,))
            z = (
                torch.randn(shape, dtype=self.dtype, device=support_x.device)
                if self.sampling
                else support_x.new_zeros(shape)
            )
            return z, support_x.new_zeros(b), codes
        codes = self.average_codes_per_class(self.relation_network(self.encoder(support_x)))
        z, kl = self.possibly_sample(codes)
        return z, kl, codes

    # ------------------------------------------------------------------- decoding (eq. 4)
    def decoder(self, z: Tensor) -> Tensor:
        """g_d: [B,N,K,Z] -> parameters of p(w | z) [B,N,K,2D]."""
        return self.g_d(z)

    def predict(self, x: Tensor, W: Tensor) -> Tensor:
        """logits[b,i,j,l] = <dropout(x)_{b,i,j}, mean_m W_{b,l,m}>: x [B,N,Kx,D], W [B,N,K,D]
        -> [B,N,Kx,N]. No bias, no normalisation, no temperature (LEO_SPEC §2.4)."""
        return self._logits(self.dropout(x), W)

    @staticmethod
    def _logits(x: Tensor, W: Tensor) -> Tensor:
        """<x_{b,i,j}, mean_m W_{b,l,m}>: [B,N,Kx,D], [B,N,K,D] -> [B,N,Kx,N] (no dropout)."""
        return torch.einsum("bijd,bld->bijl", x, W.mean(dim=2))

    @staticmethod
    def loss_fn(logits: Tensor, labels: Tensor) -> Tensor:
        """Softmax cross-entropy per example: [B,N,Kx,N], [B,N,Kx] -> [B,N,Kx]."""
        return losses.cross_entropy(logits, labels)

    def forward_decoder(
        self, z: Tensor, support_x: Tensor, support_y: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Decode z into classifier weights W ~ p(w | z) and score the support set.

        Returns (support loss per example [B,N,K], W [B,N,K,D]). The decoder's own KL is not
        used (as in the official code).
        """
        W, _ = self.possibly_sample(self.decoder(z), self.decoder_stddev_offset)  # [B,N,K,D]
        return self.loss_fn(self.predict(support_x, W), support_y), W

    # ------------------------------------------------------------- adaptation in latent space
    def leo_inner_loop(self, support_x: Tensor, support_y: Tensor, z: Tensor) -> LatentAdaptation:
        """z' = z - alpha * grad_z sum L^tr(f_theta(z)), ``inner_unroll_length`` times.

        The latent update is unnumbered in the paper (§2.3.2); L^tr is eq. 5's summed support
        cross-entropy.

        alpha [Z] is learned per latent dimension; every step decodes a fresh weight sample and
        dropout mask; the meta-gradient flows through every step (second order, unless
        ``first_order``). The encoder penalty mean((z - stopgrad(z'))^2) is 0 at evaluation.
        Under ``torch.no_grad()`` the steps still take gradients, each on a detached z, and the
        trajectories come back detached.
        """
        meta = torch.is_grad_enabled()  # building a meta-gradient graph?
        create_graph = meta and not self.config.first_order
        with torch.enable_grad():
            if not (meta and z.requires_grad):
                z = z.detach().requires_grad_()
            loss, W = self.forward_decoder(z, support_x, support_y)  # [B,N,K], [B,N,K,D]
            zs, ws, support_losses = [z], [W], [loss]
            for _ in range(self.config.inner_unroll_length):
                grad = inner_gradient(loss, z, create_graph)  # [B,N,K,Z]
                z = z - self.inner_lr * grad  # alpha [Z] broadcasts
                if not meta:
                    z = z.detach().requires_grad_()
                loss, W = self.forward_decoder(z, support_x, support_y)
                zs.append(z)
                ws.append(W)
                support_losses.append(loss)
        penalty = losses.encoder_penalty(zs[0], z) if self.training else z.new_zeros(z.shape[0])
        keep = (lambda t: t) if meta else Tensor.detach
        return LatentAdaptation(
            SupportPass(loss, W),  # keeps its graph: fine-tuning differentiates loss w.r.t. W
            [keep(t) for t in zs],
            [keep(t) for t in ws],
            [keep(t.flatten(1).mean(1)) for t in support_losses],
            keep(penalty),
        )

    def finetuning_inner_loop(
        self, support_x: Tensor, support_y: Tensor, state: SupportPass
    ) -> tuple[SupportPass, list[Tensor]]:
        """W' = W - alpha_ft * grad_W sum L^tr(W), ``finetuning_unroll_length`` times.

        alpha_ft [D] (``finetune_lr``; no symbol in the paper, see docs/notation.md) is learned
        per embedding dimension; starts from the latent loop's last pass (same weight sample,
        its loss). Returns (last pass, mean support loss per task [B] after each step).
        """
        meta = torch.is_grad_enabled()
        create_graph = meta and not self.config.first_order
        loss, W = state.loss, state.W
        history = []
        with torch.enable_grad():
            for _ in range(self.config.finetuning_unroll_length):
                W = W - self.finetune_lr * inner_gradient(loss, W, create_graph)  # alpha_ft [D]
                if not meta:
                    W = W.detach().requires_grad_()
                loss = self.loss_fn(self.predict(support_x, W), support_y)  # [B,N,K]
                history.append(loss.flatten(1).mean(1))
        return SupportPass(loss, W), history if meta else [t.detach() for t in history]

    # --------------------------------------------------------------------- meta-objective
    def regularisers(self) -> tuple[Tensor, Tensor]:
        """(sum ||w||^2 / 2 over the weights, orthogonality of the decoder rows): unweighted."""
        return losses.l2_penalty(self.weights()), losses.orthogonality_penalty(self.g_d.weight.T)

    def meta_objective(
        self, query_loss: Tensor, kl: Tensor, penalty: Tensor, l2: Tensor, orthogonality: Tensor
    ) -> Tensor:
        """The meta-loss (eq. 6, 7): the mean over tasks of L^val + beta KL + gamma penalty
        (each [B]), plus lambda_1 L2 + lambda_2 orthogonality (scalars)."""
        c = self.config
        task = query_loss + c.kl_weight * kl + c.encoder_penalty_weight * penalty  # [B]
        return (
            task.mean() + c.l2_penalty_weight * l2 + c.orthogonality_penalty_weight * orthogonality
        )

    def forward(self, batch) -> LEOOutput:  # noqa: ANN001 (any object with the four fields)
        """Adapt to every task of ``batch`` and score its query set (meta-objective, eq. 6).

        ``batch`` has support_x [B,N,K,D], support_y [B,N,K], query_x [B,N,V,D], query_y [B,N,V]
        (a :class:`leo_tutorial.data.TaskBatch`); the meta-loss is :meth:`meta_objective`.
        """
        x, y, qx, qy = batch.support_x, batch.support_y, batch.query_x, batch.query_y
        self.check_inputs(x, qx)
        from . import fast  # the fused meta-step: the same numbers, faster (README)

        if fast.applies(self):
            return fast.forward(self, x, y, qx, qy)
        z, kl, codes = self.forward_encoder(x)
        latent = self.leo_inner_loop(x, y, z)
        state, history = self.finetuning_inner_loop(x, y, latent.state)
        query_logits = self.predict(qx, state.W)  # [B,N,V,N]
        query_loss = self.loss_fn(query_logits, qy).flatten(1).mean(1)  # [B]
        l2, orthogonality = self.regularisers()
        penalty = latent.encoder_penalty
        out = LEOOutput(
            loss=self.meta_objective(query_loss, kl, penalty, l2, orthogonality),
            query_loss=query_loss,
            query_accuracy=losses.accuracy(query_logits, qy),
            kl=kl,
            encoder_penalty=penalty,
            l2=l2,
            orthogonality=orthogonality,
            codes=codes,
            z=latent.z_trajectory[0],
            z_trajectory=latent.z_trajectory,
            query_logits=query_logits,
            support_losses=latent.support_losses + history,
            weights=latent.w_trajectory + [state.W],
        )
        return out if torch.is_grad_enabled() else out.detach()
