"""Baselines: exact maths on hand-made tasks, second-order meta-gradients, and short real runs."""

import numpy as np
import pytest
import torch
from _tasks import random_batch

from leo_tutorial.baselines import (
    MAML,
    BaselineConfig,
    LogisticRegressionProbe,
    MetaSGD,
    NearestCentroid,
    ProtoNet,
    linear_logits,
    linear_support_gradient,
)
from leo_tutorial.compare import fit
from leo_tutorial.config import LEOConfig, TrainConfig
from leo_tutorial.data import SyntheticConfig, make_synthetic_bank
from leo_tutorial.errors import UserError

F64 = torch.float64


def test_nearest_centroid_scores_minus_squared_distance_to_class_means():
    batch = random_batch(b=2, n=3, k=4, v=5, d=6)
    logits = NearestCentroid(embedding_dim=6, n_way=3, dtype=F64)(batch).query_logits
    centroids = batch.support_x.mean(dim=2)  # [B, N, D]
    expected = -((batch.query_x[:, :, :, None, :] - centroids[:, None, None]) ** 2).sum(-1)
    torch.testing.assert_close(logits, expected)


def test_linear_support_gradient_is_the_autograd_gradient_of_the_summed_cross_entropy():
    batch = random_batch(b=2, n=4, k=3, d=7)
    W = torch.randn(2, 4, 7, dtype=F64, requires_grad=True)
    loss = torch.nn.functional.cross_entropy(
        linear_logits(batch.support_x, W).reshape(-1, 4),
        batch.support_y.reshape(-1),
        reduction="sum",
    )
    (expected,) = torch.autograd.grad(loss, W)
    torch.testing.assert_close(
        linear_support_gradient(batch.support_x, batch.support_y, W), expected
    )


def _meta_loss(model, batch):
    return model(batch).loss


@pytest.mark.parametrize("cls", [MAML, MetaSGD])
def test_maml_and_meta_sgd_meta_gradients_are_second_order(cls):
    """Autograd through the closed-form inner loop = central finite differences of the
    meta-loss (float64); dropping the second-order terms gives a clearly different gradient."""
    torch.manual_seed(0)
    batch = random_batch(b=2, n=3, k=2, v=3, d=5)
    config = BaselineConfig(inner_unroll_length=3, inner_lr_init=2.0)
    model = cls(config, embedding_dim=5, n_way=3, dtype=F64)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    params = list(model.parameters())
    grads = torch.autograd.grad(_meta_loss(model, batch), params)
    eps = 1e-6
    for p, g in zip(params, grads, strict=True):
        numeric = torch.zeros_like(p)
        flat = p.data.view(-1)
        for i in range(flat.numel()):
            old = flat[i].item()
            flat[i] = old + eps
            plus = _meta_loss(model, batch).item()
            flat[i] = old - eps
            minus = _meta_loss(model, batch).item()
            flat[i] = old
            numeric.view(-1)[i] = (plus - minus) / (2 * eps)
        torch.testing.assert_close(g, numeric, rtol=1e-6, atol=1e-8)
    first_order = cls(config.replace(first_order=True), embedding_dim=5, n_way=3, dtype=F64)
    first_order.load_state_dict(model.state_dict())
    fo_grads = torch.autograd.grad(_meta_loss(first_order, batch), list(first_order.parameters()))
    gap = max((a - b).abs().max().item() for a, b in zip(grads, fo_grads, strict=True))
    assert gap > 1e-3  # the second-order terms matter here


def test_maml_learning_rate_is_fixed_and_meta_sgd_has_one_per_weight():
    assert [n for n, _ in MAML(embedding_dim=8, n_way=5).named_parameters()] == ["w_init"]
    meta_sgd = MetaSGD(BaselineConfig(inner_lr_init=0.5), embedding_dim=8, n_way=5)
    assert meta_sgd.inner_lr.shape == (5, 8) and torch.all(meta_sgd.inner_lr == 0.5)
    assert meta_sgd.adapt(torch.zeros(2, 5, 1, 8), torch.zeros(2, 5, 1, dtype=torch.long))[
        0
    ].shape == (2, 5, 8)


def test_logistic_regression_probe_in_the_support_span_equals_the_full_fit():
    """Fitting in the coordinates of the support span (representer theorem) changes nothing."""
    from sklearn.linear_model import LogisticRegression

    batch = random_batch(b=2, n=3, k=2, v=4, d=30)
    probe = LogisticRegressionProbe(
        BaselineConfig(probe_c=10.0), embedding_dim=30, n_way=3, dtype=F64
    )
    logits = probe(batch).query_logits
    for t in range(2):
        full = LogisticRegression(C=10.0, max_iter=10000, tol=1e-12).fit(
            batch.support_x[t].reshape(-1, 30).numpy(), batch.support_y[t].reshape(-1).numpy()
        )
        expected = full.decision_function(batch.query_x[t].reshape(-1, 30).numpy())
        # the same optimum up to lbfgs's stopping tolerance (scikit-learn's default, 1e-4)
        np.testing.assert_allclose(logits[t].reshape(-1, 3).numpy(), expected, atol=2e-2)
        assert (logits[t].reshape(-1, 3).argmax(-1).numpy() == expected.argmax(-1)).all()


def test_baselines_reject_tasks_of_the_wrong_shape():
    with pytest.raises(UserError, match="5-way tasks of 8-d"):
        ProtoNet(embedding_dim=8, n_way=5)(random_batch(n=5, d=7, dtype=torch.float32))
    with pytest.raises(UserError, match="projection_dim"):
        BaselineConfig(projection_dim=0)


@pytest.fixture(scope="module")
def small_bank():
    """Signal in an 8-d subspace of 64-d, noise everywhere: a projection or a per-task
    classifier must find the subspace."""
    return make_synthetic_bank(
        SyntheticConfig(
            n_train_classes=20,
            n_val_classes=8,
            n_test_classes=8,
            images_per_class=30,
            dim=64,
            subspace_dim=8,
            class_scale=1.0,
        )
    )


@pytest.fixture(scope="module")
def fitted(small_bank):
    tc = TrainConfig(
        k_shot=5,
        n_query=10,
        batch_size=8,
        steps=150,
        val_every=50,
        val_tasks=40,
        test_tasks=60,
        eval_n_query=10,
        seed=0,
    )
    results = {}
    for name in ("nearest-centroid", "logreg", "protonet", "maml", "meta-sgd"):
        model, info = fit(
            name, small_bank, tc, LEOConfig(), BaselineConfig(outer_lr=3e-3), torch.device("cpu")
        )
        results[name] = (model, info)
    return results


def test_every_baseline_beats_chance_clearly(fitted):
    for name, (_, info) in fitted.items():
        assert info["val_accuracy"] > 0.5, name  # chance 0.2


def test_protonet_projection_learns_more_than_the_raw_centroids(fitted):
    protonet, info = fitted["protonet"]
    assert info["best_step"] > 0  # training helped on S^val
    assert info["val_accuracy"] > fitted["nearest-centroid"][1]["val_accuracy"] + 0.03


def test_meta_sgd_learns_its_learning_rates(fitted):
    model, info = fitted["meta-sgd"]
    assert info["best_step"] > 0
    assert info["inner_lr_init"] in (0.01, 0.1, 1.0, 10.0)  # chosen on S^val first
    assert not torch.allclose(
        model.inner_lr, torch.full_like(model.inner_lr, info["inner_lr_init"])
    )
    assert fitted["logreg"][1]["probe_c"] in (0.1, 1.0, 10.0, 100.0)
