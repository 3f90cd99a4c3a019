"""Tiny stage-2 checkpoints for tests: random parameters saved as a training run saves them."""
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ganime_jax.train import checkpointing, gpt_step
from ganime_jax.train.gpt_task import build_fns, build_model


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
    k, hw = transformer.n_frames_before, transformer.frame_tokens
    inputs = [jax.ShapeDtypeStruct(shape, jnp.int32) for shape in ((1, hw), (1, k, hw), (1,))]
    params = random_params(transformer, *inputs, std=0.5)
    opt_state = build_fns(params_config or config).tx.init(params)
    state = gpt_step.GPTState(step=jnp.int32(step), params=params, opt_state=opt_state)
    save_checkpoint(path, state, config, step)
    return str(path)
