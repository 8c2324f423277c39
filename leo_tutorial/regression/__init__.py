"""LEO for 1-D few-shot regression: one task code generates a whole MLP (LEO_SPEC §5, paper §4.1).

The learner f_theta is a 1-40-40-1 ReLU MLP. All of its 1 761 parameters theta (weights *and*
biases) are generated from a single 16-d latent code z per task::

    support (x, y) [B,K,1]+[B,K,1] -> encoder g_e (per point) -> relation net g_r (all K^2 pairs)
        -> mean over pairs -> (mu, u) [B,2Z] -> z ~ N(mu, std(u))             (eq. 3, one code)
    z -> decoder g_d -> (mean, u) [B, 2*1761] -> theta ~ N(mean, std(u))        (eq. 4)
    z' = z - alpha * grad_z MSE^tr(f_theta(z)), T times (new theta sample each step) (§2.3.2)
    loss = MSE^val(f_theta(z')) + beta KL + gamma ||z - sg(z')||^2 + lambda_1 L2   (eq. 6)

Sizes follow the appendix table quoted in LEO_SPEC §5: encoder 3-layer MLP 2 -> 16 -> 16 -> 16,
relation net 32 -> 32 -> 32 -> 2*16, decoder 16 -> 32 -> 32 -> 2*1761, ReLU between layers and
none after the last. Standard deviations use the classification model's parameterisation
``std = max(exp(u) - (1 - offset), 1e-10)`` (:func:`leo_tutorial.model.floored_std`): offset 0
for z; for theta a Glorot-like offset per layer of f_theta, sqrt(2 / (fan_in + fan_out)) (our
reading; the classification decoder uses sqrt(2 / (D + N)) for its one layer). The KL is the
library's one-sample estimate (:func:`leo_tutorial.losses.kl_estimate`), the penalties come from
:mod:`leo_tutorial.losses` and the outer loop (Adam, official clipping, NaN guard) is
:func:`leo_tutorial.training.meta_train`, the same loop as the classification model's.

No regression code was released; where the paper is silent we chose (LEO_SPEC §10), and say so:

- losses are means over points (MSE); T = 5 latent steps; no fine-tuning in parameter space; no
  orthogonality penalty; 10 query points per task; beta = 0.1, gamma = 1e-3.
- **Biases** in g_e, g_r, g_d (``bias=True``), unlike the classification model and the spec's
  unverified recollection. Without them theta(z = 0) = 0 and u(z) cannot be negative everywhere,
  so the generated MLPs start as pure noise; in our runs the bias-free model stayed near the
  untrained query MSE (about 16) for hundreds of steps. The decoder's last bias starts at a
  Glorot-initialised MLP (mean half) with a std of 0.1x Glorot (u half).
- **The inner gradient is clipped per task** to norm 20 (``inner_grad_norm``). With an MSE loss
  the support gradient grows with the residual, and the residual with exp(u(z)): without the
  clip, single tasks diverge to inf/NaN (in training, and after 2 000 steps still at
  evaluation). With the defaults, norms 5 / 20 / 50 gave a held-out query MSE of 1.89 / 1.21 /
  0.93 (mean over 500 tasks) and 0.31 / 0.29 / 0.33 (median).

Following the spec's (unverified) recollection of the paper, **z and theta are sampled at
training and at evaluation time alike**: ``model.eval()`` changes nothing, and predictions are
random draws from the model (seed them for reproducible figures).
``RegressionConfig(deterministic=True)`` uses the means instead (for checks).

The package splits where the jobs split: :mod:`.learner` (the functional MLP f_theta),
:mod:`.model` (:class:`RegressionLEO` and its config), :mod:`.training` (meta-training and
held-out evaluation), :mod:`.analysis` (functions for the paper's Fig. 2) and
:mod:`.checkpoint` (saving, loading, the shipped model).
"""

from .analysis import (
    FunctionSamples,
    closer_to_line,
    line_fraction,
    predict_on_grid,
    sample_functions,
    support_loss_per_step,
)
from .checkpoint import load_regression, save_regression, shipped_checkpoint
from .learner import (
    clip_per_task,
    glorot_offsets,
    mlp,
    mlp_forward,
    mse,
    theta_layout,
    theta_size,
    unflatten_theta,
)
from .model import RegressionAdaptation, RegressionConfig, RegressionLEO, RegressionOutput
from .training import RegressionTrainResult, evaluate_regression, train_regression

__all__ = [
    "FunctionSamples",
    "RegressionAdaptation",
    "RegressionConfig",
    "RegressionLEO",
    "RegressionOutput",
    "RegressionTrainResult",
    "clip_per_task",
    "closer_to_line",
    "evaluate_regression",
    "glorot_offsets",
    "line_fraction",
    "load_regression",
    "mlp",
    "mlp_forward",
    "mse",
    "predict_on_grid",
    "sample_functions",
    "save_regression",
    "shipped_checkpoint",
    "support_loss_per_step",
    "theta_layout",
    "theta_size",
    "train_regression",
    "unflatten_theta",
]
