"""Test setup: 8 fake CPU devices so that sharded code paths run on any machine, compiled for
speed of compiling (compile_flags.py), and one JAX compilation cache for the whole session
(this process and the `main.py` runs it starts): tests that build the same step (same program,
shapes and devices) compile it once; modules scheduled longest first, on cores + 1 workers."""
import atexit
import os
import shutil
import tempfile

import pytest

from compile_flags import FAST_COMPILE_XLA_FLAGS

os.environ.setdefault("XLA_FLAGS",
                      f"--xla_force_host_platform_device_count=8 {FAST_COMPILE_XLA_FLAGS}")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache_dir = tempfile.mkdtemp(prefix="ganime_jax_test_cache_")
    atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache_dir
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"


@pytest.fixture(scope="session")
def stage1_workdirs(tmp_path_factory) -> dict:
    """Stage-2 tests' frozen tokenizers: the tiny clips dataset (configs/vqgan_tiny.py's
    embedded settings) and two stage-1 workdirs whose checkpoints hold randomly initialised
    tiny VQ-GANs (seeds 0 and 1) in a stage-1 train state (the other parts zero-filled), saved
    as a stage-1 run saves them. Returns {"data_root", "workdir", "other_workdir"}.
    """
    import jax
    import jax.numpy as jnp

    from configs import vqgan_tiny
    from ganime_jax import checkpointing
    from ganime_jax.train import entry, vqgan_step
    from ganime_jax.train.vqgan_task import build_models

    root = tmp_path_factory.mktemp("stage1")
    config = vqgan_tiny.get_config()
    config.data.data_root = str(root / "datasets")
    entry.ensure_dataset(config.data)
    fns = build_models(config)
    frame_shape = (config.data.height, config.data.width, config.model.in_channels)
    abstract = jax.eval_shape(lambda rng: vqgan_step.init_state(
        rng, fns, frame_shape, config.model.num_embeddings), jax.random.key(0))
    zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), abstract)
    init_gen = jax.jit(fns.model.init)  # "rbg" keys: compiles several times faster on CPU
    paths = {}
    for name, seed in (("workdir", 0), ("other_workdir", 1)):
        gen_params = init_gen(jax.random.key(seed, impl="rbg"),
                              jnp.zeros((1, *frame_shape)))["params"]
        workdir = root / f"vqgan_tiny_seed{seed}"
        checkpointing.write_config(workdir, config)
        manager = checkpointing.make_manager(workdir, every=1, keep=1)
        checkpointing.save(manager, 1, zeros.replace(gen_params=gen_params), None, config,
                           force=True)
        manager.wait_until_finished()
        manager.close()
        paths[name] = str(workdir)
    return {"data_root": config.data.data_root, **paths}


def pytest_collection_modifyitems(items) -> None:
    """Modules marked `costly` first, longest first (a stable sort keeps each module's order):
    xdist hands out whole modules in this order, and a long module started last would leave
    the other worker idle."""
    def cost(item) -> float:
        marker = item.get_closest_marker("costly")
        return -marker.kwargs["seconds"] if marker else 0.0

    items.sort(key=cost)


def pytest_xdist_auto_num_workers(config) -> int:
    """`-n auto`: one worker more than the cores. Workers often wait (on the main.py runs they
    start, the browser, the disk); on 2 cores, one of them held by a training run, 3 workers
    ran the suite in 599 s against 643 s for 2."""
    return (os.cpu_count() or 1) + 1
