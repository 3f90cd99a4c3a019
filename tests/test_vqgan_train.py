"""The VQ-GAN train step: sharded == single device, learning, and kill-and-resume."""
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import vqgan_tiny
from ganime_jax.losses import gan
from ganime_jax.losses.perceptual import load_lpips_params
from ganime_jax.train import mesh as mesh_lib, vqgan_step
from ganime_jax.train.summary import read_metrics
from ganime_jax.train.vqgan_task import (build_models, compile_train_step,
                                        init_replicated_state)

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup():
    config = vqgan_tiny.get_config()
    fns = build_models(config)
    frames = np.random.default_rng(0).integers(
        0, 256, (8, config.data.height, config.data.width, 3), dtype=np.uint8)
    return config, fns, frames, load_lpips_params()


def _run_steps(setup, devices, num_steps: int, use_disc: bool):
    config, fns, frames, lpips_params = setup
    mesh = mesh_lib.make_mesh(ml_collections.ConfigDict({"data": -1, "fsdp": 1}), devices)
    state, shardings = init_replicated_state(fns, config, mesh, frames.shape[1:],
                                             jax.random.key(0))
    step = compile_train_step(fns, config, mesh, shardings, use_disc)
    batch = {"frames": jax.device_put(frames, mesh_lib.batch_sharding(mesh))}
    lpips = jax.device_put(lpips_params, mesh_lib.replicated(mesh))
    history = []
    for i in range(num_steps):
        state, metrics = step(state, batch, jax.random.key(i), lpips)
        history.append(jax.device_get(metrics))
    return jax.device_get(state), history


def test_eight_device_step_equals_one_device_step(setup):
    # Adam turns the rounding noise of gradients that are exactly zero in theory (attention key
    # biases, say) into full +-lr steps; a large eps makes the update linear in small gradients,
    # so parameters can be compared tightly.
    assert len(jax.devices()) == 8
    config, fns, frames, lpips_params = setup
    linear_config = ml_collections.ConfigDict(config.to_dict())
    linear_config.optimizer.eps = 1.0
    linear = (linear_config, build_models(linear_config), frames, lpips_params)
    one_state, one_metrics = _run_steps(linear, jax.devices()[:1], 2, use_disc=True)
    eight_state, eight_metrics = _run_steps(linear, jax.devices(), 2, use_disc=True)
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


def test_autoencoder_steps_reduce_the_loss_and_restart_dead_codes(setup):
    _, history = _run_steps(setup, jax.devices()[:1], 12, use_disc=False)
    assert history[-1]["rec_loss"] < 0.8 * history[0]["rec_loss"]
    assert all(np.isfinite(h["loss"]) for h in history)
    # The tiny config restarts codes every 2 steps; one batch cannot use all 32 codes.
    restart_every = setup[0].codebook.restart_every
    assert [h["codes_restarted"] > 0 for h in history[:2]] == [False, True]
    assert all(h["codes_restarted"] == 0 for i, h in enumerate(history)
               if (i + 1) % restart_every)


def _train_command(workdir: pathlib.Path, data_root: pathlib.Path, num_steps: int) -> list[str]:
    return [sys.executable, str(REPO / "main.py"), "--config=configs/vqgan_tiny.py",
            f"--workdir={workdir}", f"--config.data.data_root={data_root}",
            f"--config.train.num_steps={num_steps}", "--config.train.checkpoint_every=2",
            "--config.eval.every=1000"]


def test_killed_run_resumes_with_identical_losses(tmp_path):
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax_cache"),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "XLA_FLAGS": ""}
    data_root, num_steps = tmp_path / "datasets", 8
    reference = subprocess.run(_train_command(tmp_path / "ref", data_root, num_steps), cwd=REPO,
                               env=env, capture_output=True, text=True, timeout=600)
    assert reference.returncode == 0, reference.stderr[-3000:]

    workdir = tmp_path / "killed"
    process = subprocess.Popen(_train_command(workdir, data_root, num_steps), cwd=REPO, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while not any(p.name.isdigit() for p in (workdir / "checkpoints").glob("*")):
        assert process.poll() is None, "the run ended before writing a checkpoint"
        assert time.time() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_steps = sorted(read_metrics(workdir))
    assert killed_steps and killed_steps[-1] < num_steps, "the run was not interrupted"

    resumed = subprocess.run(_train_command(workdir, data_root, num_steps), cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from the checkpoint of step" in resumed.stdout
    expected, got = read_metrics(tmp_path / "ref"), read_metrics(workdir)
    assert sorted(got) == list(range(1, num_steps + 1))
    for step in range(1, num_steps + 1):
        for key in ("loss", "rec_loss", "quantizer_loss"):
            np.testing.assert_allclose(got[step][key], expected[step][key], rtol=1e-6,
                                       err_msg=f"step {step} {key}")


def test_generator_gradients_equal_full_differentiation(setup):
    """The one-backward-pass step gives the gradients of differentiating the whole loss."""
    config, fns, frames, lpips_params = setup
    frame_shape = frames.shape[1:]
    state = vqgan_step.init_state(jax.random.key(1), fns, frame_shape,
                                  config.model.num_embeddings)
    x = vqgan_step.frames_to_float(jnp.asarray(frames))
    loss_cfg = config.loss
    kernel_path = ("decoder", "conv_out", "kernel")

    def terms(params):
        recon, aux = fns.model.apply({"params": params}, x, train=True)
        nll = vqgan_step.reconstruction_losses(x, recon, lpips_params, loss_cfg)["rec_loss"]
        g = gan.generator_adv_loss(fns.disc.apply({"params": state.disc_params}, recon))
        return nll, g, aux["quantizer_loss"]

    nll_grads = jax.grad(lambda p: terms(p)[0])(state.gen_params)
    g_grads = jax.grad(lambda p: terms(p)[1])(state.gen_params)
    kernel = lambda tree: tree[kernel_path[0]][kernel_path[1]][kernel_path[2]]  # noqa: E731
    expected_weight = loss_cfg.disc_weight * np.clip(
        np.linalg.norm(kernel(nll_grads)) / (np.linalg.norm(kernel(g_grads)) + 1e-4), 0.0, 1e4)

    @jax.jit
    def ours(params):
        def generator(p):
            recon, aux = fns.model.apply({"params": p}, x, train=True)
            return (recon, aux["quantizer_loss"]), aux

        (recon, q), vjp, aux = jax.vjp(generator, params, has_aux=True)
        recon_grad, metrics = vqgan_step.generator_losses(
            x, recon, q, aux, state, lpips_params, fns, loss_cfg, use_disc=True)
        return vjp((recon_grad, jnp.asarray(loss_cfg.codebook_weight, q.dtype)))[0], metrics

    grads, metrics = ours(state.gen_params)
    np.testing.assert_allclose(metrics["d_weight"], expected_weight, rtol=1e-4)

    def total(params):
        nll, g, q = terms(params)
        return nll + loss_cfg.codebook_weight * q + expected_weight * loss_cfg.disc_factor * g

    expected_grads = jax.grad(total)(state.gen_params)
    scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(expected_grads))
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(expected_grads)):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5 * scale)
