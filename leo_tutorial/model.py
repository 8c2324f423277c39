"""LEO for N-way K-shot classification, batched over tasks (LEO_SPEC §2).

One method per step of the algorithm, in the order the data flows::

    support_x [B,N,K,D] -> encoder -> relation_network -> average_codes_per_class
        -> possibly_sample -> z [B,N,K,Z]                              (forward_encoder)
    z -> decoder -> possibly_sample -> W [B,N,K,D] -> predict -> loss_fn (forward_decoder)
    z -> z' = z - alpha * grad_z L^tr, T times                          (leo_inner_loop)
    W -> W' = W - eta * grad_W L^tr, T' times                           (finetuning_inner_loop)
    query loss with W' + beta * KL + gamma * penalty + regularisers     (forward)

Every tensor carries the task batch first, so one call adapts and evaluates B tasks with
tensor operations only. ``model.train()`` gives the official meta-training semantics (sampling,
dropout, KL, encoder penalty); ``model.eval()`` the evaluation ones (means, no dropout, KL = 0,
penalty = 0: fully deterministic).

Inner-loop gradients are computed in closed form by default (``inner_gradient="analytic"``):
d(sum CE)/dlogits = softmax - onehot, pushed back through the linear classifier, the sampling
and the decoder with ordinary differentiable operations. Autograd then differentiates *through*
these expressions, which gives the exact second-order meta-gradient without double backward;
``inner_gradient="autograd"`` computes the same numbers with ``torch.autograd.grad``.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import losses
from .config import LEOConfig
from .errors import UserError

STD_FLOOR = 1e-10  # official lower bound on every standard deviation
DROPOUT_LEVELS = 2**16  # dropout keep probabilities are multiples of 1 / DROPOUT_LEVELS


def inverted_dropout(x: Tensor, rate: float) -> Tensor:
    """Zero each element of x with probability ``rate`` and scale the rest by 1 / (1 - rate).

    Same distribution as ``F.dropout(x, rate)``, about 4x faster on CPU: instead of one
    ``bernoulli_`` draw per element, every 64-bit random word gives four uniform 16-bit
    integers, and an element is dropped when its integer falls among the lowest
    ``round(rate * 2**16)`` of the 2**16 values. So the rate is rounded to a multiple of 2**-16
    (an error below 7.7e-6; 0.5 and the other multiples are exact) and the kept elements are
    scaled by 1 / (1 - rounded rate): E[inverted_dropout(x)] = x holds exactly.
    """
    dropped = min(round(rate * DROPOUT_LEVELS), DROPOUT_LEVELS - 1)
    if dropped == 0:
        return x
    n = x.numel()
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device)
    bits = words.random_(-(2**63), None).view(torch.int16)  # uniform int16, n rounded up to 4
    # keep = 1.0 where bits >= dropped - 2**15, else 0.0: bits are integers, so clamping
    # bits - (threshold - 1) to [0, 1] gives exactly 0 or 1 (faster than a bool mask on CPU).
    keep = bits.to(x.dtype).sub_(dropped - DROPOUT_LEVELS // 2 - 1).clamp_(0, 1)
    keep = keep if keep.numel() == n else keep[:n]
    return (x * keep.view(x.shape)).mul_(DROPOUT_LEVELS / (DROPOUT_LEVELS - dropped))


def floored_std(u: Tensor, stddev_offset: float) -> tuple[Tensor, Tensor]:
    """(std = max(exp(u) - (1 - offset), 1e-10), exp(u)), elementwise (LEO_SPEC §2.3).

    ``F.threshold(v, c, c)`` is max(v, c), with a one-kernel backward (clamp's takes two).
    """
    exp_u = torch.exp(u)
    return F.threshold(exp_u - (1.0 - stddev_offset), STD_FLOOR, STD_FLOOR), exp_u


def mean_over_shots(W: Tensor) -> Tensor:
    """[B,N,K,D] -> [B,N,D]; for K = 1 a view (the same numbers, without a reduction kernel)."""
    return W.squeeze(2) if W.shape[2] == 1 else W.mean(dim=2)


@dataclass
class SupportPass:
    """One evaluation of the support loss for classifier weights W (internal bookkeeping).

    loss [B,N,K] per example; W [B,N,K,D]; for the analytic gradient also the logits
    [B,N,K,N], the (dropped-out) inputs [B,N,K,D] behind them and dW/du [B,N,K,D] of the
    sampling step (None when W are means).
    """

    loss: Tensor
    W: Tensor
    labels: Tensor
    logits: Tensor | None = None
    x: Tensor | None = None
    dW_du: Tensor | None = None


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
    w_init, w_adapted (after the latent loop), w [B,N,K,D] (after fine-tuning); w_trajectory:
    the T+1 weight samples decoded along the latent loop [B,N,K,D];
    support_losses: mean support loss per task [B] before and after every inner and fine-tuning
    step; query_logits [B,N,V,N].
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
    w_init: Tensor
    w_trajectory: list[Tensor]
    w_adapted: Tensor
    w: Tensor
    query_logits: Tensor
    support_losses: list[Tensor] = field(default_factory=list)

    def training_metrics(self) -> dict[str, float]:
        """What the training loop logs for this step: means over the batch's tasks."""
        terms = {
            "loss": self.query_loss,
            "accuracy": self.query_accuracy,
            "kl": self.kl,
            "encoder_penalty": self.encoder_penalty,
        }
        return {name: t.detach().mean().item() for name, t in terms.items()}


class LEO(nn.Module):
    """Latent Embedding Optimization (Rusu et al., 2019), faithful to the official code.

    Parameters (all weights bias-free, Glorot-uniform; LEO_SPEC §2.1): ``g_e`` encoder D -> Z,
    ``g_r`` relation network 2Z -> 2Z -> 2Z -> 2Z (ReLU between, none at the end), ``g_d``
    decoder Z -> 2D, ``inner_lr`` alpha [Z], ``finetune_lr`` eta [D].

    ``embedding_dim`` (D) and ``n_way`` (N) are fixed at construction: they size the parameters
    and the decoder's std offset sqrt(2 / (D + N)). Any K and any number of queries work.
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
        """The five weight matrices (L2-regularised; alpha and eta are not)."""
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
        """Dropout on embeddings, meta-training only (fresh mask every call)."""
        return inverted_dropout(x, self.config.dropout_rate) if self.training else x

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

        Pair input = concat(h_i, h_j), self-pairs and cross-class pairs included (eq. 3 before
        the per-class mean). Computed without materialising the concatenation: the first layer
        splits into W_left h_i + W_right h_j, and the mean over j moves before the last, linear
        layer (both exact).
        """
        b, n, k, z = h.shape
        codes = h.reshape(b, n * k, z)
        first, second, last = self.g_r[0].weight, self.g_r[2].weight, self.g_r[4].weight
        left = codes @ first[:, :z].T  # [B, M, 2Z], contribution of h_i
        right = codes @ first[:, z:].T  # [B, M, 2Z], contribution of h_j
        pairs = torch.relu(left[:, :, None, :] + right[:, None, :, :])  # [B, M(i), M(j), 2Z]
        pairs = torch.relu(pairs @ second.T)
        return (pairs.mean(dim=2) @ last.T).reshape(b, n, k, 2 * z)

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

    def _sample(
        self, params: Tensor, stddev_offset: float, with_kl: bool = True
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """(value, kl [B] or None when not ``with_kl``, d value / d u or None).

        See :meth:`possibly_sample`; the decoder skips the KL nobody uses.
        """
        mean, u = params.chunk(2, dim=-1)
        std, exp_u = floored_std(u, stddev_offset)
        if not self.sampling:
            return mean, mean.new_zeros(mean.shape[0]) if with_kl else None, None
        noise = torch.randn_like(std)
        sample = torch.addcmul(mean, std, noise)  # mean + std * noise
        kl = losses.kl_estimate(sample, mean, std) if with_kl else None
        # d sample / du = noise * d std / du = noise * exp(u) above the floor, 0 on it; the
        # mask sign(std - 1e-10) is exactly 1 or 0 and piecewise constant (no graph needed).
        with torch.no_grad():
            noise_above_floor = noise * torch.sign(std - STD_FLOOR)
        return sample, kl, exp_u * noise_above_floor

    def possibly_sample(self, params: Tensor, stddev_offset: float = 0.0) -> tuple[Tensor, Tensor]:
        """Reparameterised sample of N(mean, std^2) and its one-sample KL to N(0, I) per task.

        params [B,...,2C] -> (value [B,...,C], kl [B]). Sampling only in meta-training (and not
        in the deterministic ablation); otherwise (mean, 0).
        """
        value, kl, _ = self._sample(params, stddev_offset)
        return value, kl  # type: ignore[return-value]

    def forward_encoder(self, support_x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """z ~ q(z | D^tr) = N(mu^n, sigma^n) (eq. 3): [B,N,K,D] -> (z [B,N,K,Z], kl [B],
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
        # einsum("bijd,bld->bijl", x, W.mean(2)) as one bmm (einsum and @ add several ops),
        # computed as (W x^T)^T: on CPU that bmm and its backward are faster than x W^T's.
        b, n, k, d = x.shape
        logits_t = torch.bmm(mean_over_shots(W), x.reshape(b, n * k, d).transpose(1, 2))
        return logits_t.transpose(1, 2).contiguous().view(b, n, k, -1)

    @staticmethod
    def loss_fn(logits: Tensor, labels: Tensor) -> Tensor:
        """Softmax cross-entropy per example: [B,N,Kx,N], [B,N,Kx] -> [B,N,Kx]."""
        return losses.cross_entropy(logits, labels)

    def _support_pass(
        self, x: Tensor, y: Tensor, W: Tensor, dW_du: Tensor | None = None
    ) -> SupportPass:
        if self.config.inner_gradient == "autograd":
            return SupportPass(self.loss_fn(self.predict(x, W), y), W, y)
        x = self.dropout(x)
        logits = self._logits(x, W)
        return SupportPass(self.loss_fn(logits, y), W, y, logits, x, dW_du)

    def _decode(self, z: Tensor, x: Tensor, y: Tensor) -> SupportPass:
        params = self.decoder(z)
        if self.config.inner_gradient == "autograd":
            W, _ = self.possibly_sample(params, self.decoder_stddev_offset)
            return self._support_pass(x, y, W)
        W, _, dW_du = self._sample(params, self.decoder_stddev_offset, with_kl=False)
        return self._support_pass(x, y, W, dW_du)

    def forward_decoder(
        self, z: Tensor, support_x: Tensor, support_y: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Decode z into classifier weights W ~ p(w | z) and score the support set.

        Returns (support loss per example [B,N,K], W [B,N,K,D]). The decoder's own KL is not
        used (as in the official code).
        """
        state = self._decode(z, support_x, support_y)
        return state.loss, state.W

    # --------------------------------------------------------------------- inner gradients
    def _gradient(self, state: SupportPass, wrt: Tensor, create_graph: bool) -> Tensor:
        """d(sum of support CE)/d``wrt``, where ``wrt`` is the z or the W behind ``state``.

        Analytic: dL/dW for each of the K weight samples of a class is 1/K of the class
        gradient (the logits average them); for z it continues through the sampling step
        (dW/du) and the linear decoder.
        """
        if self.config.inner_gradient == "autograd":
            (grad,) = torch.autograd.grad(state.loss.sum(), wrt, create_graph=create_graph)
            return grad
        g_logits = losses.cross_entropy_grad(state.logits, state.labels)  # [B, N, Kx, N]
        b, n, k, d = state.W.shape
        # einsum("bijl,bijd->bld", g_logits, x) as one bmm: [B, N, D]
        g_class = torch.bmm(g_logits.reshape(b, -1, n).transpose(1, 2), state.x.reshape(b, -1, d))
        grad = (g_class / k if k > 1 else g_class).unsqueeze(2)  # [B,N,1,D], same for all K
        if wrt is state.W:
            grad = grad.expand_as(state.W)
        else:  # chain rule back to z through params = [mean, u] = z @ g_d.weight.T
            w_mean, w_u = self.g_d.weight.split(d)  # [D, Z] each
            grad_mean = grad @ w_mean  # [B, N, 1, Z]: the mean half, shared by the K samples
            if state.dW_du is None:  # W are the means
                grad = grad_mean.expand_as(wrt)
            else:  # + the u half, through W = mean + std(u) * noise: [B, N, K, Z]
                grad = grad_mean + (grad * state.dW_du) @ w_u
        return grad if create_graph else grad.detach()

    def _inner_context(self) -> tuple[contextlib.AbstractContextManager, bool]:
        """(context to run an inner loop in, whether a meta-gradient graph is being built).

        Under ``torch.no_grad()`` (evaluation) no graph is built; the autograd reference path
        still needs gradients locally, so it runs under ``enable_grad`` on detached leaves.
        """
        meta = torch.is_grad_enabled()
        if self.config.inner_gradient == "autograd":
            return torch.enable_grad(), meta
        return contextlib.nullcontext(), meta

    def _leaf(self, t: Tensor, meta: bool) -> Tensor:
        """Autograd path only: make ``t`` a leaf when no meta-gradient flows through it."""
        if self.config.inner_gradient == "autograd" and (not meta or not t.requires_grad):
            return t.detach().requires_grad_()
        return t

    # ------------------------------------------------------------------ adaptation in latent space
    def leo_inner_loop(self, support_x: Tensor, support_y: Tensor, z: Tensor) -> LatentAdaptation:
        """z' = z - alpha * grad_z sum L^tr(f_theta(z)), ``inner_unroll_length`` times.

        alpha [Z] is learned per latent dimension; every step decodes a fresh weight sample and
        dropout mask; the meta-gradient flows through every step (second order, unless
        ``first_order``). The encoder penalty mean((z - stopgrad(z'))^2) is 0 at evaluation.
        """
        context, meta = self._inner_context()
        create_graph = meta and not self.config.first_order
        with context:
            z = self._leaf(z, meta)
            trajectory, states = [z], [self._decode(z, support_x, support_y)]
            for _ in range(self.config.inner_unroll_length):
                grad = self._gradient(states[-1], z, create_graph)
                z = self._leaf(z - self.inner_lr * grad, meta)
                trajectory.append(z)
                states.append(self._decode(z, support_x, support_y))
        penalty = (
            losses.encoder_penalty(trajectory[0], z) if self.training else z.new_zeros(z.shape[0])
        )
        return LatentAdaptation(
            states[-1],
            trajectory,
            [s.W for s in states],
            [s.loss.flatten(1).mean(1) for s in states],
            penalty,
        )

    def finetuning_inner_loop(
        self, support_x: Tensor, support_y: Tensor, state: SupportPass
    ) -> tuple[SupportPass, list[Tensor]]:
        """W' = W - eta * grad_W sum L^tr(W), ``finetuning_unroll_length`` times.

        eta [D] is learned per embedding dimension; starts from the latent loop's last pass
        (same weight sample). Returns (last pass, mean support loss per task [B] after each step).
        """
        context, meta = self._inner_context()
        create_graph = meta and not self.config.first_order
        history = []
        with context:
            for _ in range(self.config.finetuning_unroll_length):
                W = state.W
                leaf = self._leaf(W, meta)
                if leaf is not W:  # autograd path without a graph into W: re-score on a leaf
                    W, state = leaf, self._support_pass(support_x, support_y, leaf)
                W = W - self.finetune_lr * self._gradient(state, W, create_graph)
                state = self._support_pass(support_x, support_y, W)
                history.append(state.loss.flatten(1).mean(1))
        return state, history

    # --------------------------------------------------------------------- meta-objective
    def regularisers(self) -> tuple[Tensor, Tensor]:
        """(sum ||w||^2 / 2 over the weights, orthogonality of the decoder rows): unweighted."""
        return losses.l2_penalty(self.weights()), losses.orthogonality_penalty(self.g_d.weight.T)

    def forward(self, batch) -> LEOOutput:  # noqa: ANN001 (any object with the four fields)
        """Adapt to every task of ``batch`` and score its query set (meta-objective, LEO_SPEC §2.7).

        ``batch`` has support_x [B,N,K,D], support_y [B,N,K], query_x [B,N,V,D], query_y [B,N,V]
        (a :class:`leo_tutorial.data.TaskBatch`). The meta-loss is the mean over tasks of
        L^val + beta KL + gamma penalty, plus lambda_1 L2 + lambda_2 orthogonality.
        """
        x, y, qx, qy = batch.support_x, batch.support_y, batch.query_x, batch.query_y
        self.check_inputs(x, qx)
        z, kl, codes = self.forward_encoder(x)
        latent = self.leo_inner_loop(x, y, z)
        state, history = self.finetuning_inner_loop(x, y, latent.state)
        query_logits = self.predict(qx, state.W)
        query_loss = self.loss_fn(query_logits, qy).flatten(1).mean(1)
        l2, orthogonality = self.regularisers()
        c, penalty = self.config, latent.encoder_penalty
        loss = (
            (query_loss + c.kl_weight * kl + c.encoder_penalty_weight * penalty).mean()
            + c.l2_penalty_weight * l2
            + c.orthogonality_penalty_weight * orthogonality
        )
        return LEOOutput(
            loss=loss,
            query_loss=query_loss,
            query_accuracy=losses.accuracy(query_logits, qy),
            kl=kl,
            encoder_penalty=penalty,
            l2=l2,
            orthogonality=orthogonality,
            codes=codes,
            z=latent.z_trajectory[0],
            z_trajectory=latent.z_trajectory,
            w_init=latent.w_trajectory[0],
            w_trajectory=latent.w_trajectory,
            w_adapted=latent.state.W,
            w=state.W,
            query_logits=query_logits,
            support_losses=latent.support_losses + history,
        )
