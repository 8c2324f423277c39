"""The latent-space functions of notebook 08 (and their figures): exact where the maths allows."""

import json

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from leo_tutorial import LEO, LEOConfig, UserError, latent, losses, viz  # noqa: E402
from leo_tutorial.data import EpisodeSampler, SyntheticConfig, make_synthetic_bank  # noqa: E402
from leo_tutorial.rundir import load_run  # noqa: E402
from leo_tutorial.sources import ASSETS, glyphs_spec  # noqa: E402

SMALL = SyntheticConfig(
    n_train_classes=12,
    n_val_classes=8,
    n_test_classes=8,
    images_per_class=20,
    dim=16,
    subspace_dim=4,
    class_scale=1.5,
)


@pytest.fixture(scope="module")
def bank():
    return make_synthetic_bank(SMALL)


def test_shipped_glyph_run_is_a_complete_small_run():
    run = ASSETS / "glyphs_leo_1shot"
    model, record = load_run(run)
    assert record["data"] == json.loads(json.dumps(glyphs_spec())), (
        "the glyph data changed: run scripts/train_shipped_runs.py"
    )
    assert (model.embedding_dim, model.n_way) == (record["embedding_dim"], 5)
    metrics = json.loads((run / "metrics.json").read_text())
    test = json.loads((run / "test.json").read_text())
    best = max(metrics["val"], key=lambda h: h["accuracy"])
    assert (
        best["step"] == test["best_step"] == torch.load(run / "best.pt", weights_only=True)["step"]
    )
    assert test["tasks"] == record["train_config"]["test_tasks"] and test["shot"] == 1
    assert 0.2 < test["accuracy"] <= 1.0
    assert sum(f.stat().st_size for f in run.iterdir()) < 1_000_000


def small_model(dtype=torch.float64, **changes):
    torch.manual_seed(0)
    return LEO(
        LEOConfig(num_latents=6, inner_unroll_length=3, **changes),
        embedding_dim=16,
        n_way=4,
        dtype=dtype,
    )


def tasks(bank, k_shot=1, count=3, seed=0, dtype=torch.float64):
    sampler = EpisodeSampler(bank.split("val"), n_way=4, k_shot=k_shot, n_query=5)
    return sampler.sample(count, seed).to(dtype=dtype)


@pytest.mark.parametrize("k_shot", [1, 3])
def test_inner_step_is_the_models_latent_step(bank, k_shot):
    model = small_model().train()  # the helper must switch to eval mode itself
    batch = tasks(bank, k_shot)
    model.eval()
    with torch.no_grad():
        z, _, _ = model.forward_encoder(batch.support_x)
        reference = model.leo_inner_loop(batch.support_x, batch.support_y, z).z_trajectory
    model.train()
    for step in range(3):
        z = latent.inner_step(model, batch.support_x, batch.support_y, z)
        torch.testing.assert_close(z, reference[step + 1])
    assert model.training  # mode restored


def test_task_trajectory_records_every_step(bank):
    model = small_model()
    batch = tasks(bank)
    path = latent.task_trajectory(model, batch.task(1), steps=6)
    assert path.steps == 6
    assert path.z.shape == (7, 4, 6) and path.w.shape == (7, 4, 16)
    assert path.query_probs.shape == (7, 4, 5, 4)
    np.testing.assert_allclose(path.query_probs.sum(-1), 1.0)
    labels = np.arange(4)[:, None]
    accuracy = (path.query_probs.argmax(-1) == labels).mean(axis=(1, 2))
    np.testing.assert_allclose(path.query_accuracy, accuracy)
    with torch.no_grad():
        out = model.eval()(batch.task(1))
    np.testing.assert_allclose(path.z[:4], torch.stack(out.z_trajectory)[:, 0, :, 0].numpy())
    np.testing.assert_allclose(path.w[3], out.w_adapted[0, :, 0].numpy())
    assert path.support_loss[-1] < path.support_loss[0]  # adaptation fits the support set
    with pytest.raises(UserError, match="one task"):
        latent.task_trajectory(model, batch)


def test_collect_codes_matches_the_forward_pass(bank):
    model = small_model(dtype=torch.float32)
    codes = latent.collect_codes(
        model, bank.split("val"), n_way=4, k_shot=2, n_query=5, tasks=7, batch_size=3, seed=4
    )
    assert codes.z_trajectory.shape == (7, 4, 4, 6)
    assert codes.z.shape == codes.z_prime.shape == (7, 4, 6) and codes.classes.shape == (7, 4)
    sampler = EpisodeSampler(bank.split("val"), 4, 2, 5)
    parts = list(sampler.iter_batches(7, 3, seed=4))
    batch = type(parts[0])(
        *[
            torch.cat([getattr(p, f) for p in parts])
            for f in ("support_x", "support_y", "query_x", "query_y", "classes")
        ]
    )
    with torch.no_grad():
        out = model.eval()(batch)
        before = losses.accuracy(model.predict(batch.query_x, out.w_init), batch.query_y)
        z_prime = torch.tensor(codes.z_prime, dtype=torch.float32)[:, :, None].expand(-1, -1, 2, -1)
        _, w = model.forward_decoder(z_prime, batch.support_x, batch.support_y)
        after = losses.accuracy(model.predict(batch.query_x, w), batch.query_y)
    np.testing.assert_allclose(codes.z_prime, out.z_trajectory[-1][:, :, 0].numpy(), atol=1e-6)
    np.testing.assert_array_equal(codes.classes, batch.classes.numpy())
    np.testing.assert_allclose(codes.accuracy_before, before.numpy(), atol=1e-6)
    np.testing.assert_allclose(codes.accuracy_after, after.numpy(), atol=1e-6)
    assert codes.class_names == bank.split("val").class_names


def test_pca_finds_the_principal_axes():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 3)) * [5.0, 2.0, 0.1] + [1.0, -2.0, 3.0]
    pca = latent.fit_pca(x)
    np.testing.assert_allclose(np.abs(pca.components), [[1, 0, 0], [0, 1, 0]], atol=0.03)
    assert (pca.components[np.arange(2), np.abs(pca.components).argmax(1)] > 0).all()
    assert 0.8 < pca.explained[0] < 0.9 and pca.explained.sum() < 1
    np.testing.assert_allclose(pca(x).mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(latent.fit_pca(-x).components, pca.components)  # signs fixed
    assert pca(x.reshape(50, 10, 3)).shape == (50, 10, 2)
    with pytest.raises(UserError, match="more codes"):
        latent.fit_pca(x[:1])


def test_tsne_keeps_clusters_apart():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, (30, 8)), rng.normal(20, 1, (30, 8))])
    y = latent.tsne(x, seed=0)
    assert y.shape == (60, 2)
    d = np.linalg.norm(y[:, None] - y[None], axis=-1) + np.eye(60) * 1e9
    nearest = d.argmin(axis=1)
    assert ((nearest < 30) == (np.arange(60) < 30)).all()
    np.testing.assert_allclose(latent.tsne(x, seed=0), y)


def test_within_task_separation_exact_values():
    grid = np.array([[[0.0, 0.0], [1.0, 0.0]], [[0.0, 1.0], [1.0, 1.0]]])  # [T=2, N=2, Z=2]
    assert latent.within_task_separation(grid) == pytest.approx(1.0)
    squeezed = grid * [0.25, 1.0]  # classes of a task 4x closer, tasks as far apart
    assert latent.within_task_separation(squeezed) == pytest.approx(0.25)
    same = np.repeat(np.arange(3.0)[:, None, None], 4, axis=1).repeat(5, axis=2)
    assert latent.within_task_separation(same) == 0.0
    with pytest.raises(UserError):
        latent.within_task_separation(grid[:1])


def test_class_silhouette():
    rng = np.random.default_rng(1)
    classes = np.repeat([0, 1, 2], 20)
    centres = np.array([[0, 0], [50, 0], [0, 50]])
    assert latent.class_silhouette(centres[classes] + rng.normal(size=(60, 2)), classes) > 0.9
    assert abs(latent.class_silhouette(rng.normal(size=(60, 2)), classes)) < 0.1
    rare = np.r_[classes, [7, 7]]  # class 7 seen twice: left out, not an error
    x = np.r_[centres[classes], [[1e3, 1e3], [-1e3, 1e3]]]
    assert latent.class_silhouette(x, rare) == pytest.approx(1.0)
    with pytest.raises(UserError, match="more tasks"):
        latent.class_silhouette(x[:20], classes[:20])


def test_interpolation_ends_with_two_identical_classifiers(bank):
    model = small_model()
    batch = tasks(bank)
    task = batch.task(0)
    with torch.no_grad():
        z, _, _ = model.eval().forward_encoder(task.support_x)
    t, probs = latent.interpolate_class_code(model, task, z, a=1, b=3, points=5)
    np.testing.assert_allclose(t, [0, 0.25, 0.5, 0.75, 1])
    assert probs.shape == (5, 4, 4)
    np.testing.assert_allclose(probs.sum(-1), 1.0)
    np.testing.assert_allclose(probs[-1, :, 1], probs[-1, :, 3])  # w_1 = w_3 at t = 1
    with torch.no_grad():
        _, w = model.forward_decoder(z, task.support_x, task.support_y)
        start = torch.softmax(model.predict(task.query_x, w)[0], -1).mean(1)
    np.testing.assert_allclose(probs[0], start.numpy())
    with pytest.raises(UserError, match="two different classes"):
        latent.interpolate_class_code(model, task, z, a=2, b=2)


def test_weight_samples_follow_the_decoder_distribution(bank):
    model = small_model()
    task = tasks(bank).task(0)
    with torch.no_grad():
        z, _, _ = model.eval().forward_encoder(task.support_x)
        mean, std, _ = model.gaussian_params(model.decoder(z), model.decoder_stddev_offset)
    w = latent.weight_samples(model, z, samples=4000, seed=1)
    assert w.shape == (4000, 4, 1, 16)
    se = std[0] / 4000**0.5
    assert ((w.mean(0) - mean[0]).abs() < 5 * se + 1e-12).all()
    torch.testing.assert_close(w.std(0), std[0], rtol=0.08, atol=1e-9)
    torch.testing.assert_close(latent.weight_samples(model, z, 4000, seed=1), w)


def test_latent_figures_are_labelled(bank):
    model = small_model()
    path = latent.task_trajectory(model, tasks(bank).task(0), steps=4)
    fig = viz.explorer_figure(path, 2, latent.fit_pca(path.z))
    assert [ax.get_xlabel() for ax in fig.axes[:3]] == [
        "PC 1",
        "embedding dimension",
        "predicted label (mean probability)",
    ]
    _, axes = plt.subplots(1, 3)
    viz.scatter_codes(
        axes[0], np.zeros((4, 2)), np.array([0, 1, -1, 0]), ["a", "b"], "t", xlabel="x", ylabel="y"
    )
    assert [t.get_text() for t in axes[0].get_legend().get_texts()] == ["other classes", "a", "b"]
    viz.plot_code_paths(axes[1], latent.fit_pca(path.z)(path.z)[None])
    viz.plot_interpolation(
        axes[2],
        *latent.interpolate_class_code(
            model, tasks(bank).task(0), torch.tensor(path.z[:1, :, None]), 0, 1
        ),
        a=0,
        b=1,
    )
    assert all(ax.get_title() and ax.get_xlabel() and ax.get_ylabel() for ax in axes)
    plt.close("all")
