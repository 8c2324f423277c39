"""leo_tutorial.checks: every check passes the library's reference and the notebooks' own
solutions, and answers each typical wrong answer (written here as a learner would) with its hint."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from leo_tutorial import LEO, LEOConfig, checks, losses
from leo_tutorial.errors import UserError
from leo_tutorial.losses import cross_entropy
from leo_tutorial.model import floored_std


# ------------------------------------------------------------------ solutions, as written
def task_loss(x, y, theta):  # notebook 01: mean cross-entropy per task [B]
    return cross_entropy(torch.einsum("bnkd,bld->bnkl", x, theta), y).flatten(1).mean(1)


def maml_step(
    theta,
    batch,
    alpha,
    create_graph=True,
    *,
    sign=1.0,
    loss="mean",
    wrt="copy",
    graph=None,
    detach=False,
    use_alpha=True,
):
    theta_b = theta.expand(batch.batch_size, *theta.shape)
    if loss == "mean":
        support_loss = task_loss(batch.support_x, batch.support_y, theta_b).sum()
    else:
        logits = torch.einsum("bnkd,bld->bnkl", batch.support_x, theta_b)
        support_loss = cross_entropy(logits, batch.support_y).sum()
    graph = create_graph if graph is None else graph
    (grad,) = torch.autograd.grad(
        support_loss, theta_b if wrt == "copy" else theta, create_graph=graph
    )
    out = theta_b - sign * (alpha if use_alpha else 1.0) * grad
    return out.detach() if detach else out


def maml(**mistake):
    return lambda t, b, a, create_graph=True: maml_step(t, b, a, create_graph, **mistake)


def log_prior(s):
    return -0.5 * s**2 - 0.5 * math.log(2 * math.pi)


def official_std(u, offset):
    return torch.clamp(torch.exp(u) - (1.0 - offset), min=1e-10)


def sample_z(codes, eps):
    mu, u = codes.chunk(2, dim=-1)
    return mu + official_std(u, 0.0) * eps


def eq3_codes(h, g_r, *, keep=lambda n, kn, m, km: True, swap=False, norm=None, per_example=False):
    n_way, k_shot, z = h.shape
    codes = torch.zeros(n_way, k_shot, 2 * z, dtype=h.dtype)
    count = torch.zeros(n_way, k_shot, 1, dtype=h.dtype)
    for n in range(n_way):
        for kn in range(k_shot):
            for m in range(n_way):
                for km in range(k_shot):
                    if keep(n, kn, m, km):
                        pair = [h[m, km], h[n, kn]] if swap else [h[n, kn], h[m, km]]
                        codes[n, kn] += g_r(torch.cat(pair))
                        count[n, kn] += 1
    if per_example:
        return codes / count
    if norm is not None:
        return codes.sum(dim=1) / norm(n_way, k_shot)
    return codes.sum(dim=1) / count.sum(dim=1)


def decode_weights(z, decoder_weight, offset):
    mean_w, u_w = (z @ decoder_weight.T).chunk(2, dim=-1)
    return mean_w, official_std(u_w, offset)


def predict_mine(x, W):
    return x @ W.mean(dim=2).transpose(1, 2).unsqueeze(1)


def latent_step(
    model, z, x, y, *, sign=1.0, reduce="sum", alpha="vector", out="z", graph=True, leaf=False
):
    z = z.detach().requires_grad_() if leaf else z
    W, _ = model.possibly_sample(model.decoder(z), model.decoder_stddev_offset)
    per_example = model.loss_fn(model.predict(x, W), y)
    support_loss = per_example.sum() if reduce == "sum" else per_example.mean()
    (grad_z,) = torch.autograd.grad(support_loss, z, create_graph=graph)
    rate = {"vector": model.inner_lr, "mean": model.inner_lr.mean(), "none": 1.0}[alpha]
    step = rate * grad_z
    return {"z": z - sign * step, "grad": grad_z, "step": -step}[out]


def log_normal(s, mean, std):
    return -0.5 * ((s - mean) / std) ** 2 - torch.log(std) - 0.5 * math.log(2 * math.pi)


def kl_one_sample(s, mean, std):
    log_prior = -0.5 * s**2 - 0.5 * math.log(2 * math.pi)
    return (log_normal(s, mean, std) - log_prior).flatten(1).mean(dim=1)


def encoder_penalty(z, z_prime):
    return ((z - z_prime.detach()) ** 2).flatten(1).mean(dim=1)


def latent_preconditioner(w_mu, alpha, k_shot):  # notebook 10
    return w_mu @ torch.diag(alpha) @ w_mu.T / k_shot


SOLUTIONS = {
    "maml_inner_step": maml_step,
    "official_std": official_std,
    "sample_z": sample_z,
    "eq3_codes": eq3_codes,
    "decode_weights": decode_weights,
    "predict_mine": predict_mine,
    "latent_step": latent_step,
    "kl_one_sample": kl_one_sample,
    "encoder_penalty": encoder_penalty,
    "latent_preconditioner": latent_preconditioner,
}


def test_every_exercise_has_a_solution_here():
    assert set(SOLUTIONS) == set(checks.EXERCISES)


@pytest.mark.parametrize("name", sorted(SOLUTIONS))
def test_reference_and_notebook_solution_pass(name):
    assert checks.diagnose(name, checks.EXERCISES[name].reference) is None
    assert checks.diagnose(name, SOLUTIONS[name]) is None


def _mean_only(codes, eps):
    return codes.chunk(2, dim=-1)[0]


WRONG = [
    # notebook 01
    ("maml_inner_step", maml(sign=-1.0), "step *down*"),
    ("maml_inner_step", maml(loss="sum"), "*mean* cross-entropy"),
    ("maml_inner_step", maml(wrt="shared"), "expanded theta_b"),
    ("maml_inner_step", maml(graph=False), "create_graph=create_graph"),
    ("maml_inner_step", maml(graph=True), "first order"),
    ("maml_inner_step", maml(detach=True), "stay connected to theta"),
    ("maml_inner_step", maml(use_alpha=False), "inner learning rate alpha"),
    # notebook 02: the std
    ("official_std", lambda u, o: torch.log1p(torch.exp(u)), "softplus"),
    ("official_std", lambda u, o: torch.exp(u) - 1 + o, "keep the 1e-10 floor"),
    ("official_std", lambda u, o: (torch.exp(u) - 1 + o).clamp(min=0), "not 0"),
    ("official_std", lambda u, o: torch.clamp(torch.exp(u) - 1, min=1e-10), "ignored the offset"),
    (
        "official_std",
        lambda u, o: torch.clamp(torch.exp(u) - 1 - o, min=1e-10),
        "added, not subtracted",
    ),
    ("official_std", lambda u, o: u, "unnormalised std"),
    ("official_std", lambda u, o: torch.exp(0.5 * u), "log-variance"),
    ("official_std", lambda u, o: torch.exp(u).clamp(min=1e-10), "subtract 1 - offset"),
    ("official_std", lambda u, o: u**2, "away from the reference"),
    # notebook 02: sampling
    (
        "sample_z",
        lambda c, e: c.chunk(2, -1)[0] + official_std(c.chunk(2, -1)[1], 0) ** 2 * e,
        "not by the variance",
    ),
    ("sample_z", lambda c, e: c.chunk(2, -1)[0] + c.chunk(2, -1)[1] * e, "unnormalised std"),
    ("sample_z", lambda c, e: c.chunk(2, -1)[0] + F.softplus(c.chunk(2, -1)[1]) * e, "softplus"),
    (
        "sample_z",
        lambda c, e: c.chunk(2, -1)[1] + official_std(c.chunk(2, -1)[0], 0) * e,
        "first half of the code is the mean",
    ),
    ("sample_z", lambda c, e: c[..., ::2] + official_std(c[..., 1::2], 0) * e, "two halves"),
    ("sample_z", lambda c, e: sample_z(c, torch.randn_like(e)), "use the noise eps"),
    ("sample_z", lambda c, e: sample_z(c, e).detach(), "differentiable function"),
    ("sample_z", _mean_only, "you returned the mean"),
    (
        "sample_z",
        lambda c, e: c.chunk(2, -1)[0] + official_std(c.chunk(2, -1)[1].detach(), 0) * e,
        "reach both mu and u",
    ),
    # notebook 02: eq. 3
    (
        "eq3_codes",
        lambda h, g: eq3_codes(h, g, keep=lambda n, kn, m, km: (n, kn) != (m, km)),
        "self-pairs",
    ),
    ("eq3_codes", lambda h, g: eq3_codes(h, g, keep=lambda n, kn, m, km: n == m), "*every* class"),
    ("eq3_codes", lambda h, g: eq3_codes(h, g, swap=True), "the pair is [h_i; h_j]"),
    ("eq3_codes", lambda h, g: eq3_codes(h, g, norm=lambda n, k: n * k), "not by N K"),
    ("eq3_codes", lambda h, g: eq3_codes(h, g, norm=lambda n, k: 1), "divide the sum"),
    ("eq3_codes", lambda h, g: eq3_codes(h, g, norm=lambda n, k: (n * k) ** 2), "not (N K)^2"),
    ("eq3_codes", lambda h, g: eq3_codes(h, g, per_example=True), "average over the K shots"),
    ("eq3_codes", lambda h, g: eq3_codes(h.mean(dim=1, keepdim=True), g), "pairs of *examples*"),
    # notebook 03: the decoder
    ("decode_weights", lambda z, w, o: decode_weights(z, w.T, o), "layout [2D, Z]"),
    (
        "decode_weights",
        lambda z, w, o: ((z @ w.T).chunk(2, -1)[1], official_std((z @ w.T).chunk(2, -1)[0], o)),
        "first D outputs",
    ),
    ("decode_weights", lambda z, w, o: decode_weights(z, w, o)[::-1], "in that order"),
    (
        "decode_weights",
        lambda z, w, o: ((z @ w.T)[..., ::2], official_std((z @ w.T)[..., 1::2], o)),
        "two halves",
    ),
    ("decode_weights", lambda z, w, o: decode_weights(z, w, 0.0), "ignored the offset"),
    (
        "decode_weights",
        lambda z, w, o: ((z @ w.T).chunk(2, -1)[0], F.softplus((z @ w.T).chunk(2, -1)[1])),
        "softplus",
    ),
    ("decode_weights", lambda z, w, o: z @ w.T, "return the pair (mean, std)"),
    (
        "decode_weights",  # the notebook's D = 640 is larger than the check's sizes
        lambda z, w, o: ((z @ w.T)[..., :640], official_std((z @ w.T)[..., 640:], o)),
        "not with the notebook's global D",
    ),
    # notebook 03: the logits
    ("predict_mine", lambda x, W: predict_mine(x, W[:, :, :1]), "not just the first"),
    ("predict_mine", lambda x, W: x @ W.sum(dim=2).transpose(1, 2).unsqueeze(1), "not their sum"),
    ("predict_mine", lambda x, W: predict_mine(x, W).softmax(-1), "not probabilities"),
    ("predict_mine", lambda x, W: F.log_softmax(predict_mine(x, W), -1), "raw logits"),
    (
        "predict_mine",
        lambda x, W: predict_mine(x, F.normalize(W.mean(2, keepdim=True), dim=-1)),
        "no normalisation",
    ),
    ("predict_mine", lambda x, W: torch.einsum("bnvd,bnkd->bnv", x, W) / W.shape[2], "shape"),
    # notebook 04: the latent step
    ("latent_step", lambda m, z, x, y: latent_step(m, z, x, y, sign=-1.0), "step *down*"),
    ("latent_step", lambda m, z, x, y: latent_step(m, z, x, y, reduce="mean"), "*sum*"),
    ("latent_step", lambda m, z, x, y: latent_step(m, z, x, y, alpha="none"), "learned rates"),
    ("latent_step", lambda m, z, x, y: latent_step(m, z, x, y, alpha="mean"), "not by its mean"),
    ("latent_step", lambda m, z, x, y: latent_step(m, z, x, y, out="grad"), "not the gradient"),
    ("latent_step", lambda m, z, x, y: latent_step(m, z, x, y, out="step"), "not only the step"),
    ("latent_step", lambda m, z, x, y: latent_step(m, z, x, y).detach(), "stay in the autograd"),
    ("latent_step", lambda m, z, x, y: latent_step(m, z, x, y, graph=False), "create_graph=True"),
    ("latent_step", lambda m, z, x, y: latent_step(m, z, x, y, leaf=True), "do not detach z"),
    (
        "latent_step",
        lambda m, z, x, y: latent_step(m, z, x, y, leaf=True, graph=False),
        "do not detach z",
    ),
    # notebook 05: the KL
    (
        "kl_one_sample",
        lambda s, m, sd: (log_normal(s, m, sd) - log_prior(s)).flatten(1).sum(1),
        "not the sum",
    ),
    (
        "kl_one_sample",
        lambda s, m, sd: (log_normal(s, m, sd) - log_prior(s)).mean(-1).flatten(1).sum(1),
        "averaged over the latent dimension only",
    ),
    (
        "kl_one_sample",
        lambda s, m, sd: (0.5 * (m**2 + sd**2 - 1) - torch.log(sd)).flatten(1).mean(1),
        "closed-form KL",
    ),
    ("kl_one_sample", lambda s, m, sd: -kl_one_sample(s, m, sd), "log p - log q"),
    (
        "kl_one_sample",
        lambda s, m, sd: (
            (log_normal(s, m, sd) - log_normal(s, m, torch.ones_like(s))).flatten(1).mean(1)
        ),
        "N(0, I)",
    ),
    (
        "kl_one_sample",
        lambda s, m, sd: (-0.5 * ((s - m) / sd) ** 2 + 0.5 * s**2).flatten(1).mean(1),
        "-log sigma",
    ),
    (
        "kl_one_sample",
        lambda s, m, sd: (log_normal(s, m, sd) + 0.5 * s**2).flatten(1).mean(1),
        "constant",
    ),
    ("kl_one_sample", lambda s, m, sd: kl_one_sample(s, m, sd).mean(), "task axis"),
    (
        "kl_one_sample",
        lambda s, m, sd: (log_normal(s, m, sd) - log_prior(s)).mean(-1),
        "every axis but the task axis",
    ),
    # notebook 05: the encoder penalty
    ("encoder_penalty", lambda z, zp: ((z - zp) ** 2).flatten(1).mean(1), "z_prime.detach()"),
    (
        "encoder_penalty",
        lambda z, zp: ((z.detach() - zp.detach()) ** 2).flatten(1).mean(1),
        "must reach z",
    ),
    (
        "encoder_penalty",
        lambda z, zp: ((z.detach() - zp) ** 2).flatten(1).mean(1),
        "z_prime.detach()",
    ),
    ("encoder_penalty", lambda z, zp: ((z - zp.detach()) ** 2).flatten(1).sum(1), "not the sum"),
    ("encoder_penalty", lambda z, zp: (z - zp.detach()).flatten(1).norm(dim=1), "not the norm"),
    (
        "encoder_penalty",
        lambda z, zp: (z - zp.detach()).abs().flatten(1).mean(1),
        "absolute values",
    ),
    ("encoder_penalty", lambda z, zp: encoder_penalty(z, zp).mean(), "task axis"),
    ("latent_preconditioner", lambda w, a, k: w @ torch.diag(a) @ w.T, "divide by K"),
    ("latent_preconditioner", lambda w, a, k: (w * a) @ w.T * k, "do not multiply"),
    ("latent_preconditioner", lambda w, a, k: w @ w.T * a.mean() / k, "not its mean"),
    ("latent_preconditioner", lambda w, a, k: w @ w.T / k, "learned rates"),
    ("latent_preconditioner", lambda w, a, k: -(w * a) @ w.T / k, "leave out the minus"),
    ("latent_preconditioner", lambda w, a, k: (w.T @ w) * a / k, "[Z, Z]"),
    ("latent_preconditioner", lambda w, a, k: (w * a) @ w.T / k**2, "away from the reference"),
]


@pytest.mark.parametrize(
    ("name", "wrong", "hint"), WRONG, ids=[f"{name}-{i}" for i, (name, _, _) in enumerate(WRONG)]
)
def test_wrong_answer_gets_its_hint(name, wrong, hint):
    problem = checks.diagnose(name, wrong)
    assert problem is not None and hint in problem, problem


def _stub(*args, **kwargs):
    raise NotImplementedError("write this")


def test_check_prints_the_verdict_and_returns_the_function_to_continue_with(capsys):
    assert checks.check_official_std(official_std) is official_std
    assert capsys.readouterr().out.startswith("✓ official_std passed")
    assert checks.check_official_std(_stub) is checks.official_std_reference
    out = capsys.readouterr().out
    assert "not implemented yet — the notebook uses the library's reference" in out
    assert "hint 1/3 for official_std: not softplus" in out
    assert (
        checks.check_latent_step(lambda m, z, x, y: latent_step(m, z, x, y, sign=-1.0))
        is checks.latent_step_reference
    )
    out = capsys.readouterr().out
    assert (
        "step *down* the gradient" in out and "use the library's reference until it passes" in out
    )
    assert "checks.hint('latent_step', 2)" in out


def test_an_exception_names_the_learners_line_and_blames_sizes_only_for_shape_errors(capsys):
    def typo(u, offset):
        std = torch.exp(u) - (1 - ofset)  # noqa: F821 (the learner's typo)
        return std

    def global_size(u, offset):
        return torch.exp(u).reshape(640) - 1 + offset

    assert checks.check_official_std(typo) is checks.official_std_reference
    out = capsys.readouterr().out
    assert "✗ official_std: your function raised NameError: name 'ofset' is not defined" in out
    assert "at `std = torch.exp(u) - (1 - ofset)" in out
    assert "other sizes" not in out
    checks.check_official_std(global_size)
    out = capsys.readouterr().out
    assert "raised RuntimeError" in out and "the check uses other sizes than the notebook" in out


def test_the_reference_passed_back_is_recognised_not_passed(capsys):
    wrong = checks.check_official_std(lambda u, offset: u)  # a failed check returns the reference
    assert wrong is checks.official_std_reference
    capsys.readouterr()
    assert checks.check_official_std(wrong) is checks.official_std_reference  # re-run the check
    out = capsys.readouterr().out
    assert out.startswith("✗ official_std is the library's reference")
    assert "re-run the cell that defines your official_std" in out and "✓" not in out


@pytest.mark.parametrize("name", sorted(SOLUTIONS))
def test_hints_go_from_the_idea_to_the_solution(name):
    hints = checks.EXERCISES[name].hints
    assert len(hints) >= 2
    first, last = checks.hint(name), checks.hint(name, len(hints))
    assert first.startswith(f"hint 1/{len(hints)} for {name}: ") and f"({name!r}, 2)" in first
    assert last.endswith("(this is the solution)")
    assert repr(first) == str(first)  # shown without quotes as a cell's value
    assert "return" not in hints[0] and "return" in hints[-1]  # idea first, code last
    with pytest.raises(UserError, match="has hints 1 to"):
        checks.hint(name, len(hints) + 1)
    with pytest.raises(UserError, match="no exercise 'nope'"):
        checks.hint("nope")


@pytest.mark.parametrize("name", sorted(SOLUTIONS))
def test_stub_is_reported_not_raised(name, capsys):
    function = checks.check(name, _stub)
    assert function is checks.EXERCISES[name].reference
    assert "not implemented yet" in capsys.readouterr().out


def test_checks_leave_the_random_state_alone():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    for name, solution in SOLUTIONS.items():
        checks.check(name, solution)
    checks.check("sample_z", lambda c, e: sample_z(c, torch.randn_like(e)))
    assert torch.equal(torch.get_rng_state(), state)


def test_checks_work_under_no_grad():
    with torch.no_grad():
        for name, solution in SOLUTIONS.items():
            assert checks.diagnose(name, solution) is None, name


# ------------------------------------------------ the references are the library's numbers
def _model(z=3, d=5, n=3):
    torch.manual_seed(0)
    return LEO(LEOConfig(num_latents=z), embedding_dim=d, n_way=n, dtype=torch.float64)


def test_sample_z_reference_is_possibly_sample_for_the_same_noise():
    model = _model().train()
    codes = torch.randn(2, 3, 2, 6, dtype=torch.float64)
    torch.manual_seed(5)
    z, _ = model.possibly_sample(codes)
    torch.manual_seed(5)
    eps = torch.randn(2, 3, 2, 3, dtype=torch.float64)
    torch.testing.assert_close(checks.sample_z_reference(codes, eps), z)


def test_eq3_and_decoder_references_match_the_model():
    model = _model().eval()
    x = F.normalize(torch.randn(1, 3, 2, 5, dtype=torch.float64), dim=-1)
    h = model.encoder(x)
    codes = model.forward_encoder(x)[2]
    torch.testing.assert_close(checks.eq3_codes_reference(h[0], model.g_r), codes[0, :, 0])
    z = torch.randn(1, 3, 2, 3, dtype=torch.float64)
    mean, std, _ = model.gaussian_params(model.decoder(z), model.decoder_stddev_offset)
    ref_mean, ref_std = checks.decode_weights_reference(
        z, model.g_d.weight, model.decoder_stddev_offset
    )
    torch.testing.assert_close(ref_mean, mean)
    torch.testing.assert_close(ref_std, std)
    torch.testing.assert_close(checks.official_std_reference(z, 0.2), floored_std(z, 0.2)[0])


def test_maml_reference_is_autograd_to_second_order():
    torch.manual_seed(0)
    theta, batch = checks._maml_case(torch.Generator().manual_seed(0))
    for create_graph in (True, False):
        ref = checks.maml_inner_step_reference(theta, batch, 2.0, create_graph)
        mine = maml_step(theta, batch, 2.0, create_graph)
        torch.testing.assert_close(ref, mine)
        (g_ref,) = torch.autograd.grad((ref**2).sum(), theta)
        (g_mine,) = torch.autograd.grad((mine**2).sum(), theta)
        torch.testing.assert_close(g_ref, g_mine)


def test_kl_and_penalty_references_are_the_losses():
    s, mean = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    std = torch.rand(2, 3, 4) + 0.1
    torch.testing.assert_close(
        checks.kl_one_sample_reference(s, mean, std), losses.kl_estimate(s, mean, std)
    )
    torch.testing.assert_close(
        checks.encoder_penalty_reference(s, mean), losses.encoder_penalty(s, mean)
    )


def test_latent_step_reference_is_autograd_to_second_order():
    model = _model().eval()
    x = F.normalize(torch.randn(2, 3, 2, 5, dtype=torch.float64), dim=-1)
    y = torch.arange(3)[None, :, None].expand(2, 3, 2)
    z = model.forward_encoder(x)[0]
    ref = checks.latent_step_reference(model, z, x, y)
    mine = latent_step(model, z, x, y)
    torch.testing.assert_close(ref, mine)
    for p in model.parameters():
        (g_ref,) = torch.autograd.grad(ref.sum(), p, retain_graph=True, allow_unused=True)
        (g_mine,) = torch.autograd.grad(mine.sum(), p, retain_graph=True, allow_unused=True)
        if g_ref is None:
            assert g_mine is None
        else:
            torch.testing.assert_close(g_ref, g_mine)


def test_latent_preconditioner_reference_is_the_curvature_modules():
    from leo_tutorial import curvature

    model = LEO(LEOConfig(num_latents=3), embedding_dim=7, n_way=2, dtype=torch.float64)
    w_mu = curvature.decoder_mean(model).detach()
    for k in (1, 4):
        expected = curvature.latent_preconditioner(model, k).detach()
        got = checks.latent_preconditioner_reference(w_mu, model.inner_lr.detach(), k)
        assert torch.allclose(got, expected, rtol=1e-12, atol=1e-14)
