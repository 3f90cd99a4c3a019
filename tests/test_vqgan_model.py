"""VQ-GAN model, quantiser and discriminator on tiny configs (one compile per function)."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from ganime_jax.errors import UserError
from ganime_jax.models import quantizer
from ganime_jax.models.layers import Upsample
from ganime_jax.models.discriminator import NLayerDiscriminator
from ganime_jax.models.vqgan import VQGAN, output_layer_params, with_output_layer_params

TINY = dict(channels=8, channel_multipliers=(1, 2, 2), num_res_blocks=1,
            attention_resolutions=(8,), resolution=32, z_channels=16, embedding_dim=8,
            num_embeddings=32, norm_groups=4)
FRAME_SHAPE = (2, 16, 32, 3)  # non-square; 3 levels -> 4 x 8 tokens
GRID = (2, 4, 8)


def _key(seed):
    # RngBitGenerator keys: init compiles ~3x faster than with threefry keys on CPU.
    return jax.random.key(seed, impl="rbg")


@pytest.fixture(scope="module")
def tiny():
    model = VQGAN(**TINY)
    frames = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, FRAME_SHAPE), jnp.float32)
    variables = jax.jit(model.init)(_key(0), frames)
    recon, aux = jax.jit(model.apply)(variables, frames)
    return model, variables, frames, recon, aux


def test_call_shapes_and_dtypes(tiny):
    _, _, frames, recon, aux = tiny
    assert recon.shape == FRAME_SHAPE and recon.dtype == jnp.float32
    assert aux["indices"].shape == GRID and aux["indices"].dtype == jnp.int32
    assert aux["encoder_latents"].shape == (*GRID, TINY["embedding_dim"])
    assert aux["pre_output_features"].shape == (*FRAME_SHAPE[:3], TINY["channels"])
    for key in ("quantizer_loss", "codebook_loss", "commitment_loss", "perplexity",
                "usage_fraction"):
        assert aux[key].shape == () and np.isfinite(aux[key])
    assert float(jnp.max(jnp.abs(recon))) <= 1.0  # output_tanh


def test_encode_decode_and_output_layer_agree_with_call(tiny):
    model, variables, frames, recon, aux = tiny

    def methods(v, frames, features):
        indices, latents = model.apply(v, frames, method=VQGAN.encode)
        swapped = {"params": with_output_layer_params(v["params"],
                                                      output_layer_params(v["params"]))}
        return (indices, latents, model.apply(v, indices, method=VQGAN.decode),
                model.apply(v, latents, method=VQGAN.decode_latents),
                model.apply(swapped, features, method=VQGAN.decoder_output_layer))

    indices, latents, decoded, from_latents, from_features = jax.jit(methods)(
        variables, frames, aux["pre_output_features"])
    assert indices.shape == GRID and indices.dtype == jnp.int32
    assert latents.shape == (*GRID, TINY["embedding_dim"])
    np.testing.assert_array_equal(indices, aux["indices"])
    assert decoded.shape == FRAME_SHAPE and decoded.dtype == jnp.float32
    for out in (decoded, from_latents, from_features):
        np.testing.assert_allclose(out, recon, atol=1e-5)


def test_straight_through_gradient_and_output_layer_gradient(tiny):
    model, variables, frames, _, aux = tiny
    params = variables["params"]

    def rec_loss(p):
        recon, _ = model.apply({"params": p}, frames)
        return jnp.mean(jnp.square(recon - frames))

    def layer_loss(layer):
        p = with_output_layer_params(params, layer)
        out = model.apply({"params": p}, aux["pre_output_features"],
                          method=VQGAN.decoder_output_layer)
        return jnp.mean(jnp.square(out - frames))

    grads, layer_grad = jax.jit(lambda p: (jax.grad(rec_loss)(p), jax.grad(layer_loss)(
        output_layer_params(p))))(params)
    for path in [("encoder", "conv_in", "kernel"), ("quant_conv", "kernel"),
                 ("encoder", "down_0", "block_0", "conv1", "kernel")]:
        assert float(jnp.linalg.norm(flatten_dict(grads)[path])) > 0, path
    # The straight-through estimator skips the codebook (only the quantiser loss moves it:
    # see test_loss_weights_differ_between_legacy_and_paper_form).
    assert float(jnp.abs(quantizer.get_codebook(grads)).max()) == 0.0
    np.testing.assert_allclose(layer_grad["kernel"], grads["decoder"]["conv_out"]["kernel"],
                               rtol=1e-4, atol=1e-7)


def _numpy_quantize(z, codebook, normalize):
    if normalize:
        z = z / np.linalg.norm(z, axis=-1, keepdims=True)
        codebook = codebook / np.linalg.norm(codebook, axis=-1, keepdims=True)
    flat = z.reshape(-1, z.shape[-1])
    distances = ((flat[:, None, :] - codebook[None, :, :]) ** 2).sum(-1)
    indices = distances.argmin(1)
    return z, codebook, indices.reshape(z.shape[:-1])


@pytest.mark.parametrize("normalize,legacy", [(False, False), (True, False), (False, True)])
def test_quantizer_picks_nearest_code(normalize, legacy):
    vq = quantizer.VectorQuantizer(num_embeddings=16, embedding_dim=4, beta=0.25,
                                   legacy_loss=legacy, l2_normalize=normalize)
    rng = np.random.default_rng(0)
    z = rng.normal(size=(2, 3, 5, 4)).astype(np.float32)
    codebook = rng.normal(size=(16, 4)).astype(np.float32)
    out, aux = vq.apply({"params": {"embedding": codebook}}, z)
    z_n, codebook_n, indices = _numpy_quantize(z, codebook, normalize)
    np.testing.assert_array_equal(aux["indices"], indices)
    np.testing.assert_allclose(out, codebook_n[indices], atol=1e-5)
    mse = float(np.mean((z_n - codebook_n[indices]) ** 2))
    expected = (1 + 0.25) * mse
    np.testing.assert_allclose(aux["codebook_loss"], mse, rtol=1e-5)
    np.testing.assert_allclose(aux["commitment_loss"], mse, rtol=1e-5)
    np.testing.assert_allclose(aux["quantizer_loss"], expected, rtol=1e-5)
    lookup = vq.apply({"params": {"embedding": codebook}}, aux["indices"], method="lookup")
    np.testing.assert_allclose(lookup, out, atol=1e-5)


def test_loss_weights_differ_between_legacy_and_paper_form():
    z = np.ones((1, 1, 1, 2), np.float32)
    codebook = np.zeros((2, 2), np.float32)

    def loss_grads(legacy):
        vq = quantizer.VectorQuantizer(2, 2, beta=0.25, legacy_loss=legacy)
        return jax.grad(lambda zz, cb: vq.apply({"params": {"embedding": cb}}, zz)[1][
            "quantizer_loss"], argnums=(0, 1))(z, codebook)

    paper_z, paper_cb = loss_grads(False)
    legacy_z, legacy_cb = loss_grads(True)
    # Paper: beta on the commitment (encoder) term; legacy: beta on the codebook term.
    np.testing.assert_allclose(np.abs(paper_z).sum() * 4, np.abs(paper_cb).sum(), rtol=1e-6)
    np.testing.assert_allclose(np.abs(legacy_cb).sum() * 4, np.abs(legacy_z).sum(), rtol=1e-6)


def test_low_dimensional_lookup():
    vq = quantizer.VectorQuantizer(num_embeddings=16, embedding_dim=6, lookup_dim=3,
                                   l2_normalize=True)
    z = np.random.default_rng(1).normal(size=(2, 2, 4, 6)).astype(np.float32)
    variables = vq.init(_key(0), z)
    out, aux = vq.apply(variables, z)
    params = variables["params"]
    projected = z @ np.asarray(params["in_proj"]["kernel"]) + np.asarray(params["in_proj"]["bias"])
    _, codes, indices = _numpy_quantize(projected, np.asarray(params["embedding"]), True)
    np.testing.assert_array_equal(aux["indices"], indices)
    assert aux["encoder_latents"].shape == (2, 2, 4, 3) and out.shape == z.shape
    np.testing.assert_allclose(vq.apply(variables, aux["indices"], method="lookup"), out,
                               atol=1e-5)


def test_codebook_stats_match_numpy():
    indices = np.random.default_rng(2).integers(0, 12, size=(3, 4, 5))
    stats = jax.jit(quantizer.codebook_stats, static_argnums=1)(jnp.asarray(indices), 20)
    counts = np.bincount(indices.reshape(-1), minlength=20)
    probs = counts[counts > 0] / counts.sum()
    np.testing.assert_allclose(stats["usage_fraction"], np.mean(counts > 0), rtol=1e-6)
    np.testing.assert_allclose(stats["perplexity"], np.exp(-np.sum(probs * np.log(probs))),
                               rtol=1e-5)


def test_restart_dead_codes_replaces_exactly_the_dead_ones():
    codebook = np.arange(18, dtype=np.float32).reshape(6, 3) * 100
    usage = np.array([5.0, 0.0, 2.0, 0.1, 0.0, 1.0])
    outputs = np.random.default_rng(3).normal(size=(2, 4, 5, 3)).astype(np.float32)
    new = np.asarray(jax.jit(quantizer.restart_dead_codes)(
        codebook, usage, outputs, jax.random.key(4), 1.0))
    dead = usage < 1.0
    np.testing.assert_array_equal(new[~dead], codebook[~dead])
    candidates = outputs.reshape(-1, 3)
    for row in new[dead]:
        assert np.any(np.all(candidates == row, axis=1))
    assert not np.any(np.all(new[dead][:, None] == codebook[None], axis=-1))


def test_error_weighted_restart_draws_the_outputs_far_from_the_live_codes():
    # Live codes 0 and 2 sit on the first cluster of outputs; the second cluster is quantised
    # badly. D^2 sampling restarts codes there; uniform sampling mostly lands on the first.
    codebook = np.array([[0.0, 0.0], [50.0, 50.0], [0.1, 0.0], [60.0, 60.0]], np.float32)
    usage = np.array([1.0, 0.0, 1.0, 0.0])
    near = np.random.default_rng(0).normal(scale=0.01, size=(95, 2))
    far = np.random.default_rng(1).normal(loc=(5.0, -5.0), scale=0.01, size=(5, 2))
    outputs = np.concatenate([near, far]).astype(np.float32)
    restart = jax.jit(quantizer.restart_dead_codes, static_argnames=("sampling", "l2_normalized"))
    far_picks = {}
    for sampling in quantizer.RESTART_SAMPLING:
        picks = [np.asarray(restart(codebook, usage, outputs, jax.random.key(seed), 0.5,
                                    sampling=sampling))[[1, 3]] for seed in range(20)]
        far_picks[sampling] = np.mean(np.concatenate(picks)[:, 0] > 2.5)
        for new in picks:
            assert all(np.any(np.all(outputs == row, axis=1)) for row in new)
    assert far_picks["error"] > 0.95 and far_picks["uniform"] < 0.2, far_picks


@pytest.mark.parametrize("encoder", ["taming", "local", "per_patch"])
def test_a_local_encoder_keeps_the_latents_beyond_its_receptive_field(encoder):
    # 16x64 frames -> a 4x16 grid (4 pixels a token). The tiny local encoder's receptive field
    # is 45 pixels wide (conv_in, two 3x3 convs per level, two stride-2 downsamplings and
    # conv_out), so painting columns 0-3 may move the latents of grid columns 0-6 only; the
    # per-patch encoder sees only grid column 0's pixels. With the frame-wide norms and
    # attention of taming's encoder, every latent moves.
    model = VQGAN(**TINY, encoder_local=encoder == "local",
                  encoder_per_patch=encoder == "per_patch")
    frames = jnp.asarray(np.random.default_rng(2).uniform(-1, 1, (1, 16, 64, 3)), jnp.float32)
    painted = frames.at[:, :, :4].set(1.0)
    variables = jax.jit(model.init)(_key(0), frames)
    latents = [np.asarray(jax.jit(model.apply)(variables, f)[1]["encoder_latents"][0])
               for f in (frames, painted)]
    moved = np.any(latents[0] != latents[1], axis=(0, 2))  # per grid column
    assert moved[0]
    if encoder == "taming":
        assert moved.all(), moved
    else:
        assert not moved[1 if encoder == "per_patch" else 7:].any(), moved
        assert "mid" not in variables["params"]["encoder"]


def test_a_per_patch_encoder_gives_identical_patches_one_token():
    # Four copies of one 4x4 patch, anywhere in the frame, next to different neighbours.
    model = VQGAN(**TINY, encoder_per_patch=True)
    rng = np.random.default_rng(3)
    frames = rng.uniform(-1, 1, (2, 16, 64, 3)).astype(np.float32)
    patch = rng.uniform(-1, 1, (4, 4, 3))
    spots = [(0, 0, 0), (0, 12, 60), (1, 4, 20), (1, 8, 36)]
    for b, y, x in spots:
        frames[b, y:y + 4, x:x + 4] = patch
    variables = jax.jit(model.init)(_key(0), jnp.asarray(frames))
    _, aux = jax.jit(model.apply)(variables, jnp.asarray(frames))
    latents = np.asarray(aux["encoder_latents"])
    copies = [latents[b, y // 4, x // 4] for b, y, x in spots]
    for copy in copies[1:]:
        np.testing.assert_allclose(copy, copies[0], rtol=1e-6, atol=1e-6)
    assert len({int(aux["indices"][b, y // 4, x // 4]) for b, y, x in spots}) == 1
    with pytest.raises(UserError, match="choose one"):
        VQGAN(**TINY, encoder_local=True, encoder_per_patch=True).init(_key(0), frames[:1])


def test_bfloat16_compute_is_close_to_float32(tiny):
    _, variables, frames, recon, aux = tiny
    model = VQGAN(**{**TINY, "dtype": "bfloat16"})

    def run(v, frames, indices):
        return (*model.apply(v, frames), model.apply(v, indices, method=VQGAN.decode))

    recon_bf16, aux_bf16, decoded = jax.jit(run)(variables, frames, aux["indices"])
    assert recon_bf16.dtype == jnp.float32 and decoded.dtype == jnp.float32
    assert aux_bf16["encoder_latents"].dtype == jnp.float32
    assert np.mean(np.asarray(aux_bf16["indices"]) == np.asarray(aux["indices"])) > 0.8
    # Same tokens through the bf16 decoder: only rounding differs.
    error = np.abs(np.asarray(decoded) - np.asarray(recon))
    assert error.mean() < 1e-2 and error.max() < 0.1


def test_config_dict_with_lists_builds_the_same_model():
    config = ml_collections.ConfigDict({**TINY, "channel_multipliers": [1, 2, 2],
                                        "attention_resolutions": [8], "dtype": "float32"})
    frames = jnp.zeros(FRAME_SHAPE)
    shapes = jax.eval_shape(VQGAN(**config).init, jax.random.key(0), frames)
    reference = jax.eval_shape(VQGAN(**TINY).init, jax.random.key(0), frames)
    assert jax.tree.map(lambda a: a.shape, shapes) == jax.tree.map(lambda a: a.shape, reference)


def test_reference_architecture_token_grid_and_attention_levels():
    model = VQGAN()
    frames = jnp.zeros((1, 64, 128, 3))
    shapes = jax.eval_shape(model.init, jax.random.key(0), frames)
    (recon, aux) = jax.eval_shape(model.apply, shapes, frames)
    assert aux["indices"].shape == (1, 8, 16) and recon.shape == (1, 64, 128, 3)
    attention = sorted({path[:2] for path in flatten_dict(shapes["params"])
                        if any(p.startswith("attn") for p in path)})
    assert attention == [("decoder", "mid"), ("decoder", "up_3"), ("encoder", "down_3"),
                         ("encoder", "mid")]
    assert shapes["params"]["quantize"]["embedding"].shape == (1024, 128)


def test_upsample_equals_nearest_then_conv():
    x = jnp.asarray(np.random.default_rng(5).normal(size=(2, 3, 5, 4)), jnp.float32)
    up = Upsample(6)
    params = {**up.init(_key(0), x)["params"]["conv"], "bias": jnp.arange(6.0)}
    nearest = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    expected = jax.lax.conv_general_dilated(
        nearest, params["kernel"], (1, 1), ((1, 1), (1, 1)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), precision="highest") + params["bias"]
    np.testing.assert_allclose(up.apply({"params": {"conv": params}}, x), expected, atol=1e-5)


@pytest.mark.parametrize("shape", [(1, 15, 32, 3), (1, 16, 32, 1)])
def test_bad_frames_are_user_errors(shape):
    model = VQGAN(**TINY)
    with pytest.raises(UserError):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(shape))


@pytest.mark.parametrize("norm", ["group", "batch", "none"])
def test_discriminator_shapes_and_state(norm):
    disc = NLayerDiscriminator(filters=8, num_layers=2, norm=norm, norm_groups=4)
    images = jnp.asarray(np.random.default_rng(0).normal(size=FRAME_SHAPE), jnp.float32)
    mutable = ["batch_stats"] if norm == "batch" else False

    def init_and_apply(key, x):
        variables = disc.init(key, x)
        return variables, disc.apply(variables, x, train=True, mutable=mutable)

    variables, out = jax.jit(init_and_apply)(_key(1), images)
    assert ("batch_stats" in variables) == (norm == "batch")
    if norm == "batch":
        logits, updates = out
        assert not np.allclose(updates["batch_stats"]["main_3"]["mean"],
                               variables["batch_stats"]["main_3"]["mean"])
    else:
        logits = out
    # 16x32 -> 8x16 -> 4x8 (stride 2) -> 3x7 -> 2x6 (4x4 stride-1 convs)
    assert logits.shape == (2, 2, 6, 1) and logits.dtype == jnp.float32
    assert ("bias" in variables["params"]["main_2"]) == (norm == "none")


def test_unknown_discriminator_norm_is_a_user_error():
    with pytest.raises(UserError, match="unknown discriminator norm"):
        NLayerDiscriminator(norm="layer").init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))


def test_patch_size_folds_pixels_around_the_network():
    """patch_size=2: a pixel shuffle around the levels; same token grid with one level fewer,
    and the decoder's last layer (the adaptive weight's) still yields the reconstruction."""
    from ganime_jax.models.vqgan import depth_to_space, space_to_depth

    x = jnp.arange(2 * 4 * 6 * 3, dtype=jnp.float32).reshape(2, 4, 6, 3)
    folded = space_to_depth(x, 2)
    assert folded.shape == (2, 2, 3, 12)
    np.testing.assert_array_equal(folded[0, 0, 0], x[0, :2, :2].reshape(-1))
    np.testing.assert_array_equal(depth_to_space(folded, 2), x)

    model = VQGAN(**{**TINY, "channel_multipliers": (1, 2), "patch_size": 2})
    frames = jnp.asarray(np.random.default_rng(2).uniform(-1, 1, FRAME_SHAPE), jnp.float32)
    variables = jax.jit(model.init)(_key(0), frames)
    recon, aux = jax.jit(model.apply)(variables, frames)
    assert model.downsampling_factor == 4
    assert recon.shape == FRAME_SHAPE and aux["indices"].shape == GRID
    assert aux["pre_output_features"].shape == (2, 8, 16, TINY["channels"])
    assert variables["params"]["decoder"]["conv_out"]["kernel"].shape[-1] == 3 * 4
    again = model.apply(variables, aux["pre_output_features"], method=VQGAN.decoder_output_layer)
    np.testing.assert_allclose(again, recon, atol=1e-6)


@pytest.mark.parametrize("field,kind", [("downsample", "maxpool_conv"),
                                        ("upsample", "pixel_shuffle"),
                                        ("attention_placement", "everywhere")])
def test_an_unknown_layer_kind_is_a_user_error(field, kind):
    model = VQGAN(**{**TINY, field: kind})
    with pytest.raises(UserError, match=f"model.{field}='{kind}' is not a known kind"):
        jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 16, 32, 3),
                                                                            np.float32))
