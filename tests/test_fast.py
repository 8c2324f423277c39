"""The fused meta-step (leo_tutorial/fast.py) against the reference (model.py): the same loss,
outputs and every parameter gradient, in float64 to 1e-10, with identical seeded noise and
dropout; which path runs; and the switch's old name in saved runs."""

import json

import numpy as np
import pytest
import torch
from _tasks import random_batch

from leo_tutorial import LEO, LEOConfig, TrainConfig, UserError, fast, noise
from leo_tutorial.config import config_from_dict, config_to_dict

RTOL = 1e-10  # relative to the largest entry of each tensor, in float64
NO_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
DEVICES = ["cpu", pytest.param("cuda", marks=NO_CUDA)]

# Small but every axis > 1 where it can be; rates large enough that every term matters.
BASE = LEOConfig(
    num_latents=4,
    dropout_rate=0.3,
    inner_lr_init=0.5,
    finetuning_lr_init=0.1,
    kl_weight=0.1,
    encoder_penalty_weight=0.1,
    l2_penalty_weight=0.01,
    orthogonality_penalty_weight=0.01,
)
ABLATIONS = {
    "leo": {},
    "deterministic": dict(deterministic=True),
    "random_prior": dict(random_prior=True),
    "no_latent_steps": dict(inner_unroll_length=0),
    "no_finetuning": dict(finetuning_unroll_length=0),
    "generator_only": dict(inner_unroll_length=0, finetuning_unroll_length=0),
    "first_order": dict(first_order=True),
    "no_dropout": dict(dropout_rate=0.0),
}
OUTPUTS = ("query_loss", "query_accuracy", "kl", "encoder_penalty", "l2", "orthogonality")
OUTPUTS += ("codes", "z", "w_init", "w_adapted", "w", "query_logits")


def run(config, training, k, device="cpu", grad=True, d=16, n=5, seed=0):
    """(output, {name: gradient}) of one forward (and backward) pass under a fixed seed."""
    torch.manual_seed(seed)
    model = LEO(config, embedding_dim=d, n_way=n, dtype=torch.float64).to(device)
    model.train(training)
    batch = random_batch(b=3, n=n, k=k, v=3, d=d, seed=1)
    for name in ("support_x", "support_y", "query_x", "query_y"):
        setattr(batch, name, getattr(batch, name).to(device))
    torch.manual_seed(123)  # the same noise and dropout draws for both paths
    if not grad:
        with torch.no_grad():
            return model(batch), {}
    out = model(batch)
    params = dict(model.named_parameters())
    grads = torch.autograd.grad(out.loss, list(params.values()), allow_unused=True)
    return out, dict(zip(params, grads, strict=True))


def assert_same(actual, expected, what):
    assert actual.shape == expected.shape, what
    scale = expected.abs().max().clamp_min(1e-300)
    error = (actual - expected).abs().max() / scale
    assert error <= RTOL, f"{what}: relative difference {error:.2e}"


def assert_paths_agree(config, training, k, device="cpu", grad=True):
    out_ref, grads_ref = run(config.replace(reference=True), training, k, device, grad)
    out_fast, grads_fast = run(config, training, k, device, grad)
    assert_same(out_fast.loss, out_ref.loss, "loss")
    for name in OUTPUTS:
        assert_same(getattr(out_fast, name), getattr(out_ref, name), name)
    for name in ("z_trajectory", "w_trajectory", "support_losses"):
        fast_list, ref_list = getattr(out_fast, name), getattr(out_ref, name)
        assert len(fast_list) == len(ref_list), name
        for t, (a, b) in enumerate(zip(fast_list, ref_list, strict=True)):
            assert_same(a, b, f"{name}[{t}]")
    assert grads_fast.keys() == grads_ref.keys()
    for name, g_ref in grads_ref.items():
        g_fast = grads_fast[name]
        if g_ref is None:  # a rate without steps is unused
            assert g_fast is None, f"{name} should get no gradient"
        else:
            assert_same(g_fast, g_ref, f"d loss / d {name}")


@pytest.mark.parametrize("k", [1, 5], ids=["1shot", "5shot"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("ablation", list(ABLATIONS))
@pytest.mark.parametrize("device", DEVICES)
def test_fast_path_gives_the_reference_loss_outputs_and_gradients(ablation, training, k, device):
    assert_paths_agree(BASE.replace(**ABLATIONS[ablation]), training, k, device)


@pytest.mark.parametrize("k", [1, 5], ids=["1shot", "5shot"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("ablation", ["leo", "deterministic", "random_prior", "first_order"])
def test_gradients_through_the_latent_trajectory_equal_the_reference(ablation, training, k):
    # z and every adapted code z_t stay in the graph on both paths: a loss that reads them
    # (as notebook 05 does) gets the reference's gradients, through every latent step.
    config = BASE.replace(**ABLATIONS[ablation])
    grads = {}
    for reference in (True, False):
        torch.manual_seed(0)
        model = LEO(
            config.replace(reference=reference), embedding_dim=16, n_way=5, dtype=torch.float64
        ).train(training)
        batch = random_batch(b=3, n=5, k=k, v=3, d=16, seed=1)
        torch.manual_seed(123)
        out = model(batch)
        weights = torch.Generator().manual_seed(7)
        read = sum(
            (z * torch.randn(z.shape, generator=weights, dtype=z.dtype)).sum()
            for z in out.z_trajectory
        )
        params = dict(model.named_parameters())
        grads[reference] = torch.autograd.grad(read, list(params.values()), allow_unused=True)
    for name, g_fast, g_ref in zip(params, grads[False], grads[True], strict=True):
        if g_ref is None:
            assert g_fast is None, f"{name} should get no gradient"
        else:
            assert_same(g_fast, g_ref, f"d read(z_trajectory) / d {name}")
    assert any(g is not None and bool(g.abs().sum() > 0) for g in grads[False])


@pytest.mark.parametrize("k", [1, 5], ids=["1shot", "5shot"])
@pytest.mark.parametrize("ablation", ["leo", "random_prior", "generator_only"])
def test_fast_evaluation_without_gradients_equals_the_reference(ablation, k):
    assert_paths_agree(BASE.replace(**ABLATIONS[ablation]), False, k, grad=False)
    out, _ = run(BASE.replace(**ABLATIONS[ablation]), False, k, grad=False)
    assert not out.loss.requires_grad and not out.w.requires_grad


def test_default_rates_and_clipped_stds_agree_too():
    """The official defaults (alpha = 1: large latent steps, many stds on the 1e-10 floor)."""
    assert_paths_agree(LEOConfig(num_latents=4), True, 5)


def test_training_mode_without_gradients_draws_the_same_noise():
    assert_paths_agree(BASE, True, 5, grad=False)


def test_fast_meta_gradient_matches_a_second_order_reference_through_autograd():
    """Gradient flows through the Function into the encoder and relation network."""
    _, grads = run(BASE, True, 5)
    assert all(g is not None and g.abs().sum() > 0 for g in grads.values())


def test_fast_path_supports_retain_graph_and_frees_its_tape_otherwise():
    torch.manual_seed(0)
    model = LEO(BASE, embedding_dim=16, n_way=5, dtype=torch.float64).train()
    out = model(random_batch(b=2, n=5, k=2, v=3, d=16))
    first = torch.autograd.grad(out.loss, model.inner_lr, retain_graph=True)[0]
    second = torch.autograd.grad(out.loss, model.inner_lr)[0]
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        torch.autograd.grad(out.loss, model.inner_lr)


# ------------------------------------------------------------------------ helper thread
@pytest.mark.parametrize("k", [1, 5], ids=["1shot", "5shot"])
@pytest.mark.parametrize("ablation", ["leo", "deterministic", "random_prior", "no_dropout"])
def test_the_helper_thread_gives_the_numbers_of_drawing_in_place(monkeypatch, ablation, k):
    """Draws, weight penalties and dL/dg_d made on the helper thread (CPU, 2+ cores) equal, bit
    for bit in float32, those made in the main thread, over two meta-steps."""
    config = BASE.replace(**ABLATIONS[ablation])
    results = {}
    for cores in (1, 2):
        monkeypatch.setattr(fast, "_CORES", cores)
        assert (fast._helper(torch.device("cpu")) is None) == (cores == 1)
        torch.manual_seed(0)
        model = LEO(config, embedding_dim=16, n_way=5).train()
        values = []
        for step in range(2):
            torch.manual_seed(10 + step)
            out = model(random_batch(b=3, n=5, k=k, v=3, d=16, seed=step, dtype=torch.float32))
            grads = torch.autograd.grad(out.loss, list(model.parameters()), allow_unused=True)
            values += [out.loss, out.query_logits, out.l2, out.orthogonality]
            values += [g for g in grads if g is not None]
            with torch.no_grad():
                for p, g in zip(model.parameters(), grads, strict=True):
                    if g is not None:
                        p -= 0.1 * g
        results[cores] = values
    for a, b in zip(results[1], results[2], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_a_forked_process_gets_its_own_helper_thread(monkeypatch):
    monkeypatch.setattr(fast, "_CORES", 2)
    first = fast._helper(torch.device("cpu"))
    assert fast._helper(torch.device("cpu")) is first
    monkeypatch.setattr(fast.os, "getpid", lambda: -1)  # as in a child after fork()
    assert fast._helper(torch.device("cpu")) is not first
    assert fast._helper(torch.device("meta")) is None  # CPU only


def test_closed_form_weight_penalties_match_autograd():
    """Values and gradient of _penalties against losses.l2_penalty / orthogonality_penalty."""
    torch.manual_seed(0)
    model = LEO(BASE, embedding_dim=16, n_way=5, dtype=torch.float64)
    weights = model.weights()
    l2, orthogonality, d_orthogonality = fast._penalties([w.detach() for w in weights])
    l2_ref, orthogonality_ref = model.regularisers()
    assert_same(l2, l2_ref.detach(), "l2")
    assert_same(orthogonality, orthogonality_ref.detach(), "orthogonality")
    (expected,) = torch.autograd.grad(orthogonality_ref, model.g_d.weight)
    assert_same(d_orthogonality, expected, "d orthogonality / d g_d.weight")


# ----------------------------------------------------------------------- which path runs
def test_reference_switch_and_overridden_steps_select_the_reference(monkeypatch):
    model = LEO(BASE, embedding_dim=16, n_way=5, dtype=torch.float64)
    assert fast.applies(model)
    assert not fast.applies(LEO(BASE.replace(reference=True), embedding_dim=16, n_way=5))

    class Tempered(LEO):
        @staticmethod
        def loss_fn(logits, labels):
            return LEO.loss_fn(logits / 2, labels)

    assert not fast.applies(Tempered(BASE, embedding_dim=16, n_way=5))
    monkeypatch.setattr(model, "predict", lambda x, w: LEO._logits(x, w))
    assert not fast.applies(model)


def test_overriding_the_loss_changes_the_inner_gradients_in_the_reference():
    """A subclass's loss_fn drives every inner step, not only the query loss."""

    class Doubled(LEO):
        @staticmethod
        def loss_fn(logits, labels):
            return 2 * LEO.loss_fn(logits, labels)

    config = BASE.replace(dropout_rate=0.0, finetuning_unroll_length=0, inner_unroll_length=1)
    batch = random_batch(b=2, n=5, k=1, v=3, d=16)
    steps = {}
    for cls in (LEO, Doubled):
        torch.manual_seed(0)
        model = cls(config, embedding_dim=16, n_way=5, dtype=torch.float64).eval()
        with torch.no_grad():
            z = model(batch).z_trajectory
        steps[cls] = z[1] - z[0]
    torch.testing.assert_close(steps[Doubled], 2 * steps[LEO])  # twice the loss, twice the step


def test_an_overridden_meta_objective_is_used_by_both_paths():
    """meta_objective is not a step: both paths call it, so overriding it keeps the fast path
    and gives both paths the new loss and its gradients."""

    class QueryOnly(LEO):
        def meta_objective(self, query_loss, kl, penalty, l2, orthogonality):
            return query_loss.mean()

    batch = random_batch(b=3, n=5, k=2, v=3, d=16, seed=1)
    results = {}
    for reference in (False, True):
        torch.manual_seed(0)
        config = BASE.replace(reference=reference)
        model = QueryOnly(config, embedding_dim=16, n_way=5, dtype=torch.float64).train()
        assert fast.applies(model) is not reference
        torch.manual_seed(123)
        out = model(batch)
        assert torch.equal(out.loss, out.query_loss.mean())  # not the full eq. 6-7 loss
        assert out.kl.abs().sum() > 0 and out.l2 > 0  # which would differ from it
        results[reference] = out.loss, torch.autograd.grad(out.loss, model.g_d.weight)[0]
    assert_same(results[False][0], results[True][0], "loss")
    assert_same(results[False][1], results[True][1], "g_d gradient")


# ------------------------------------------------------------------------------- noise
def test_dropout_masks_are_zero_or_the_inverse_keep_rate_and_unbiased():
    torch.manual_seed(0)
    mask = noise.dropout_mask((400, 1000), 0.5, torch.float64, torch.device("cpu"))
    assert set(mask.unique().tolist()) == {0.0, 2.0}
    assert abs(mask.mean().item() - 1.0) < 0.01  # E[mask] = 1: 4e5 draws, sd 0.0016
    assert noise.dropout_mask((3, 4), 0.0, torch.float32, torch.device("cpu")) is None
    x = torch.randn(5, 7)
    torch.manual_seed(1)
    dropped = noise.dropout(x, 0.3)
    torch.manual_seed(1)
    torch.testing.assert_close(dropped, x * noise.dropout_mask(x.shape, 0.3, x.dtype, x.device))
    assert torch.equal(noise.dropout(x, 0.0), x)


# ------------------------------------------------------------------- the switch's old name
@pytest.mark.parametrize("old, reference", [("analytic", False), ("autograd", True)])
def test_run_records_with_the_old_inner_gradient_key_still_load(tmp_path, old, reference):
    from leo_tutorial.rundir import load_run, run_record

    values = config_to_dict(LEOConfig())
    del values["reference"]
    values["inner_gradient"] = old  # as written by versions before the fast path
    assert config_from_dict(LEOConfig, values) == LEOConfig(reference=reference)

    record = run_record(LEOConfig(), TrainConfig(), {}, 16)
    record["leo_config"] = values
    (tmp_path / "run.json").write_text(json.dumps(record))
    torch.manual_seed(0)
    saved = LEO(LEOConfig(), embedding_dim=16, n_way=5)
    torch.save({"model": saved.state_dict()}, tmp_path / "best.pt")
    model, _ = load_run(tmp_path)
    assert model.config.reference is reference
    for name, p in saved.state_dict().items():
        assert torch.equal(model.state_dict()[name], p)


def test_an_unknown_inner_gradient_value_is_a_clear_error():
    values = {**config_to_dict(LEOConfig()), "inner_gradient": "numeric"}
    del values["reference"]
    with pytest.raises(UserError, match="inner_gradient must be 'analytic' or 'autograd'"):
        config_from_dict(LEOConfig, values)


# ---------------------------------------------------------------------------- evaluation
@pytest.mark.parametrize("k", [1, 5], ids=["1shot", "5shot"])
@pytest.mark.parametrize("n_query", [None, 4], ids=["all_remaining", "4_queries"])
def test_fast_evaluation_scores_the_same_tasks_as_the_batch_loop(k, n_query):
    """training.evaluate on the fast path (class-block query logits) == the loop over
    TaskBatches through the reference model, on classes of unequal size."""
    from leo_tutorial.data import FeatureSplit
    from leo_tutorial.training import evaluate

    g = torch.Generator().manual_seed(0)
    sizes = [9, 12, 10, 15, 11, 9, 13]  # the larger classes contribute a random subset
    labels = torch.cat([torch.full((s,), c) for c, s in enumerate(sizes)])
    centres = torch.randn(len(sizes), 16, generator=g, dtype=torch.float64)
    x = centres[labels] + 0.8 * torch.randn(len(labels), 16, generator=g, dtype=torch.float64)
    split = FeatureSplit(x.numpy(), labels.numpy(), [f"c{c}" for c in range(len(sizes))])
    results = {}
    for reference in (True, False):
        torch.manual_seed(0)
        model = LEO(BASE.replace(reference=reference), embedding_dim=16, n_way=5)
        model = model.to(torch.float64)
        results[reference] = evaluate(
            model, split, n_way=5, k_shot=k, n_query=n_query, tasks=23, batch_size=4, seed=[3]
        )
    ref, fast_ = results[True], results[False]
    assert fast_.tasks == ref.tasks == 23
    assert fast_.queries_per_class == ref.queries_per_class == (n_query or 9 - k)
    assert 0.2 < ref.accuracy < 1.0  # a real signal, not all-wrong or all-right
    np.testing.assert_allclose(fast_.per_task, ref.per_task, rtol=0, atol=1e-12)
    assert fast_.loss == pytest.approx(ref.loss, rel=1e-10)


def test_evaluation_calls_an_overridden_forward_and_leaves_baselines_alone():
    class Wrapped(LEO):
        def forward(self, batch):
            return super().forward(batch)

    model = Wrapped(BASE, embedding_dim=16, n_way=5)
    assert fast.applies(model) and not fast.evaluates(model)  # forward's own fast path stays
    assert fast.evaluates(LEO(BASE, embedding_dim=16, n_way=5))
    assert not fast.applies(torch.nn.Linear(2, 2))


def test_replace_accepts_the_old_switch_name():
    assert LEOConfig().replace(inner_gradient="autograd").reference is True
    assert LEOConfig(reference=True).replace(inner_gradient="analytic").reference is False


def test_a_run_recorded_with_the_old_switch_name_can_be_resumed():
    from leo_tutorial.rundir import check_resume, run_record

    record = run_record(LEOConfig(), TrainConfig(), {}, 16)
    saved = json.loads(json.dumps(record))
    del saved["leo_config"]["reference"]
    saved["leo_config"]["inner_gradient"] = "analytic"
    check_resume(saved, record)  # the same run: no error
    saved["leo_config"]["inner_gradient"] = "autograd"
    with pytest.raises(UserError, match="reference: run has True, now False"):
        check_resume(saved, record)
