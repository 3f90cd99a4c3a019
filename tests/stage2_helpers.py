"""Tiny stage-2 checkpoints for tests: random parameters saved as a training run saves them."""
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ganime_jax import checkpointing, mesh as mesh_lib
from ganime_jax.models.frame_layouts import example_inputs
from ganime_jax.train import gpt_step
from ganime_jax.train.gpt_task import GPTTask, build_fns, build_model


def save_checkpoint(workdir: str | pathlib.Path, state, config: ml_collections.ConfigDict,
                    step: int = 1) -> None:
    manager = checkpointing.make_manager(workdir, every=1, keep=1, async_save=False)
    checkpointing.save(manager, step, state, None, config, force=True)
    manager.wait_until_finished()
    manager.close()


def random_params(module: nn.Module, *inputs, std: float):
    """Random normal parameters of `module`'s shapes (an init would compile the model)."""
    abstract = nn.unbox(jax.eval_shape(module.init, jax.random.key(0), *inputs)["params"])
    rng = np.random.default_rng(0)
    return jax.tree.map(lambda x: rng.normal(0, std, x.shape).astype(x.dtype), abstract)


def gpt_workdir(path: str | pathlib.Path, config: ml_collections.ConfigDict,
                params_config: ml_collections.ConfigDict | None = None, step: int = 1) -> str:
    """A stage-2 workdir whose checkpoint holds a whole train state (params and AdamW state)
    with random parameters of `params_config`'s model (default: `config`'s)."""
    transformer = build_model((params_config or config).model)
    inputs = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in example_inputs(transformer)]
    params = random_params(transformer, *inputs, std=0.5)
    opt_state = build_fns(params_config or config).tx.init(params)
    state = gpt_step.GPTState(step=jnp.int32(step), params=params, opt_state=opt_state)
    save_checkpoint(path, state, config, step)
    return str(path)


def mesh_of(data: int, fsdp: int) -> jax.sharding.Mesh:
    devices = jax.devices()[:data * fsdp]
    return mesh_lib.make_mesh(ml_collections.ConfigDict({"data": data, "fsdp": fsdp}), devices)


def train_on_batch(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, tokens, n_frames,
                   steps: list[int]):
    """Runs GPTTask.train_step on one batch at the given host step numbers.

    Returns (params after each step, metrics of each step, the task, the last state).
    """
    task = GPTTask(config, mesh)
    state = task.init_state(jax.random.key(0))
    batch = {"tokens": jax.device_put(tokens, task.batch_shardings["tokens"]),
             "n_frames": jax.device_put(n_frames, task.batch_shardings["n_frames"])}
    params, history = [], []
    for step in steps:
        state, metrics = task.train_step(state, batch, jax.random.key(step), step)
        params.append(jax.device_get(state.params))
        history.append(jax.device_get(metrics))
    return params, history, task, state


def assert_same_training(a, b, keys=("loss", "accuracy", "grad_norm", "own_predictions")):
    """Two (params list, metrics list) of `train_on_batch` agree step by step."""
    (params_a, history_a), (params_b, history_b) = a, b
    assert len(history_a) == len(history_b)
    for metrics_a, metrics_b in zip(history_a, history_b):
        for key in keys:
            np.testing.assert_allclose(metrics_a[key], metrics_b[key], rtol=1e-5, err_msg=key)
    for leaf_a, leaf_b in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b)):
        np.testing.assert_allclose(leaf_a, leaf_b, rtol=1e-4, atol=1e-6)


def steps_reduce_the_loss(task: GPTTask, state, tokens_shape, n_frames) -> list[float]:
    """Losses of 8 steps on one batch drawn from 4 of the codes (easy to fit)."""
    tokens = np.random.default_rng(2).integers(0, 4, tokens_shape)
    batch = {"tokens": jax.device_put(tokens, task.batch_shardings["tokens"]),
             "n_frames": jax.device_put(n_frames, task.batch_shardings["n_frames"])}
    losses = []
    for i in range(8):
        state, metrics = task.train_step(state, batch, jax.random.key(i), 0)
        losses.append(float(metrics["loss"]))
    return losses
