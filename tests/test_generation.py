"""The scan sampler against a plain per-frame loop, sampling methods, the prefix cache, errors."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ganime_jax import generation
from ganime_jax.errors import UserError
from ganime_jax.models.ganime_transformer import GANimeTransformer
from ganime_jax.models.gpt import GPT2Config
from ganime_jax.models.vqgan import VQGAN

FRAME_TOKENS = 8
VOCAB = 32
K = 3
MAX_FRAMES = 9
BATCH = 2
NUM_FRAMES = 7


def _transformer(countdown_on_last_frame: bool) -> GANimeTransformer:
    gpt = GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=4)
    return GANimeTransformer(gpt=gpt, frame_tokens=FRAME_TOKENS, n_frames_before=K,
                             max_frames=MAX_FRAMES,
                             countdown_on_last_frame=countdown_on_last_frame)


def _random_params(module, *inputs, seed, std):
    """Random normal parameters of `module`'s shapes (an init would compile the model). A
    large spread makes a random transformer's logits differ clearly between tokens."""
    abstract = nn.unbox(jax.eval_shape(module.init, jax.random.key(0), *inputs)["params"])
    rng = np.random.default_rng(seed)

    def draw(path, x):  # norm scales around 1, as an init would leave them
        centre = 1.0 if jax.tree_util.keystr(path).endswith("['scale']") else 0.0
        return jnp.asarray(rng.normal(centre, std, x.shape), x.dtype)

    return jax.tree.map_with_path(draw, abstract)


def _init(transformer: GANimeTransformer, seed: int):
    k, hw = transformer.n_frames_before, transformer.frame_tokens
    inputs = [jax.ShapeDtypeStruct(shape, jnp.int32) for shape in ((1, hw), (1, k, hw), (1,))]
    return _random_params(transformer, *inputs, seed=seed, std=0.5)


@pytest.fixture(scope="module", params=[True, False], ids=["countdown_everywhere", "prefix"])
def model(request):
    transformer = _transformer(request.param)
    return transformer, _init(transformer, 1)


@pytest.fixture(scope="module")
def ends():
    rng = np.random.default_rng(0)
    first = rng.integers(0, VOCAB, (BATCH, FRAME_TOKENS), dtype=np.int32)
    last = rng.integers(0, VOCAB, (BATCH, FRAME_TOKENS), dtype=np.int32)
    return jnp.asarray(first), jnp.asarray(last)


def reference_greedy(transformer, params, first, last, num_frames):
    """The contract's rule written as a plain loop: one full forward pass per frame."""
    apply = jax.jit(transformer.apply)
    frames = [first] + [None] * (num_frames - 2) + [last]
    for t in range(1, num_frames - 1):
        context = jnp.stack([frames[max(i, 0)] for i in range(t - K, t)], axis=1)
        remaining = jnp.full((first.shape[0],), num_frames - 1 - t, jnp.int32)
        logits = apply({"params": params}, last, context, remaining)
        frames[t] = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return np.asarray(jnp.stack(frames, axis=1))


def _generate(model, ends, seed=0, num_frames=NUM_FRAMES, **sampling):
    transformer, params = model
    return np.asarray(generation.generate_tokens(
        transformer, params, *ends, num_frames, jax.random.key(seed), **sampling))


@pytest.fixture(scope="module")
def greedy(model, ends):
    return _generate(model, ends)


def test_greedy_scan_equals_per_frame_loop(model, ends, greedy):
    expected = reference_greedy(*model, *ends, NUM_FRAMES)
    assert greedy.shape == (BATCH, NUM_FRAMES, FRAME_TOKENS)
    assert greedy.dtype == np.int32
    np.testing.assert_array_equal(greedy, expected)
    # The random model must not be degenerate, or the equality above proves little.
    assert len(np.unique(greedy[:, 1:-1])) > 3


def test_first_and_last_frames_are_the_given_tokens(ends, greedy):
    np.testing.assert_array_equal(greedy[:, 0], ends[0])
    np.testing.assert_array_equal(greedy[:, -1], ends[1])


def test_prefix_cache_path_equals_full_path(ends):
    transformer = _transformer(countdown_on_last_frame=False)
    model = (transformer, _init(transformer, 2))
    for sampling in (dict(), dict(method="top_k", top_k=VOCAB, temperature=2.0)):
        cached = _generate(model, ends, seed=3, **sampling)
        full = _generate(model, ends, seed=3, reuse_last_frame_kv=False, **sampling)
        np.testing.assert_array_equal(cached, full)


def test_top_k_of_one_and_tiny_top_p_equal_greedy(model, ends, greedy):
    np.testing.assert_array_equal(_generate(model, ends, method="top_k", top_k=1), greedy)
    np.testing.assert_array_equal(_generate(model, ends, method="top_p", top_p=1e-6), greedy)


@pytest.mark.parametrize("sampling", [dict(method="top_k", top_k=VOCAB // 2),
                                      dict(method="top_p", top_p=0.95)], ids=["top_k", "top_p"])
def test_sampling_is_reproducible_per_seed_and_differs_across_seeds(model, ends, greedy,
                                                                    sampling):
    sampling = dict(sampling, temperature=2.0)
    first = _generate(model, ends, seed=5, **sampling)
    np.testing.assert_array_equal(_generate(model, ends, seed=5, **sampling), first)
    other = _generate(model, ends, seed=6, **sampling)
    assert (first[:, 1:-1] != other[:, 1:-1]).mean() > 0.3
    assert (first[:, 1:-1] != greedy[:, 1:-1]).mean() > 0.3


def test_an_example_samples_the_same_alone_or_in_a_batch(model, ends):
    sampling = dict(method="top_k", top_k=VOCAB, temperature=2.0)
    batched = _generate(model, ends, seed=7, **sampling)
    alone = _generate(model, (ends[0][:1], ends[1][:1]), seed=7, **sampling)
    np.testing.assert_array_equal(alone[0], batched[0])


def test_sample_tokens_stays_inside_top_k_and_nucleus():
    probs = np.array([0.05, 0.5, 0.15, 0.3])
    logits = jnp.broadcast_to(jnp.log(jnp.asarray(probs, jnp.float32)), (4000, 4))
    kw = dict(temperature=jnp.float32(1.0), top_k=0, top_p=jnp.float32(1.0))
    for method, settings, allowed in (("top_k", dict(top_k=2), {1, 3}),
                                      ("top_p", dict(top_p=jnp.float32(0.75)), {1, 3}),
                                      ("top_p", dict(top_p=jnp.float32(0.85)), {1, 2, 3})):
        tokens = np.asarray(generation.sample_tokens(
            logits, jax.random.key(0), method=method, **{**kw, **settings}))
        counts = np.bincount(tokens, minlength=4)
        assert set(np.flatnonzero(counts)) == allowed, (method, settings, counts)
        kept = probs[sorted(allowed)] / probs[sorted(allowed)].sum()
        np.testing.assert_allclose(counts[sorted(allowed)] / len(tokens), kept, atol=0.03)


def test_in_betweens_stop_after_count_frames_as_the_whole_clip_draws_them(model, ends):
    transformer, params = model
    sampling = dict(method="top_k", top_k=VOCAB, temperature=2.0)
    whole = _generate(model, ends, seed=4, **sampling)

    def in_betweens(count):
        return np.asarray(generation.generate_in_betweens(
            transformer, params, *ends, NUM_FRAMES, jax.random.key(4), count=count, **sampling))

    for count in (1, 3):
        np.testing.assert_array_equal(in_betweens(count), whole[:, 1:count + 1])
    for count in (0, NUM_FRAMES - 1):
        with pytest.raises(UserError, match=f"count={count} in-between frames .* pick 1 to 5"):
            in_betweens(count)


@pytest.mark.parametrize("num_frames", [2, MAX_FRAMES + 1])
def test_unsupported_num_frames_is_a_user_error(model, ends, num_frames):
    with pytest.raises(UserError, match=f"num_frames={num_frames} .*3 to {MAX_FRAMES} frames"):
        _generate(model, ends, num_frames=num_frames)


@pytest.mark.parametrize("sampling, message", [
    (dict(method="beam"), "method 'beam' is unknown"),
    (dict(method="top_k", top_k=0), "top_k >= 1"),
    (dict(method="top_p", top_p=0.0), "0 < top_p <= 1"),
    (dict(method="top_k", top_k=2, temperature=0.0), "temperature must be > 0"),
])
def test_bad_sampling_settings_are_user_errors(model, ends, sampling, message):
    with pytest.raises(UserError, match=message):
        _generate(model, ends, **sampling)


def test_tokens_of_the_wrong_shape_are_a_user_error(model, ends):
    with pytest.raises(UserError, match="last-frame tokens of shape"):
        _generate(model, (ends[0], ends[1][:, :-1]))


class _TinyTokenizer:
    """A tiny random VQ-GAN behind the tokenizer interface generation uses."""

    frame_shape = (8, 16, 3)

    def __init__(self):
        self.model = VQGAN(channels=8, channel_multipliers=(1, 2), attention_resolutions=(),
                           resolution=16, z_channels=8, num_embeddings=VOCAB, embedding_dim=4,
                           norm_groups=4)
        frames = jax.ShapeDtypeStruct((1, *self.frame_shape), jnp.float32)
        self.params = _random_params(self.model, frames, seed=0, std=0.1)
        self.grid = (4, 8)
        self._encode = jax.jit(lambda p, x: self.model.apply(
            {"params": p}, x, method=VQGAN.encode)[0])
        self._decode = jax.jit(lambda p, i: self.model.apply({"params": p}, i,
                                                             method=VQGAN.decode))

    def encode(self, frames):
        x = jnp.asarray(frames, jnp.float32) / 127.5 - 1
        return self._encode(self.params, x).reshape(len(frames), -1)

    def decode(self, tokens):
        x = self._decode(self.params, jnp.asarray(tokens).reshape(-1, *self.grid))
        return jnp.clip(jnp.round((x + 1) * 127.5), 0, 255).astype(jnp.uint8)


@pytest.fixture(scope="module")
def tokenizer():
    return _TinyTokenizer()


@pytest.fixture(scope="module")
def frames_model():
    """A transformer on the tiny tokenizer's 32-token frames, and its random parameters."""
    transformer = GANimeTransformer(
        gpt=GPT2Config(vocab_size=VOCAB, n_positions=128, n_embd=32, n_layer=1, n_head=4),
        frame_tokens=32, n_frames_before=1, max_frames=MAX_FRAMES, countdown_on_last_frame=False)
    return transformer, _init(transformer, 0)


def test_generate_frames_keeps_the_given_ends_and_decodes_the_generated_tokens(tokenizer,
                                                                              frames_model):
    transformer, params = frames_model
    rng = np.random.default_rng(1)
    first = rng.integers(0, 256, (BATCH, *tokenizer.frame_shape), dtype=np.uint8)
    last = rng.integers(0, 256, (BATCH, *tokenizer.frame_shape), dtype=np.uint8)
    clip = generation.generate_frames(tokenizer, transformer, params, first, last, 5,
                                      jax.random.key(0), decode_batch_size=4)
    assert clip.shape == (BATCH, 5, *tokenizer.frame_shape) and clip.dtype == np.uint8
    np.testing.assert_array_equal(clip[:, 0], first)
    np.testing.assert_array_equal(clip[:, -1], last)
    tokens = generation.generate_tokens(transformer, params, tokenizer.encode(first),
                                        tokenizer.encode(last), 5, jax.random.key(0))
    expected = np.asarray(tokenizer.decode(tokens[:, 1:-1].reshape(-1, 32)))
    np.testing.assert_array_equal(clip[:, 1:-1].reshape(expected.shape), expected)
    with pytest.raises(UserError, match="first frames of shape"):
        generation.generate_frames(tokenizer, transformer, params, first[:, :4], last, 5,
                                   jax.random.key(0))


def test_best_of_k_keeps_the_candidate_that_arrives_nearest_the_last_frame(tokenizer, frames_model):
    transformer, params = frames_model
    rng = np.random.default_rng(3)
    clips, candidates, frames = 4, 3, 5
    first, last = (rng.integers(0, 256, (clips, *tokenizer.frame_shape), dtype=np.uint8)
                   for _ in range(2))
    sampling = dict(method="top_k", top_k=VOCAB, temperature=1.0)

    def generate(count):
        return generation.generate_frames(tokenizer, transformer, params, first, last, frames,
                                          jax.random.key(0), decode_batch_size=4,
                                          candidates=count, **sampling)

    best = generate(candidates)
    # The candidates: draw k with fold_in(key, k), draw 0 with the key itself.
    keys = [jax.random.key(0)] + [jax.random.fold_in(jax.random.key(0), k)
                                  for k in range(1, candidates)]
    tokens = np.stack([generation.generate_tokens(
        transformer, params, tokenizer.encode(first), tokenizer.encode(last), frames, key,
        **sampling) for key in keys], axis=1)
    drawn = np.asarray(tokenizer.decode(tokens[:, :, 1:-1].reshape(-1, 32)))
    drawn = drawn.reshape(clips, candidates, frames - 2, *tokenizer.frame_shape)
    errors = ((drawn[:, :, -1].astype(np.float32) - last[:, None]) ** 2).mean(axis=(2, 3, 4))
    chosen = errors.argmin(axis=1)
    assert (chosen != 0).any()  # the choice is not the first draw everywhere
    np.testing.assert_array_equal(best[:, 1:-1], drawn[np.arange(clips), chosen])
    np.testing.assert_array_equal(best[:, 0], first)
    np.testing.assert_array_equal(best[:, -1], last)
    # Candidate 0 is the clip that one draw gives.
    np.testing.assert_array_equal(generate(1)[:, 1:-1], drawn[:, 0])
    with pytest.raises(UserError, match="candidates must be an integer >= 1"):
        generate(0)
    with pytest.raises(UserError, match="identical clips"):
        generation.generate_frames(tokenizer, transformer, params, first, last, frames,
                                   jax.random.key(0), candidates=2, method="greedy")
    medoid_clips = generation.generate_frames(
        tokenizer, transformer, params, first, last, frames, jax.random.key(0),
        decode_batch_size=4, candidates=candidates, selection="medoid", **sampling)
    np.testing.assert_array_equal(
        medoid_clips[:, 1:-1], drawn[np.arange(clips), generation.medoid(drawn)])
    with pytest.raises(UserError, match="unknown candidate selection 'nearest'"):
        generation.generate_frames(tokenizer, transformer, params, first, last, frames,
                                   jax.random.key(0), candidates=2, selection="nearest",
                                   **sampling)


def test_both_directions_take_each_half_from_its_nearer_given_frame(tokenizer, frames_model):
    transformer, params = frames_model
    rng = np.random.default_rng(5)
    clips, frames = 3, 8  # 6 in-betweens: 3 drawn forward, 3 backward
    first, last = (rng.integers(0, 256, (clips, *tokenizer.frame_shape), dtype=np.uint8)
                   for _ in range(2))
    sampling = dict(method="top_k", top_k=VOCAB, temperature=1.0, decode_batch_size=4)
    key = jax.random.key(2)

    def generate(a, b, rng_key, count=frames, **extra):
        return generation.generate_frames(tokenizer, transformer, params, a, b, count, rng_key,
                                          **sampling, **extra)

    both = generate(first, last, key, direction="both")
    forward = generate(first, last, key)
    # The backward draw: the two frames swapped, its own random stream, frames reversed.
    backward = generate(last, first, jax.random.fold_in(key, 2**31 - 1))[:, ::-1]
    np.testing.assert_array_equal(both[:, :4], forward[:, :4])
    np.testing.assert_array_equal(both[:, 4:], backward[:, 4:])
    assert not np.array_equal(both, forward)
    # An odd count: the forward half is the larger; one in-between: the forward one.
    odd = generate(first, last, key, count=7, direction="both")
    np.testing.assert_array_equal(odd[:, :4], generate(first, last, key, count=7)[:, :4])
    np.testing.assert_array_equal(generate(first, last, key, count=3, direction="both"),
                                  generate(first, last, key, count=3))
    # Candidates are kept per direction, the medoid over the frames that direction keeps.
    medoid = generate(first, last, key, direction="both", candidates=3, selection="medoid")
    keys = [key] + [jax.random.fold_in(key, k) for k in range(1, 3)]
    drawn = np.stack([generate(first, last, k)[:, 1:4] for k in keys], axis=1)
    np.testing.assert_array_equal(medoid[:, 1:4],
                                  drawn[np.arange(clips), generation.medoid(drawn)])
    with pytest.raises(UserError, match="unknown sampling direction 'backward'"):
        generate(first, last, key, direction="backward")


def test_medoid_is_the_candidate_nearest_the_others():
    base = np.zeros((4, 2, 3), np.uint8)
    # Row 0, summed squared distances per value: 10: 4 + 190^2 + 1, 200: 190^2 + 188^2 +
    # 189^2, 12: 4 + 188^2 + 1, 11: 1 + 189^2 + 1: 12 (index 2) is least. Row 1: ties go to the
    # lower index.
    row0 = np.stack([base + 10, base + 200, base + 12, base + 11])
    row1 = np.stack([base, base + 255, base, base + 255])
    np.testing.assert_array_equal(generation.medoid(np.stack([row0, row1])), [2, 0])


def test_decoding_in_batches_equals_decoding_at_once(tokenizer):
    tokens = jnp.asarray(np.random.default_rng(2).integers(0, VOCAB, (5, 32)), jnp.int32)
    whole = generation.decode_in_batches(tokenizer, tokens, None)
    assert whole.shape == (5, *tokenizer.frame_shape)
    for batch_size in (1, 2, 5):
        np.testing.assert_array_equal(
            generation.decode_in_batches(tokenizer, tokens, batch_size), whole)
