"""The `sequence` layout: one causal pass equals per-frame contexts; no block sees a later frame
or a frame outside its window; the cached sampler equals uncached step-by-step decoding; all of
it also with the relative position bias."""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ganime_jax.models.frame_sequence import (WHOLE_HISTORY, FrameSequenceTransformer,
                                              add_shared_bias, frame_sequence_from_config,
                                              rollout)
from ganime_jax.errors import UserError
from ganime_jax.models.frame_layouts import check_token_grid, transformer_from_config
from ganime_jax.models.gpt import GPT2Config
from ganime_jax.train import gpt_step

HW = 8  # tokens per frame
VOCAB = 32
MAX_FRAMES = 9
BATCH = 2
GRID_WIDTH = 4  # the 8 tokens of a frame as a 2x4 grid
# (attention window, relative position bias)
VARIANTS = ((2, False), (WHOLE_HISTORY, False), (2, True), (WHOLE_HISTORY, True))


def make_model(window: int, relative_bias: bool = False) -> FrameSequenceTransformer:
    gpt = GPT2Config(vocab_size=VOCAB, n_positions=HW, n_embd=32, n_layer=2, n_head=4,
                     embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0)
    return FrameSequenceTransformer(gpt=gpt, frame_tokens=HW, n_frames_before=window,
                                    max_frames=MAX_FRAMES, relative_position_bias=relative_bias,
                                    grid_width=GRID_WIDTH)


def init_params(model: FrameSequenceTransformer) -> dict:
    last = jnp.zeros((1, HW), jnp.int32)
    return model.init(jax.random.key(0), last, jnp.zeros((1, 1, HW), jnp.int32),
                      jnp.zeros((1, 1), jnp.int32))["params"]


@pytest.fixture(scope="module", params=VARIANTS,
                ids=["window2", "whole_history", "window2_bias", "whole_history_bias"])
def model_and_params(request):
    model = make_model(*request.param)
    params = init_params(model)
    # Random-init embeddings are small; scale them so that every input visibly moves logits.
    params = jax.tree.map(lambda p: p * 5.0 if p.ndim == 2 else p, params)
    if model.relative_position_bias:  # zeros at init: draw one that matters
        params["relative_bias"] = jax.random.normal(jax.random.key(1),
                                                    params["relative_bias"].shape)
    return model, params


def clip_tokens(seed: int, num_frames: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, (BATCH, num_frames, HW), np.int32)


def countdowns(num_inputs: int) -> jnp.ndarray:
    return jnp.broadcast_to(jnp.arange(num_inputs, 0, -1, dtype=jnp.int32), (BATCH, num_inputs))


def attended_frames(j: int, window: int) -> list[int]:
    """The clip frames block j attends to in one layer."""
    start = 0 if window == WHOLE_HISTORY else max(0, j - window + 1)
    return list(range(start, j + 1))


def receptive_field(j: int, model: FrameSequenceTransformer) -> list[int]:
    """The clip frames block j's logits can depend on: a window reaches k - 1 frames further
    back with every layer (as sliding-window attention does)."""
    if model.n_frames_before == WHOLE_HISTORY:
        return list(range(j + 1))
    return list(range(max(0, j - model.gpt.n_layer * (model.n_frames_before - 1)), j + 1))


def test_one_pass_equals_per_frame_loop(model_and_params):
    """Logits and loss of one pass equal a loop that runs every target on its own context: the
    frames of its receptive field, passed explicitly with their frame indices."""
    model, params = model_and_params
    num_frames = MAX_FRAMES
    tokens = clip_tokens(0, num_frames)
    n_frames = jnp.asarray([num_frames, num_frames - 3], jnp.int32)
    one_pass = gpt_step.sequence_sums(model, params, jnp.asarray(tokens), n_frames,
                                      jax.random.key(0), train=False)

    last = tokens[np.arange(BATCH), np.asarray(n_frames) - 1]
    assert receptive_field(num_frames - 3, model)[0] > 0 or model.n_frames_before == 0
    full_logits = model.apply({"params": params}, jnp.asarray(last),
                              jnp.asarray(tokens[:, :-2]),
                              jnp.maximum(np.asarray(n_frames)[:, None] - 2
                                          - np.arange(num_frames - 2)[None, :], 0))
    totals = gpt_step.Sums(0.0, 0.0, 0.0)
    for j in range(num_frames - 2):  # block of f_j predicts f_{j+1}
        ids = receptive_field(j, model)
        remaining = np.asarray(n_frames)[:, None] - 2 - np.asarray(ids)[None, :]
        logits = model.apply({"params": params}, jnp.asarray(last), jnp.asarray(tokens[:, ids]),
                             jnp.maximum(jnp.asarray(remaining), 0), frame_ids=jnp.asarray(ids))
        np.testing.assert_allclose(np.asarray(logits[:, -1]), np.asarray(full_logits[:, j]),
                                   atol=2e-5, err_msg=f"block {j}")
        valid = jnp.asarray(remaining[:, -1] >= 1)
        totals = totals + gpt_step.token_sums(logits[:, -1], jnp.asarray(tokens[:, j + 1]), valid)
    assert float(one_pass.count) == float(totals.count) == HW * (2 * num_frames - 3 - 4)
    np.testing.assert_allclose(float(one_pass.loss), float(totals.loss), rtol=1e-5)
    assert float(one_pass.correct) == float(totals.correct)


def test_no_block_sees_a_later_frame_or_one_outside_its_window(model_and_params):
    model, params = model_and_params
    num_inputs = MAX_FRAMES - 2
    tokens = clip_tokens(1, num_inputs)
    last = jnp.asarray(clip_tokens(2, 1)[:, 0])
    remaining = countdowns(num_inputs)

    def logits_of(frames):
        return np.asarray(model.apply({"params": params}, last, jnp.asarray(frames), remaining))

    base = logits_of(tokens)
    for changed in range(num_inputs):
        perturbed = tokens.copy()
        perturbed[:, changed] = (perturbed[:, changed] + 1) % VOCAB
        moved = np.abs(logits_of(perturbed) - base).max(axis=(0, 2, 3))  # per block
        for j in range(num_inputs):
            if changed in attended_frames(j, model.n_frames_before):
                assert moved[j] > 1e-3, (changed, j)
            elif changed not in receptive_field(j, model):
                assert moved[j] == 0.0, (changed, j)


def test_cached_greedy_equals_uncached_step_by_step(model_and_params):
    model, params = model_and_params
    num_frames = MAX_FRAMES  # 7 generated frames: the window-2 ring wraps three times
    first = jnp.asarray(clip_tokens(3, 1)[:, 0])
    last = jnp.asarray(clip_tokens(4, 1)[:, 0])
    remaining = countdowns(num_frames - 2)
    cached = rollout(model, params, first, last, remaining,
                     lambda logits, _: jnp.argmax(logits, axis=-1))

    frames = first[:, None]
    for s in range(num_frames - 2):
        logits = model.apply({"params": params}, last, frames, remaining[:, :s + 1])
        following = jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)
        frames = jnp.concatenate([frames, following[:, None]], axis=1)
    np.testing.assert_array_equal(np.asarray(cached), np.asarray(frames[:, 1:]))
    assert len(np.unique(np.asarray(cached))) > 4  # not a degenerate constant output


def test_config_errors_are_one_line():
    fields = dict(gpt=dict(vocab_size=VOCAB, n_positions=HW, n_embd=32, n_layer=1, n_head=4,
                           attn_pdrop=0.0), frame_tokens=HW, n_frames_before=2,
                  max_frames=MAX_FRAMES)
    assert frame_sequence_from_config(fields).n_frames_before == 2
    for change, message in ((dict(n_frames_before=-1), "n_frames_before"),
                            (dict(frame_slot_embedding=True), "do not apply"),
                            (dict(frame_tokens=HW * 2), "n_positions")):
        with pytest.raises(Exception, match=message):
            frame_sequence_from_config({**fields, **change})
    with pytest.raises(Exception, match="attn_pdrop"):
        frame_sequence_from_config({**fields, "gpt": {**fields["gpt"], "attn_pdrop": 0.1}})
    for width in (0, 3):
        with pytest.raises(UserError, match="grid_width"):
            frame_sequence_from_config({**fields, "relative_position_bias": True,
                                        "grid_width": width})
    assert frame_sequence_from_config(
        {**fields, "relative_position_bias": True, "grid_width": GRID_WIDTH}).grid_width == 4
    with pytest.raises(UserError, match="sequence layout"):
        transformer_from_config({**fields, "layout": "window", "relative_position_bias": True})
    biased = make_model(2, relative_bias=True)
    check_token_grid(biased, (2, GRID_WIDTH), "the tokenizer")
    check_token_grid(make_model(2), (4, 2), "the tokenizer")  # no bias: any grid
    with pytest.raises(UserError, match=r"grid_width=4 but the tokenizer makes token grids of "
                                        r"4x2; set config.model.grid_width=2"):
        check_token_grid(biased, (4, 2), "the tokenizer")


def test_shared_bias_gradient_sums_over_the_leading_axes():
    """add_shared_bias's own backward (a product with ones) equals autodiff of a plain add."""
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(2, 3, 4, 5, 6)), jnp.float32)
    bias = jnp.asarray(rng.normal(size=(4, 5, 6)), jnp.float32)
    weight = jnp.asarray(rng.normal(size=logits.shape), jnp.float32)

    def loss(add):
        return lambda x, b: jnp.sum(jnp.sin(add(x, b)) * weight)

    ours = jax.grad(loss(add_shared_bias), argnums=(0, 1))(logits, bias)
    plain = jax.grad(loss(jnp.add), argnums=(0, 1))(logits, bias)
    np.testing.assert_allclose(add_shared_bias(logits, bias), logits + bias)
    for got, want in zip(ours, plain):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_relative_bias_starts_neutral_and_reaches_every_attention_path():
    """A fresh bias table is zeros, so the model equals one without it; a changed table moves
    the windowed pass, the dense pass (hand-built context) and the cached sampler, each by its
    own bucket (the last frame's, the frames' by distance)."""
    plain, biased = make_model(2), make_model(2, relative_bias=True)
    params = init_params(biased)
    assert not np.any(np.asarray(params["relative_bias"]))
    tokens = jnp.asarray(clip_tokens(10, MAX_FRAMES - 2))
    last = jnp.asarray(clip_tokens(11, 1)[:, 0])
    remaining = countdowns(MAX_FRAMES - 2)
    without = {k: v for k, v in params.items() if k != "relative_bias"}
    np.testing.assert_array_equal(
        np.asarray(biased.apply({"params": params}, last, tokens, remaining)),
        np.asarray(plain.apply({"params": without}, last, tokens, remaining)))

    def outputs(p):
        windowed = biased.apply({"params": p}, last, tokens, remaining)
        dense = biased.apply({"params": p}, last, tokens[:, :3], remaining[:, :3],
                             frame_ids=jnp.asarray([0, 2, 3]))
        cache = biased.apply({"params": p}, 1, method=FrameSequenceTransformer.init_cache)
        cache = biased.apply({"params": p}, cache, last[:1],
                             method=FrameSequenceTransformer.prefill)
        stepped, _ = biased.apply({"params": p}, cache, tokens[:1, 0], jnp.int32(0),
                                  remaining[:1, 0], method=FrameSequenceTransformer.step)
        return [np.asarray(x) for x in (windowed, dense, stepped)]

    base = outputs(params)
    for bucket in range(params["relative_bias"].shape[1]):  # 0: last frame, 1 + distance
        offsets = params["relative_bias"].shape[-1]
        table = params["relative_bias"].at[:, bucket].set(3.0 * jnp.arange(offsets) / offsets)
        moved = [np.abs(a - b).max() for a, b in zip(outputs({**params, "relative_bias": table}),
                                                       base)]
        # The dense context has frames 0, 2, 3: distances 0, 1 (3 -> 2) and 2 (2 -> 0), but the
        # window of 2 masks distance 2, so only buckets 0..2 exist; the single step sees the
        # last frame (bucket 0) and its own frame (bucket 1).
        assert moved[0] > 1e-3 and moved[1] > 1e-3, (bucket, moved)
        assert (moved[2] > 1e-3) == (bucket <= 1), (bucket, moved)


def test_own_prediction_phase_scores_greedy_frames_in_one_pass(model_and_params):
    """The second phase equals: generate frames greedily one by one without a cache, then
    score every true target against that context."""
    model, params = model_and_params
    num_frames = MAX_FRAMES
    tokens = jnp.asarray(clip_tokens(5, num_frames))
    n_frames = jnp.asarray([num_frames, num_frames - 2], jnp.int32)
    own = gpt_step.sequence_sums(model, params, tokens, n_frames, jax.random.key(0),
                                 train=False, own_predictions=True)

    last = tokens[jnp.arange(BATCH), n_frames - 1]
    remaining = jnp.maximum(n_frames[:, None] - 2 - jnp.arange(num_frames - 2)[None, :], 0)
    frames = tokens[:, :1]
    for s in range(num_frames - 3):
        logits = model.apply({"params": params}, last, frames, remaining[:, :s + 1])
        frames = jnp.concatenate([frames, jnp.argmax(logits[:, -1:], axis=-1)], axis=1)
    logits = model.apply({"params": params}, last, frames, remaining)
    expected = gpt_step.token_sums(logits, tokens[:, 1:-1], remaining >= 1)
    np.testing.assert_allclose([float(own.loss), float(own.correct), float(own.count)],
                               [float(expected.loss), float(expected.correct),
                                float(expected.count)], rtol=1e-5)
    teacher = gpt_step.sequence_sums(model, params, tokens, n_frames, jax.random.key(0),
                                     train=False)
    assert abs(float(teacher.loss) - float(own.loss)) > 1e-3  # the context really changed


def test_scanned_layers_compute_the_same(model_and_params):
    """scan_layers=True (the layers' parameters stacked) gives the same one-pass logits and
    the same cached greedy clip."""
    model, params = model_and_params
    params = nn.unbox(params)
    scanned = model.clone(gpt=dataclasses.replace(model.gpt, scan_layers=True))
    lm = dict(params["lm"])
    layers = [lm.pop(f"h_{i}") for i in range(model.gpt.n_layer)]
    stacked = {**params, "lm": {**lm, "h": jax.tree.map(lambda *xs: jnp.stack(xs), *layers)}}
    tokens = jnp.asarray(clip_tokens(6, MAX_FRAMES - 2))
    last = jnp.asarray(clip_tokens(7, 1)[:, 0])
    remaining = countdowns(MAX_FRAMES - 2)
    np.testing.assert_allclose(
        np.asarray(scanned.apply({"params": stacked}, last, tokens, remaining)),
        np.asarray(model.apply({"params": params}, last, tokens, remaining)), atol=2e-5)

    def greedy(m, p):
        return rollout(m, p, tokens[:, 0], last, remaining,
                       lambda logits, _: jnp.argmax(logits, axis=-1))
    np.testing.assert_array_equal(np.asarray(greedy(scanned, stacked)),
                                  np.asarray(greedy(model, params)))


def test_generate_tokens_samples_through_the_cache(model_and_params):
    """`generation.generate_tokens` on the sequence layout: the given ends stay, greedy equals
    the rollout, top-k of 1 equals greedy, a seed reproduces its clip and another seed
    differs, and the first example samples the same alone as in a batch."""
    from ganime_jax import generation

    model, params = model_and_params
    first = jnp.asarray(clip_tokens(8, 1)[:, 0])
    last = jnp.asarray(clip_tokens(9, 1)[:, 0])

    def generate(seed=0, batch=slice(None), **sampling):
        return np.asarray(generation.generate_tokens(
            model, params, first[batch], last[batch], MAX_FRAMES, jax.random.key(seed),
            **sampling))

    greedy = generate(method="greedy")
    np.testing.assert_array_equal(greedy[:, 0], first)
    np.testing.assert_array_equal(greedy[:, -1], last)
    np.testing.assert_array_equal(greedy[:, 1:-1], rollout(
        model, params, first, last, countdowns(MAX_FRAMES - 2),
        lambda logits, _: jnp.argmax(logits, axis=-1)))
    np.testing.assert_array_equal(generate(method="top_k", top_k=1), greedy)
    sampled = generate(seed=1, method="top_p", top_p=0.95, temperature=2.0)
    np.testing.assert_array_equal(generate(seed=1, method="top_p", top_p=0.95,
                                           temperature=2.0), sampled)
    assert not np.array_equal(generate(seed=2, method="top_p", top_p=0.95, temperature=2.0),
                              sampled)
    np.testing.assert_array_equal(generate(seed=1, batch=slice(0, 1), method="top_p",
                                           top_p=0.95, temperature=2.0)[0], sampled[0])
    np.testing.assert_array_equal(generation.generate_in_betweens(
        model, params, first, last, MAX_FRAMES, jax.random.key(1), count=3, method="top_p",
        top_p=0.95, temperature=2.0), sampled[:, 1:4])


@pytest.fixture(scope="module", params=((2, False), (WHOLE_HISTORY, True)),
                ids=["raster_window2", "raster_whole_history_bias"])
def raster_model_and_params(request):
    window, relative_bias = request.param
    model = make_model(window, relative_bias).clone(token_order="raster")
    params = model.init(jax.random.key(0), jnp.zeros((1, HW), jnp.int32),
                        jnp.zeros((1, 2, HW), jnp.int32), jnp.zeros((1, 1), jnp.int32))["params"]
    params = jax.tree.map(lambda p: p * 5.0 if p.ndim == 2 else p, params)
    if relative_bias:
        params["relative_bias"] = jax.random.normal(jax.random.key(1),
                                                    params["relative_bias"].shape)
    return model, params


def test_raster_one_pass_equals_feeding_the_cache_token_by_token(raster_model_and_params):
    """Teacher-forced raster logits of one pass over f_0..f_F equal the sampler's: f_0 fed as
    one block, then every true token fed alone (the window-2 ring wraps)."""
    model, params = raster_model_and_params
    tokens = jnp.asarray(clip_tokens(12, MAX_FRAMES - 1))  # f_0..f_{M-2}
    last = jnp.asarray(clip_tokens(13, 1)[:, 0])
    remaining = countdowns(MAX_FRAMES - 2)
    one_pass = np.asarray(model.apply({"params": params}, last, tokens, remaining))
    assert one_pass.shape == (BATCH, MAX_FRAMES - 2, HW, VOCAB)

    variables = {"params": params}
    cache = model.apply(variables, BATCH, method=FrameSequenceTransformer.init_cache)
    cache = model.apply(variables, cache, last, method=FrameSequenceTransformer.prefill)
    logits, cache = model.apply(variables, cache, tokens[:, 0], jnp.int32(0), jnp.int32(0),
                                remaining[:, 0] + 1, method=FrameSequenceTransformer.step_tokens)
    step = jax.jit(lambda cache, token, frame, position, countdown: model.apply(
        variables, cache, token, frame, position, countdown,
        method=FrameSequenceTransformer.step_tokens))
    cached = []
    for frame in range(1, MAX_FRAMES - 1):
        for position in range(HW):
            cached.append(np.asarray(logits[:, -1]))
            logits, cache = step(cache, tokens[:, frame, position][:, None], jnp.int32(frame),
                                 jnp.int32(position), remaining[:, frame - 1])
    cached = np.stack(cached, axis=1).reshape(one_pass.shape)
    np.testing.assert_allclose(cached, one_pass, atol=3e-5)


def test_raster_token_sees_only_the_tokens_before_it(raster_model_and_params):
    """Changing token (f, p) leaves the logits of every token up to it unchanged and moves
    the next token's."""
    model, params = raster_model_and_params
    tokens = clip_tokens(14, MAX_FRAMES - 1)
    last = jnp.asarray(clip_tokens(15, 1)[:, 0])
    remaining = countdowns(MAX_FRAMES - 2)

    def flat_logits(frames):  # (B, predicted tokens f_1[0].., V)
        out = model.apply({"params": params}, last, jnp.asarray(frames), remaining)
        return np.asarray(out).reshape(BATCH, -1, VOCAB)

    base = flat_logits(tokens)
    for frame, position in ((1, 0), (2, 5), (MAX_FRAMES - 3, HW - 1)):
        perturbed = tokens.copy()
        perturbed[:, frame, position] = (perturbed[:, frame, position] + 1) % VOCAB
        moved = np.abs(flat_logits(perturbed) - base).max(axis=(0, 2))
        index = (frame - 1) * HW + position  # the changed token's own prediction
        assert moved[:index + 1].max() == 0.0, (frame, position)
        assert moved[index + 1] > 1e-3, (frame, position)


def test_raster_greedy_rollout_is_the_argmax_of_its_own_prefix(raster_model_and_params):
    """Every greedy token of the cached rollout is the argmax of the one-pass logits over the
    rollout itself; through `generation`, top-k of 1 is greedy, seeds reproduce and differ."""
    from ganime_jax import generation

    model, params = raster_model_and_params
    first = jnp.asarray(clip_tokens(16, 1)[:, 0])
    last = jnp.asarray(clip_tokens(17, 1)[:, 0])
    remaining = countdowns(MAX_FRAMES - 2)
    greedy = rollout(model, params, first, last, remaining,
                     lambda logits, _: jnp.argmax(logits, axis=-1))
    frames = jnp.concatenate([first[:, None], greedy], axis=1)
    logits = model.apply({"params": params}, last, frames, remaining)
    np.testing.assert_array_equal(np.asarray(jnp.argmax(logits, axis=-1)), np.asarray(greedy))
    assert len(np.unique(np.asarray(greedy))) > 4

    def generate(seed, **sampling):
        return np.asarray(generation.generate_tokens(model, params, first, last, MAX_FRAMES,
                                                     jax.random.key(seed), **sampling))
    np.testing.assert_array_equal(generate(0, method="greedy")[:, 1:-1], greedy)
    np.testing.assert_array_equal(generate(0, method="top_k", top_k=1)[:, 1:-1], greedy)
    sampled = generate(1, method="top_k", top_k=8, temperature=2.0)
    np.testing.assert_array_equal(generate(1, method="top_k", top_k=8, temperature=2.0), sampled)
    assert not np.array_equal(generate(2, method="top_k", top_k=8, temperature=2.0), sampled)
    # Stopping after two in-betweens draws what the whole clip drew there.
    np.testing.assert_array_equal(generation.generate_in_betweens(
        model, params, first, last, MAX_FRAMES, jax.random.key(1), count=2, method="top_k",
        top_k=8, temperature=2.0), sampled[:, 1:3])


def test_raster_objective_scores_every_target_teacher_forced(raster_model_and_params):
    """sequence_sums in raster order: the one pass over f_0..f_{M-2} scored against f_1..f_{M-2}
    (padded frames masked); the own-prediction phase and context noise are refused."""
    model, params = raster_model_and_params
    tokens = jnp.asarray(clip_tokens(18, MAX_FRAMES))
    n_frames = jnp.asarray([MAX_FRAMES, MAX_FRAMES - 3], jnp.int32)
    sums = gpt_step.sequence_sums(model, params, tokens, n_frames, jax.random.key(0),
                                  train=False)
    last = tokens[jnp.arange(BATCH), n_frames - 1]
    remaining = jnp.maximum(n_frames[:, None] - 2 - jnp.arange(MAX_FRAMES - 2)[None, :], 0)
    logits = model.apply({"params": params}, last, tokens[:, :-1], remaining)
    expected = gpt_step.token_sums(logits, tokens[:, 1:-1], remaining >= 1)
    np.testing.assert_allclose([float(sums.loss), float(sums.count)],
                               [float(expected.loss), float(expected.count)], rtol=1e-5)
    assert float(sums.count) == HW * (2 * MAX_FRAMES - 3 - 4)
    for kwargs in (dict(own_predictions=True), dict(train=True, context_noise=0.5)):
        with pytest.raises(UserError, match="teacher-forced only"):
            gpt_step.sequence_sums(model, params, tokens, n_frames, jax.random.key(0),
                                   **{"train": False, **kwargs})
    with pytest.raises(UserError, match="token_order"):
        frame_sequence_from_config({"gpt": dict(vocab_size=VOCAB, n_positions=HW, n_embd=32,
                                                n_layer=1, n_head=4, attn_pdrop=0.0),
                                    "frame_tokens": HW, "n_frames_before": 2,
                                    "max_frames": MAX_FRAMES, "token_order": "zigzag"})
    with pytest.raises(UserError, match="needs the sequence layout"):
        transformer_from_config({"layout": "window", "token_order": "raster"})
