"""The official model tests (LEO_SPEC §6) in PyTorch form, plus gradient and equation checks."""

import math

import pytest
import torch
from _tasks import random_batch, task

from leo_tutorial import LEO, LEOConfig, UserError, losses

# The official test configuration (model_test.get_test_config).
TEST_CONFIG = LEOConfig(
    inner_unroll_length=3,
    finetuning_unroll_length=4,
    inner_lr_init=0.1,
    finetuning_lr_init=0.2,
    num_latents=1,
    dropout_rate=0.3,
    kl_weight=0.01,
    encoder_penalty_weight=0.01,
    l2_penalty_weight=0.01,
    orthogonality_penalty_weight=0.01,
)


def make(config=TEST_CONFIG, d=4, n=5, dtype=torch.float64, seed=0, **changes):
    torch.manual_seed(seed)
    return LEO(
        config.replace(**changes) if changes else config, embedding_dim=d, n_way=n, dtype=dtype
    )


def official_problem(n=5, k=7, d=4, dtype=torch.float64):
    """_random_problem_instance: inputs U[0, 1), and the query set is the support set."""
    g = torch.Generator().manual_seed(1)
    x = torch.rand(1, n, k, d, generator=g, dtype=dtype)
    y = torch.arange(n).view(1, n, 1).expand(1, n, k).clone()
    from types import SimpleNamespace

    return SimpleNamespace(support_x=x, support_y=y, query_x=x, query_y=y)


# ----------------------------------------------------------------------------- official tests
def test_trainable_parameters_are_exactly_the_official_ones():
    model = make(LEOConfig(), d=640)
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    assert shapes == {
        "g_e.weight": (64, 640),  # encoder, no bias
        "g_r.0.weight": (128, 128),
        "g_r.2.weight": (128, 128),
        "g_r.4.weight": (128, 128),
        "g_d.weight": (1280, 64),  # decoder
        "inner_lr": (64,),  # alpha, per latent dimension
        "finetune_lr": (640,),  # eta, per embedding dimension
    }
    assert torch.all(model.inner_lr == 1.0) and torch.all(model.finetune_lr == 1e-3)
    assert len(model.weights()) == 5  # what L2 acts on: not alpha, not eta
    # Glorot-uniform bound sqrt(6 / (fan_in + fan_out)).
    assert model.g_d.weight.abs().max() <= math.sqrt(6 / (64 + 1280))


def _mock_everything(model, monkeypatch):
    """mockify_everything(mock_finetuning=True, mock_encdec=True) of the official tests."""

    def identity(x, *args, **kwargs):
        return x

    for name in ("encoder", "relation_network", "average_codes_per_class", "decoder", "loss_fn"):
        monkeypatch.setattr(model, name, identity)
    monkeypatch.setattr(
        model, "possibly_sample", lambda p, offset=0.0: (p, p.new_zeros(p.shape[0]))
    )
    monkeypatch.setattr(model, "predict", lambda x, w: x * w**2)
    monkeypatch.setattr(model, "finetuning_inner_loop", lambda x, y, state: (state, []))
    monkeypatch.setattr(model, "regularisers", lambda: (torch.tensor(0.0), torch.tensor(0.0)))


@pytest.mark.parametrize("training", [False, True])
def test_inner_loop_adaptation_gives_0_032(monkeypatch, training):
    """z: 4 -> 4 - 0.1 * 2 * 4 * 4 = 0.8 -> 0.16 -> 0.032 (3 steps, alpha 0.1, dL/dz = 2 z x)."""
    model = make(d=1, n=2, dropout_rate=0.0)
    _mock_everything(model, monkeypatch)  # mocked steps: forward runs the reference
    model.train(training)
    x = torch.full((1, 2, 1, 1), 4.0, dtype=torch.float64)
    y = torch.zeros(1, 2, 1, dtype=torch.int64)
    z, _, _ = model.forward_encoder(x)
    assert torch.equal(z, x)  # latents start at the encoder output
    adapted = model.leo_inner_loop(x, y, z)
    values = [t.flatten()[0].item() for t in adapted.z_trajectory]
    assert values == pytest.approx([4.0, 0.8, 0.16, 0.032], abs=1e-12)
    # The meta-loss is the mean query loss of the adapted weights (+ the encoder penalty when
    # meta-training; every other term is 0 here).
    from types import SimpleNamespace

    query = SimpleNamespace(support_x=x, support_y=y, query_x=torch.ones_like(x), query_y=y)
    out = model(query)
    penalty = 0.01 * (4 - 0.032) ** 2 if training else 0.0  # gamma * mean((z - sg(z'))^2)
    assert out.loss.item() == pytest.approx(0.032**2 + penalty, abs=1e-12)


def test_batched_tasks_are_independent_and_equal_to_one_at_a_time():
    """test_map_input: different problems give different outputs; batching changes nothing."""
    model = make(LEOConfig(num_latents=3, dropout_rate=0.3), d=6).eval()
    batch = random_batch(b=4, n=5, k=2, v=3, d=6)
    with torch.no_grad():
        out = model(batch)
        singles = [model(task(batch, i)) for i in range(4)]
    assert (out.query_loss[0] - out.query_loss[1]).abs() > 1e-3
    for i, single in enumerate(singles):
        torch.testing.assert_close(out.query_logits[i], single.query_logits[0])
        torch.testing.assert_close(out.z_trajectory[-1][i], single.z_trajectory[-1][0])


def test_meta_gradient_of_a_batch_is_the_mean_of_per_task_meta_gradients():
    model = make(LEOConfig(num_latents=3, dropout_rate=0.0, deterministic=True), d=6).train()
    batch = random_batch(b=3, n=5, k=2, v=3, d=6)
    params = list(model.parameters())
    batched = torch.autograd.grad(model(batch).loss, params)
    singles = [torch.autograd.grad(model(task(batch, i)).loss, params) for i in range(3)]
    for j, g in enumerate(batched):
        torch.testing.assert_close(g, sum(s[j] for s in singles) / 3)


def test_train_and_eval_semantics():
    """test_setting_is_meta_training + test_possibly_sample + test_encoder_penalty."""
    model = make(d=4)
    batch = official_problem()
    model.eval()
    with torch.no_grad():
        a, b = model(batch), model(batch)
    torch.testing.assert_close(a.loss, b.loss, rtol=0, atol=0)  # deterministic
    assert torch.all(a.kl == 0) and torch.all(a.encoder_penalty == 0)
    model.train()
    c, d = model(batch), model(batch)
    assert torch.all(c.kl != 0)
    assert torch.all(c.encoder_penalty > 1e-3)
    assert not torch.equal(c.query_logits, d.query_logits)


def test_possibly_sample_parameterisation_and_randomness():
    model = make(d=4).eval()
    mean = torch.tensor([[0.5, -1.0]], dtype=torch.float64)
    u = torch.tensor([[0.0, 1.0]], dtype=torch.float64)
    params = torch.cat([mean, u], dim=-1)
    value, kl = model.possibly_sample(params)
    assert torch.equal(value, mean) and kl.item() == 0.0
    # std = max(exp(u) - (1 - offset), 1e-10): offset 0 -> exp(u) - 1, floored.
    _, std, _ = model.gaussian_params(params, 0.0)
    assert std.flatten().tolist() == pytest.approx([1e-10, math.e - 1])
    offset = model.decoder_stddev_offset
    assert offset == pytest.approx(math.sqrt(2 / (4 + 5)))
    _, std, _ = model.gaussian_params(torch.zeros(1, 4, dtype=torch.float64), offset)
    assert std.flatten().tolist() == pytest.approx([offset, offset])
    model.train()
    torch.manual_seed(0)
    big = torch.randn(1, 5, 7, 8, dtype=torch.float64)  # like the official test on tr_input
    s1, kl1 = model.possibly_sample(big)
    s2, _ = model.possibly_sample(big)
    assert abs((s1 - s2).sum().item()) > 1e-3 and kl1.item() != 0.0


def test_finetuning_improves_the_support_loss():
    model = make(d=4).eval()
    batch = official_problem()
    with torch.no_grad():
        out = model(batch)
    before, after = out.support_losses[TEST_CONFIG.inner_unroll_length], out.support_losses[-1]
    assert before.item() - 1e-3 > after.item()


def test_inputs_receive_no_gradient_and_shapes_are_checked():
    model = make(d=4).train()
    batch = official_problem()
    model(batch).loss.backward()
    assert batch.support_x.grad is None
    assert model.embedding_dim == 4
    with pytest.raises(UserError, match="13-d but the model was built for 4-d"):
        model(official_problem(5, 6, 13))
    with pytest.raises(UserError, match="3-way"):
        model(official_problem(3, 6, 4))
    with pytest.raises(UserError, match="float32"):
        model(official_problem(dtype=torch.float32))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_float32_and_float64(dtype):
    """test_construct_float32_leo_graph on a (7, 5, 17) problem. Inputs are unit-norm as in
    real episodes: on the official test's raw U[0, 1) inputs the default alpha = 1 makes the
    latent loop diverge (exp(u) overflows), which the official test never evaluated."""
    model = make(LEOConfig(), d=17, n=7, dtype=dtype).train()
    batch = random_batch(b=2, n=7, k=5, v=3, d=17, dtype=dtype)
    out = model(batch)
    out.loss.backward()
    assert out.loss.dtype == dtype and torch.isfinite(out.loss)
    assert all(p.grad is not None and p.grad.dtype == dtype for p in model.parameters())


# ------------------------------------------------------------------- gradients (second order)
def _meta_loss_fn(model, batch, seed=0):
    """The meta-loss as a function of the parameters, with fixed noise (for gradcheck)."""
    names = [n for n, _ in model.named_parameters()]

    def f(*params):
        torch.manual_seed(seed)
        out = torch.func.functional_call(model, dict(zip(names, params, strict=True)), (batch,))
        return out.loss

    return f, tuple(p.detach().clone().requires_grad_() for p in model.parameters())


@pytest.mark.parametrize("reference", [False, True], ids=["fast", "reference"])
def test_meta_gradient_matches_finite_differences(reference):
    """Exact second-order meta-gradient for every parameter, sampling and dropout included."""
    model = make(
        LEOConfig(
            num_latents=2,
            inner_unroll_length=2,
            finetuning_unroll_length=2,
            inner_lr_init=0.5,
            finetuning_lr_init=0.1,
            dropout_rate=0.2,
            kl_weight=0.1,
            encoder_penalty_weight=0.0,  # stop-gradient: not a
            reference=reference,
        ),
        d=5,
        n=3,
    ).train()  # derivative
    with torch.no_grad():  # keep every std away from the kink at the 1e-10 floor:
        model.g_r[4].weight[2:] = model.g_r[4].weight[2:].abs()  # z: u > 0 (ReLU inputs >= 0)
        model.g_d.weight[5:] *= 0.1  # W: |u| small, std ~ offset - u > 0
    batch = random_batch(b=2, n=3, k=2, v=2, d=5)
    f, params = _meta_loss_fn(model, batch)
    assert torch.autograd.gradcheck(f, params, eps=1e-6, atol=1e-5, rtol=1e-4)


def test_meta_gradient_is_second_order_and_reaches_every_parameter():
    batch = random_batch(b=2, n=5, k=2, v=3, d=8)
    grads = {}
    for first_order in (False, True):
        model = make(
            LEOConfig(num_latents=3, dropout_rate=0.0, first_order=first_order), d=8
        ).train()
        torch.manual_seed(0)
        grads[first_order] = dict(
            zip(
                [n for n, _ in model.named_parameters()],
                torch.autograd.grad(model(batch).loss, list(model.parameters())),
                strict=True,
            )
        )
    for name, g in grads[False].items():
        assert g.abs().sum() > 0, f"no meta-gradient reaches {name}"
    # Dropping the second-order terms changes the meta-gradient of the decoder and of alpha.
    assert not torch.allclose(grads[False]["g_d.weight"], grads[True]["g_d.weight"])
    assert not torch.allclose(grads[False]["inner_lr"], grads[True]["inner_lr"])


def test_support_losses_do_not_leak_into_the_meta_gradient():
    """The inner loops never call backward(): nothing accumulates in .grad until the outer
    backward, and the outer gradient equals the derivative of the meta-loss alone."""
    model = make(LEOConfig(num_latents=3, dropout_rate=0.0, deterministic=True), d=8).train()
    batch = random_batch(b=2, n=5, k=2, v=3, d=8)
    out = model(batch)
    assert all(p.grad is None for p in model.parameters())
    expected = torch.autograd.grad(out.loss, list(model.parameters()), retain_graph=True)
    out.loss.backward()
    for p, g in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(p.grad, g)


# ------------------------------------------------------------------------ equations
def test_relation_average_equals_equation_3_computed_naively():
    model = make(LEOConfig(num_latents=3), d=6, n=3).eval()
    x = random_batch(b=1, n=3, k=2, d=6).support_x
    with torch.no_grad():
        _, _, codes = model.forward_encoder(x)
        h = model.g_e(x)[0]  # [N, K, Z]
        n, k, _ = h.shape
        expected = torch.zeros(n, 6, dtype=torch.float64)
        for a in range(n):
            for ka in range(k):
                for m in range(n):
                    for km in range(k):
                        expected[a] += model.g_r(torch.cat([h[a, ka], h[m, km]]))
        expected /= n * k * k  # eq. 3: 1 / (N K^2)
    for ka in range(k):  # every shot slot holds the class code
        torch.testing.assert_close(codes[0, :, ka], expected)


def test_kl_estimate_is_unbiased_for_the_analytic_kl():
    torch.manual_seed(0)
    mean = torch.tensor([[0.3, -1.2, 2.0]], dtype=torch.float64)
    std = torch.tensor([[0.5, 1.5, 0.1]], dtype=torch.float64)
    n = 200_000
    samples = mean + std * torch.randn(n, 3, dtype=torch.float64)
    per_sample = losses.normal_log_prob(samples, mean, std) - losses.normal_log_prob(samples, 0, 1)
    estimate, se = per_sample.mean(0).mean(), per_sample.mean(1).std() / math.sqrt(n)
    exact = losses.analytic_kl(mean, std)
    assert abs(estimate - exact.item()) < 4 * se
    one = losses.kl_estimate(samples[:1], mean, std)  # one sample: mean over elements
    torch.testing.assert_close(one, per_sample[:1].mean(1))


def test_orthogonality_penalty_and_l2():
    rows = torch.eye(3, 6, dtype=torch.float64) * 5.0
    assert losses.orthogonality_penalty(rows).item() == 0.0
    rows = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    c = 1 / math.sqrt(2)  # cos 45 degrees, off the diagonal twice, mean over 4 entries
    assert losses.orthogonality_penalty(rows).item() == pytest.approx(2 * c**2 / 4)
    assert losses.l2_penalty([torch.ones(2, 3), torch.full((1,), 2.0)]).item() == 5.0
    model = make(d=4)
    l2, orth = model.regularisers()
    assert l2.item() == pytest.approx(sum((w**2).sum().item() / 2 for w in model.weights()))
    assert orth.item() == pytest.approx(losses.orthogonality_penalty(model.g_d.weight.T).item())


def test_encoder_penalty_stops_the_gradient_at_the_adapted_codes():
    z = torch.tensor([[1.0, 2.0]], requires_grad=True)
    z_prime = z * 3
    penalty = losses.encoder_penalty(z, z_prime)
    assert penalty.item() == pytest.approx((4 + 16) / 2)
    (grad,) = torch.autograd.grad(penalty, z)
    torch.testing.assert_close(grad, (z - z_prime).detach())  # d/dz mean((z - c)^2) = (z - c)


# -------------------------------------------------------------------------- ablations
def test_ablation_switches():
    batch = random_batch(b=2, n=5, k=2, v=3, d=8)
    base = LEOConfig(num_latents=3, dropout_rate=0.0)

    out = make(base, d=8, inner_unroll_length=0, finetuning_unroll_length=0).eval()(batch)
    assert len(out.z_trajectory) == 1  # conditional generator only
    assert torch.equal(out.w, out.w_init)

    out = make(base, d=8, finetuning_unroll_length=0).eval()(batch)
    assert torch.equal(out.w, out.w_adapted) and len(out.z_trajectory) == 6

    model = make(base, d=8, deterministic=True).train()
    a, b = model(batch), model(batch)
    assert torch.all(a.kl == 0) and torch.equal(a.loss, b.loss)

    model = make(base, d=8, random_prior=True).train()
    out = model(batch)
    out.loss.backward()
    assert torch.all(out.codes == 0) and out.z.std() > 0.5  # z ~ N(0, I), not from the data
    l2 = model.config.l2_penalty_weight  # the encoder's only gradient is its L2 decay
    torch.testing.assert_close(model.g_e.weight.grad, l2 * model.g_e.weight.detach())
    torch.testing.assert_close(model.g_r[0].weight.grad, l2 * model.g_r[0].weight.detach())
    with torch.no_grad():
        out = model.eval()(batch)
    assert torch.all(out.z == 0) and out.query_accuracy.mean() > 0  # adapts from zeros
