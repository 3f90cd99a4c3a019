"""The VQ-GAN train step: sharded == single device, learning, global held-out figures, and
kill-and-resume."""
import functools
import itertools
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import vqgan_tiny
from ganime_jax import checkpointing, mesh as mesh_lib
from ganime_jax.data import pipeline, pixels, tfds_io
from ganime_jax.losses import gan
from ganime_jax.losses.perceptual import load_lpips_params
from ganime_jax.train import vqgan_step, vqgan_task
from ganime_jax.train.vqgan_task import VQGANTask, build_models, compile_train_step
from resume_helpers import check_killed_run_resumes, main_command

pytestmark = pytest.mark.costly(seconds=235)


@pytest.fixture(scope="module")
def setup():
    config = vqgan_tiny.get_config()
    fns = build_models(config)
    frames = np.random.default_rng(0).integers(
        0, 256, (8, config.data.height, config.data.width, 3), dtype=np.uint8)
    return config, fns, frames, load_lpips_params()


def _run_steps(setup, devices, num_steps: int, use_disc: bool, use_perceptual: bool = True,
               fsdp: int = 1):
    config, _, frames, lpips_params = setup
    mesh = mesh_lib.make_mesh(ml_collections.ConfigDict({"data": -1, "fsdp": fsdp}), devices)
    task = VQGANTask(config, mesh)
    state = task.init_state(jax.random.key(0))
    batch = {"frames": jax.device_put(frames, mesh_lib.batch_sharding(mesh))}
    lpips = jax.device_put(lpips_params, mesh_lib.replicated(mesh))
    step = compile_train_step(task.fns, config, mesh, task.state_shardings, use_disc,
                              use_perceptual)
    history = []
    for i in range(num_steps):
        state, metrics = step(state, batch, jax.random.key(i), lpips)
        history.append(jax.device_get(metrics))
    return jax.device_get(state), history


def test_fsdp_shards_kernels_and_codebook_and_replicates_the_rest(setup):
    config, fns, frames, _ = setup
    mesh = mesh_lib.make_mesh(ml_collections.ConfigDict({"data": 4, "fsdp": 2}))
    abstract = jax.eval_shape(lambda key: vqgan_step.init_state(
        key, fns, frames.shape[1:], config.model.num_embeddings), jax.random.key(0))
    shardings = vqgan_task.state_shardings(abstract, mesh, mesh_lib.axis_rules(config.mesh))
    pairs = list(zip(jax.tree.leaves(abstract), jax.tree.leaves(shardings)))
    sharded = [leaf for leaf, s in pairs if mesh_lib.FSDP_AXIS in s.spec]
    # every kernel of at least 2 output features (and Adam's moments of it) is split
    assert all(leaf.ndim >= 2 and leaf.shape[-1] % 2 == 0 for leaf in sharded)
    assert sum(leaf.size for leaf in sharded) > 0.9 * sum(leaf.size for leaf, _ in pairs)
    assert all(s.spec == jax.sharding.PartitionSpec() for leaf, s in pairs if leaf.ndim < 2)
    assert shardings.gen_params["quantize"]["embedding"].spec == jax.sharding.PartitionSpec(
        None, mesh_lib.FSDP_AXIS)
    # the RGB output conv has 3 features: replicated
    assert shardings.gen_params["decoder"]["conv_out"]["kernel"].spec == jax.sharding.PartitionSpec()


def test_eight_device_fsdp_step_equals_one_device_step(setup):
    # Adam turns the rounding noise of gradients that are exactly zero in theory (attention key
    # biases, say) into full +-lr steps; a large eps makes the update linear in small gradients,
    # so parameters can be compared tightly.
    assert len(jax.devices()) == 8
    config, fns, frames, lpips_params = setup
    linear_config = ml_collections.ConfigDict(config.to_dict())
    linear_config.optimizer.eps = 1.0
    linear = (linear_config, build_models(linear_config), frames, lpips_params)
    one_state, one_metrics = _run_steps(linear, jax.devices()[:1], 2, use_disc=True)
    eight_state, eight_metrics = _run_steps(linear, jax.devices(), 2, use_disc=True, fsdp=2)
    # From the same state, every metric of the step agrees to float rounding. (Later steps'
    # adaptive weight is a ratio of small gradient norms that amplifies that rounding.)
    for key in ("loss", "rec_loss", "quantizer_loss", "g_loss", "d_weight", "d_loss",
                "gen_grad_norm"):
        np.testing.assert_allclose(one_metrics[0][key], eight_metrics[0][key],
                                   rtol=1e-5, err_msg=key)
    np.testing.assert_allclose(one_metrics[1]["rec_loss"], eight_metrics[1]["rec_loss"],
                               rtol=1e-5)
    leaves_one = jax.tree.leaves(one_state.gen_params) + jax.tree.leaves(one_state.disc_params)
    leaves_eight = jax.tree.leaves(eight_state.gen_params) + jax.tree.leaves(eight_state.disc_params)
    for a, b in zip(leaves_one, leaves_eight):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_l1_only_phase_skips_lpips(setup):
    config = setup[0]
    _, (with_lpips,) = _run_steps(setup, jax.devices()[:1], 1, use_disc=False)
    _, (l1_only,) = _run_steps(setup, jax.devices()[:1], 1, use_disc=False,
                               use_perceptual=False)
    assert "lpips" not in l1_only and with_lpips["lpips"] > 0
    # Same state and batch: the same reconstruction, so the same L1; LPIPS is added on top.
    np.testing.assert_allclose(l1_only["l1"], with_lpips["l1"], rtol=1e-6)
    np.testing.assert_allclose(l1_only["rec_loss"], config.loss.l1_weight * l1_only["l1"],
                               rtol=1e-6)
    np.testing.assert_allclose(
        with_lpips["rec_loss"],
        config.loss.l1_weight * with_lpips["l1"]
        + config.loss.perceptual_weight * with_lpips["lpips"], rtol=1e-5)
    loss_cfg = ml_collections.ConfigDict({"perceptual_start": 3, "disc_start": 5})
    assert [vqgan_task.training_phase(loss_cfg, s) for s in (0, 2, 3, 4, 5)] == [
        (False, False), (False, False), (True, False), (True, False), (True, True)]


def test_autoencoder_steps_reduce_the_loss_and_restart_dead_codes(setup):
    _, history = _run_steps(setup, jax.devices()[:1], 12, use_disc=False)
    assert history[-1]["rec_loss"] < 0.8 * history[0]["rec_loss"]
    assert all(np.isfinite(h["loss"]) for h in history)
    # The tiny config restarts codes every 2 steps; one batch cannot use all 32 codes.
    restart_every = setup[0].codebook.restart_every
    assert [h["codes_restarted"] > 0 for h in history[:2]] == [False, True]
    assert all(h["codes_restarted"] == 0 for i, h in enumerate(history)
               if (i + 1) % restart_every)


def test_evaluation_covers_the_global_batch(setup, stage1_workdirs):
    """Held-out figures on a 4x2 mesh equal per-frame figures computed on one device (the
    stage-1 checkpoint holds a random generator)."""
    config = ml_collections.ConfigDict(setup[0].to_dict())
    config.data.data_root = stage1_workdirs["data_root"]
    config.eval.split = "train"  # 27 frames: 3 batches of 8 (the test split has 10)
    config.eval.num_batches = 2
    mesh = mesh_lib.make_mesh(ml_collections.ConfigDict({"data": 4, "fsdp": 2}))
    task = VQGANTask(config, mesh)
    with checkpointing.make_manager(stage1_workdirs["workdir"], every=1, keep=1) as manager:
        state, _, _ = checkpointing.restore_latest(manager, task.abstract_state(), config)
    result = task.evaluate(state)

    options = pipeline.LoaderOptions(seed=0, shuffle=False, num_epochs=1, read_threads=0)
    loader = pipeline.frames_loader(
        config.data.data_root, tfds_io.variant_name(config.data.dataset, "frames"),
        config.eval.split, global_batch_size=config.eval.batch_size, options=options)
    frames = np.concatenate([b["frames"] for b in itertools.islice(loader, 2)])
    one_device = jax.device_put((jax.device_get(state.gen_params), frames, setup[3]),
                                jax.devices()[0])
    eval_batch = jax.jit(functools.partial(vqgan_task._eval_batch, fns=task.fns))
    per_frame = jax.device_get(eval_batch(*one_device)[1])
    assert result["num_frames"] == len(frames) == 2 * config.eval.batch_size
    for key in ("psnr", "lpips", "l1"):
        np.testing.assert_allclose(result[key], np.mean(per_frame[key]), rtol=1e-5, err_msg=key)
    used = np.unique(per_frame["indices"])
    assert result["codebook_usage"] == len(used) / config.model.num_embeddings


def test_killed_run_resumes_with_identical_losses(tmp_path):
    num_steps = 8

    def command(workdir: pathlib.Path) -> list[str]:
        return main_command("configs/vqgan_tiny.py", workdir,
                            f"--config.data.data_root={tmp_path / 'datasets'}",
                            f"--config.train.num_steps={num_steps}",
                            "--config.train.checkpoint_every=2", "--config.eval.every=1000")

    check_killed_run_resumes(command, tmp_path, num_steps, ("loss", "rec_loss", "quantizer_loss"))


def test_generator_gradients_equal_full_differentiation(setup):
    """The one-backward-pass step gives the gradients of differentiating the whole loss."""
    config, fns, frames, lpips_params = setup
    frame_shape = frames.shape[1:]
    state = mesh_lib.run_once(lambda key: vqgan_step.init_state(
        key, fns, frame_shape, config.model.num_embeddings), jax.random.key(1))
    x = pixels.to_unit(jnp.asarray(frames))
    loss_cfg = config.loss
    kernel_path = ("decoder", "conv_out", "kernel")

    def terms(params):
        recon, aux = fns.model.apply({"params": params}, x, train=True)
        nll = vqgan_step.reconstruction_losses(x, recon, lpips_params, loss_cfg)["rec_loss"]
        g = gan.generator_adv_loss(fns.disc.apply({"params": state.disc_params}, recon))
        return nll, g, aux["quantizer_loss"]

    def reference(params, weight):
        """Each term's gradient, and the gradient of the whole loss with adaptive `weight`."""
        def total(p):
            nll, g, q = terms(p)
            return nll + loss_cfg.codebook_weight * q + weight * loss_cfg.disc_factor * g

        return (jax.grad(lambda p: terms(p)[0])(params), jax.grad(lambda p: terms(p)[1])(params),
                jax.grad(total)(params))

    reference_grads = jax.jit(reference)
    nll_grads, g_grads, _ = reference_grads(state.gen_params, np.float32(0.0))
    kernel = lambda tree: tree[kernel_path[0]][kernel_path[1]][kernel_path[2]]  # noqa: E731
    expected_weight = loss_cfg.disc_weight * np.clip(
        np.linalg.norm(kernel(nll_grads)) / (np.linalg.norm(kernel(g_grads)) + 1e-4), 0.0, 1e4)

    def ours(params):
        def generator(p):
            recon, aux = fns.model.apply({"params": p}, x, train=True)
            return (recon, aux["quantizer_loss"]), aux

        (recon, q), vjp, aux = jax.vjp(generator, params, has_aux=True)
        recon_grad, metrics = vqgan_step.generator_losses(
            x, recon, q, aux, state, lpips_params, fns, loss_cfg, use_disc=True)
        return vjp((recon_grad, jnp.asarray(loss_cfg.codebook_weight, q.dtype)))[0], metrics

    grads, metrics = jax.jit(ours)(state.gen_params)
    np.testing.assert_allclose(metrics["d_weight"], expected_weight, rtol=1e-4)
    _, _, expected_grads = reference_grads(state.gen_params, np.float32(expected_weight))
    scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(expected_grads))
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(expected_grads)):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5 * scale)
