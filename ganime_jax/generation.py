"""Generating the frames between a first and a last frame: one compiled scan over frames.

Only tokens move inside the loop: the first and last frames are encoded once, each scan step
runs one transformer forward pass (which predicts a whole frame), samples all of that frame's
tokens in parallel and writes them into the clip, and the generated frames are decoded to
pixels once at the end. The context of each step follows `ganime_jax.conditioning`, the
convention training uses.

When the transformer is built with `countdown_on_last_frame=False` the last frame's keys and
values do not depend on the step; they are then computed once (`prefix_cache`) and every step
runs the transformer on the context frames only. The `sequence` layout always works this way:
each step feeds one frame's block against a fixed-size cache of the last frame and the frames
before (`frame_sequence.rollout`).
"""
import dataclasses
import functools
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from ganime_jax import conditioning
from ganime_jax.errors import UserError
from ganime_jax.models.frame_layouts import Transformer
from ganime_jax.models.frame_sequence import FrameSequenceTransformer, rollout
from ganime_jax.models.ganime_transformer import GANimeTransformer

METHODS = ("greedy", "top_k", "top_p")
# How one of K candidate clips is kept (`generate_frames`): "arrival", the one whose
# second-to-last frame is nearest the given last frame; "medoid", the one nearest the others.
SELECTIONS = ("arrival", "medoid")
# Where a clip's in-betweens are drawn from (`generate_frames`): "forward", all from the first
# frame on; "both", the first half from the first frame on and the second half from the last
# frame back (the model run with the two frames swapped, its frames reversed).
DIRECTIONS = ("forward", "both")
# The backward draws' random stream, fold_in(rng, _BACKWARD_STREAM): apart from the
# candidates' fold_in(rng, k), k < candidates.
_BACKWARD_STREAM = 2**31 - 1
# Frames per decoder call on CPU: XLA:CPU's convolutions run faster per frame on small batches
# (reference VQ-GAN on 2 loaded cores: 112 frames took 17 s in one call, 9-13 s in calls of
# 1 to 14 frames; on 2 idle AVX-512 cores, `bench/bench_decode_batch.py`: 14 frames 83 ms a
# frame in calls of 2, 85 in one call, 97-98 in calls of 4 or 8 (padded to 16); 112 frames
# 84-86 ms in calls of 2 to 14, 99 in one call).
CPU_DECODE_BATCH_SIZE = 2


class FrameTokenizer(Protocol):
    """What generation needs from a frozen tokenizer (`ganime_jax.tokenizer.Tokenizer`)."""

    frame_shape: tuple[int, int, int]

    def encode(self, frames: Any) -> jax.Array:
        """uint8 (B, H, W, 3) -> (B, h*w) int32."""

    def decode(self, tokens: Any) -> jax.Array:
        """(B, h*w) int -> uint8 (B, H, W, 3)."""


class InBetweenRefiner(Protocol):
    """What generation needs from a frozen stage-3 refiner (`ganime_jax.refiner.Refiner`)."""

    uses_candidates: bool  # reads the statistics of the K candidates (`candidate_statistics`)

    def refine(self, clips: np.ndarray, first: np.ndarray, last: np.ndarray,
               decoded_first: np.ndarray, decoded_last: np.ndarray, num_frames: int,
               statistics: np.ndarray | None = None) -> np.ndarray:
        """uint8 in-betweens (B, M, H, W, 3) with their given frames and those frames' decodes
        (B, H, W, 3) (and, if `uses_candidates`, their candidates' statistics (B, M, H, W, 9))
        -> refined uint8 in-betweens."""


def check_sampling(method: str, temperature: float, top_k: int, top_p: float) -> None:
    """Raises a one-line UserError for sampling settings that cannot work."""
    if method not in METHODS:
        raise UserError(f"sampling method {method!r} is unknown; use one of {list(METHODS)}.")
    if method == "greedy":
        return
    if not temperature > 0:
        raise UserError(f"sampling temperature must be > 0, got {temperature}; use "
                        "method='greedy' for argmax decoding.")
    if method == "top_k" and not (isinstance(top_k, (int, np.integer)) and top_k >= 1):
        raise UserError(f"top_k sampling needs an integer top_k >= 1, got {top_k!r}.")
    if method == "top_p" and not 0 < top_p <= 1:
        raise UserError(f"top_p sampling needs 0 < top_p <= 1, got {top_p}.")


def check_choice(candidates: int, method: str, selection: str = "arrival",
                 direction: str = "forward") -> None:
    """How `generate_frames` draws and keeps clips: best-of-K needs K >= 1, and K > 1 needs a
    sampling method (greedy draws K identical clips); `selection` is one of SELECTIONS and
    `direction` one of DIRECTIONS."""
    check_direction(direction)
    if selection not in SELECTIONS:
        raise UserError(f"unknown candidate selection {selection!r}; choose one of "
                        f"{list(SELECTIONS)}.")
    if not isinstance(candidates, (int, np.integer)) or candidates < 1:
        raise UserError(f"candidates must be an integer >= 1 (clips drawn per pair of frames), "
                        f"got {candidates!r}.")
    if candidates > 1 and method == "greedy":
        raise UserError(f"candidates={candidates} with greedy decoding draws {candidates} "
                        "identical clips; use method='top_k' or 'top_p', or candidates=1.")


def check_refiner_choice(uses_candidates: bool, candidates: int, selection: str) -> None:
    """A refiner that reads the candidates' statistics needs K > 1 decoded candidates: the
    medoid selection."""
    if uses_candidates and (candidates < 2 or selection != "medoid"):
        raise UserError(f"this refiner reads the statistics of several candidate clips, but "
                        f"sampling draws candidates={candidates} kept by {selection!r}; set "
                        "config.sample.candidates to the number it was trained with and "
                        "config.sample.selection='medoid'.")


def check_direction(direction: str) -> None:
    """`direction` is one of DIRECTIONS."""
    if direction not in DIRECTIONS:
        raise UserError(f"unknown sampling direction {direction!r}; choose one of "
                        f"{list(DIRECTIONS)}.")


def check_num_frames(num_frames: int, max_frames: int) -> None:
    """A clip needs at least 3 frames and at most the model's `max_frames` (its countdown)."""
    low = conditioning.MIN_CLIP_FRAMES
    if not isinstance(num_frames, (int, np.integer)) or not low <= num_frames <= max_frames:
        raise UserError(
            f"num_frames={num_frames!r} is not supported: this model generates clips of {low} "
            f"to {max_frames} frames (first and last included); pick a value in that range.")


def sample_tokens(logits: jax.Array, rng: jax.Array, *, method: str, temperature: jax.Array,
                  top_k: int, top_p: jax.Array) -> jax.Array:
    """Token ids (...,) int32 from logits (..., vocab), every position independently."""
    if method == "greedy":
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits.astype(jnp.float32) / temperature
    if method == "top_k":
        candidates, ids = jax.lax.top_k(logits, min(top_k, logits.shape[-1]))
    else:
        iota = jnp.broadcast_to(jnp.arange(logits.shape[-1], dtype=jnp.int32), logits.shape)
        negated, ids = jax.lax.sort((-logits, iota), dimension=logits.ndim - 1, num_keys=1)
        candidates = -negated
        probs = jax.nn.softmax(candidates, axis=-1)
        # Keep the smallest prefix of the sorted tokens whose mass reaches top_p: a token stays
        # when the mass before it is still below top_p (so the most likely one always stays).
        before = jnp.cumsum(probs, axis=-1) - probs
        candidates = jnp.where(before < top_p, candidates, -jnp.inf)
    choice = jax.random.categorical(rng, candidates, axis=-1)
    return jnp.take_along_axis(ids, choice[..., None], axis=-1)[..., 0].astype(jnp.int32)


def _schedule(num_frames: int, n_frames_before: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For the generated frames t = 1..T-2: t, context indices (T-2, k), frames remaining."""
    steps = conditioning.target_frames(num_frames)
    context = conditioning.context_index_array(num_frames, n_frames_before)
    remaining = np.asarray(conditioning.remaining_frames(steps, num_frames), np.int32)
    return steps, context, remaining


@functools.partial(jax.jit, static_argnames=(
    "transformer", "num_frames", "count", "method", "top_k", "reuse_last_frame_kv"))
def _generate(transformer: GANimeTransformer, params: Any, first_tokens: jax.Array,
              last_tokens: jax.Array, rng: jax.Array, temperature: jax.Array, top_p: jax.Array, *,
              num_frames: int, count: int, method: str, top_k: int,
              reuse_last_frame_kv: bool) -> jax.Array:
    """The window layout's first `count` in-betweens (B, count, hw): one scan step per frame."""
    variables = {"params": params}
    batch, frame_tokens = first_tokens.shape
    steps, context_index, remaining = (
        array[:count] for array in _schedule(num_frames, transformer.n_frames_before))
    clip = jnp.zeros((batch, num_frames, frame_tokens), jnp.int32)
    clip = clip.at[:, 0].set(first_tokens).at[:, -1].set(last_tokens)
    use_prefix = reuse_last_frame_kv and not transformer.countdown_on_last_frame
    prefix_kv = None
    if use_prefix:
        prefix_kv = transformer.apply(variables, last_tokens, jnp.full((batch,), remaining[0]),
                                      method=GANimeTransformer.prefix_cache)
    sample = functools.partial(sample_tokens, method=method, temperature=temperature,
                               top_k=top_k, top_p=top_p)
    def step(clip: jax.Array, schedule: tuple[jax.Array, jax.Array, jax.Array]):
        t, context_t, remaining_t = schedule
        context = jnp.take(clip, context_t, axis=1)
        logits = transformer.apply(
            variables, None if use_prefix else last_tokens, context,
            jnp.full((batch,), remaining_t), prefix_kv=prefix_kv)
        frame = _sample_frame(sample, logits, rng, t)
        return jax.lax.dynamic_update_index_in_dim(clip, frame, t, axis=1), None

    clip, _ = jax.lax.scan(step, clip, (steps, context_index, remaining))
    return clip[:, 1:count + 1]


def _sample_frame(sample: Any, logits: jax.Array, rng: jax.Array, t: jax.Array) -> jax.Array:
    """Frame t's tokens (B, hw) from logits (B, hw, V), one key per example and frame: an
    example's sample does not depend on the batch it is in."""
    example_ids = jnp.arange(logits.shape[0])
    keys = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.fold_in(rng, t), example_ids)
    return jax.vmap(sample)(logits, keys)


@functools.partial(jax.jit, static_argnames=(
    "transformer", "num_frames", "count", "method", "top_k"))
def _generate_sequence(transformer: FrameSequenceTransformer, params: Any,
                       first_tokens: jax.Array, last_tokens: jax.Array, rng: jax.Array,
                       temperature: jax.Array, top_p: jax.Array, *, num_frames: int, count: int,
                       method: str, top_k: int) -> jax.Array:
    """The sequence layout's first `count` in-betweens (B, count, hw): one cached step per
    frame (`frame_sequence.rollout`)."""
    batch = first_tokens.shape[0]
    countdown = conditioning.remaining_frames(conditioning.target_frames(num_frames), num_frames)
    remaining = jnp.broadcast_to(jnp.asarray(countdown[:count], jnp.int32), (batch, count))
    sample = functools.partial(sample_tokens, method=method, temperature=temperature,
                               top_k=top_k, top_p=top_p)
    # Parallel order: frame s + 1 is sampled at step s, keyed on its index like the window
    # layout's frames; raster order: generated token s (of all frames, in order) on s + 1.
    return rollout(transformer, params, first_tokens, last_tokens, remaining,
                   lambda logits, s: _sample_frame(sample, logits, rng, s + 1))


def generate_tokens(transformer: Transformer, params: Any, first_tokens: jax.Array,
                    last_tokens: jax.Array, num_frames: int, rng: jax.Array, *,
                    method: str = "greedy", temperature: float = 1.0, top_k: int = 0,
                    top_p: float = 1.0, reuse_last_frame_kv: bool = True) -> jax.Array:
    """Tokens (B, num_frames, frame_tokens) int32 of clips from their first and last frames.

    params: the transformer's "params" collection. first_tokens, last_tokens: (B,
    frame_tokens) int. Frames 1..num_frames-2 are generated in order inside one compiled
    `lax.scan`; frame 0 and frame num_frames-1 are the given tokens. `method` is "greedy"
    (argmax), "top_k" or "top_p" (nucleus), the latter two after dividing the logits by
    `temperature`. `rng` seeds the sampling (unused by greedy). `reuse_last_frame_kv=False`
    forces the full sequence every step even where the last frame's cache could be reused
    (window layout; the sequence layout always caches). Compiled once per transformer,
    num_frames, method, top_k and input shape.
    """
    middle = generate_in_betweens(transformer, params, first_tokens, last_tokens, num_frames, rng,
                                  method=method, temperature=temperature, top_k=top_k,
                                  top_p=top_p, reuse_last_frame_kv=reuse_last_frame_kv)
    return jnp.concatenate([jnp.asarray(first_tokens, jnp.int32)[:, None], middle,
                            jnp.asarray(last_tokens, jnp.int32)[:, None]], axis=1)


def generate_in_betweens(transformer: Transformer, params: Any, first_tokens: jax.Array,
                         last_tokens: jax.Array, num_frames: int, rng: jax.Array, *,
                         count: int | None = None, method: str = "greedy",
                         temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                         reuse_last_frame_kv: bool = True) -> jax.Array:
    """Tokens (B, count, frame_tokens) int32 of frames 1..count of `num_frames`-frame clips.

    What `generate_tokens` draws for those frames with the same arguments (the countdown is
    the whole clip's), stopping there: the steps after frame `count` are never run. `count`
    defaults to every in-between, num_frames - 2. Compiled once per count as well.
    """
    check_num_frames(num_frames, transformer.max_frames)
    check_sampling(method, temperature, top_k, top_p)
    count = num_frames - 2 if count is None else count
    if not isinstance(count, (int, np.integer)) or not 1 <= count <= num_frames - 2:
        raise UserError(f"count={count!r} in-between frames asked of a {num_frames}-frame clip; "
                        f"pick 1 to {num_frames - 2}.")
    first_tokens, last_tokens = jnp.asarray(first_tokens), jnp.asarray(last_tokens)
    expected = (first_tokens.shape[0], transformer.frame_tokens)
    for name, tokens in (("first", first_tokens), ("last", last_tokens)):
        if tokens.shape != expected or not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise UserError(f"{name}-frame tokens of shape {tokens.shape} and dtype "
                            f"{tokens.dtype} given: expected integers of shape (B, frame_tokens) "
                            f"= {expected}.")
    args = (transformer, params, first_tokens.astype(jnp.int32), last_tokens.astype(jnp.int32),
            rng, jnp.float32(temperature), jnp.float32(top_p))
    static = dict(num_frames=num_frames, count=int(count), method=method,
                  top_k=int(top_k) if method == "top_k" else 0)
    if isinstance(transformer, FrameSequenceTransformer):
        return _generate_sequence(*args, **static)
    return _generate(*args, **static, reuse_last_frame_kv=reuse_last_frame_kv)


def generate_frames(tokenizer: FrameTokenizer, transformer: Transformer, params: Any,
                    first_frames: np.ndarray, last_frames: np.ndarray, num_frames: int,
                    rng: jax.Array, *, decode_batch_size: int | None = None,
                    candidates: int = 1, selection: str = "arrival", direction: str = "forward",
                    refiner: InBetweenRefiner | None = None, **sampling: Any) -> np.ndarray:
    """uint8 clips (B, num_frames, H, W, 3) from uint8 first and last frames (B, H, W, 3).

    The two frames are encoded once, the in-between tokens generated by
    `generate_in_betweens` (`sampling`: its keyword arguments) and decoded once at the end, all
    frames of the batch in one call or, with `decode_batch_size`, in calls of that many frames
    (XLA:CPU runs the decoder's convolutions faster per frame on small batches; see
    CPU_DECODE_BATCH_SIZE).
    Frames 0 and num_frames-1 of the output are the given frames themselves, not their
    reconstructions.

    With `candidates` K > 1, K clips are drawn per pair of frames and the one that arrives
    nearest the given last frame is kept (`nearest_arrival`): a model trained teacher-forced
    extrapolates the motion it has drawn so far, so a wrong first step is never corrected, and
    the given last frame is the only evidence against it. With `selection="medoid"` the kept
    one is instead the `medoid` of the K (every candidate's frames are decoded): the clip of
    least expected squared error under the model's own distribution, which a single draw
    (sharp, but often in the wrong place) is not. Candidate 0 of each clip is the clip that
    K = 1 draws.

    With `direction="both"` the first half of the in-betweens (the larger half when their
    number is odd) comes from clips drawn forward as above and the second half from clips drawn
    backward: the same model given the last frame as its first and the first as its last, its
    frames reversed. Each frame is then drawn from its nearer given frame, where a draw has
    drifted least. Candidates are drawn and kept in each direction on their own, the medoid
    over the frames that direction keeps; a draw stops after the frames its direction keeps
    (unless kept by arrival, which needs its last in-between), and only kept frames are
    decoded.

    With a `refiner`, the decoded in-betweens are then refined with the given frames and the
    decodes of their tokens (stage 3, `ganime_jax.models.refiner`), and, for a refiner that
    `uses_candidates`, the `candidate_statistics` of the K medoid candidates.
    """
    drawn = draw_in_betweens(tokenizer, transformer, params, first_frames, last_frames,
                             num_frames, rng, decode_batch_size=decode_batch_size,
                             candidates=candidates, selection=selection, direction=direction,
                             with_statistics=refiner is not None and refiner.uses_candidates,
                             with_decoded_ends=refiner is not None, **sampling)
    pixels = drawn.in_betweens
    if refiner is not None:
        pixels = refiner.refine(pixels, first_frames, last_frames, drawn.decoded_first,
                                drawn.decoded_last, num_frames, drawn.statistics)
    return np.concatenate([first_frames[:, None], pixels, last_frames[:, None]], axis=1)


@dataclasses.dataclass(frozen=True)
class DrawnInBetweens:
    """What generation draws for a batch of clips before any refiner (`draw_in_betweens`).

    in_betweens: uint8 (B, M, H, W, 3), the kept candidate's decoded in-betweens.
    statistics: uint8 (B, M, H, W, 9), the `candidate_statistics` of the K candidates at each
        kept in-between, or None.
    decoded_first, decoded_last: uint8 (B, H, W, 3), the decodes of the given frames' tokens,
        or None.
    """

    in_betweens: np.ndarray
    statistics: np.ndarray | None
    decoded_first: np.ndarray | None
    decoded_last: np.ndarray | None


def draw_in_betweens(tokenizer: FrameTokenizer, transformer: Transformer, params: Any,
                     first_frames: np.ndarray, last_frames: np.ndarray, num_frames: int,
                     rng: jax.Array, *, decode_batch_size: int | None = None,
                     candidates: int = 1, selection: str = "arrival",
                     direction: str = "forward", with_statistics: bool = False,
                     with_decoded_ends: bool = False, **sampling: Any) -> DrawnInBetweens:
    """The decoded in-betweens `generate_frames` draws and keeps with the same arguments,
    before refining; with `with_statistics` (K > 1 candidates kept by their medoid) also the
    candidates' statistics, with `with_decoded_ends` the decodes of the given frames' tokens
    (what a stage-3 refiner reads beside them)."""
    first_frames, last_frames = np.asarray(first_frames), np.asarray(last_frames)
    expected = tuple(tokenizer.frame_shape)
    for name, frames in (("first", first_frames), ("last", last_frames)):
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[1:] != expected:
            raise UserError(f"{name} frames of shape {frames.shape} and dtype {frames.dtype} "
                            f"given: expected uint8 (B, {', '.join(map(str, expected))}).")
    if first_frames.shape[0] != last_frames.shape[0]:
        raise UserError(f"{first_frames.shape[0]} first frames but {last_frames.shape[0]} last "
                        "frames given: pass one last frame per first frame.")
    check_num_frames(num_frames, transformer.max_frames)
    check_choice(candidates, sampling.get("method", "greedy"), selection, direction)
    check_refiner_choice(with_statistics, candidates, selection)
    batch = first_frames.shape[0]
    ends = tokenizer.encode(np.concatenate([first_frames, last_frames]))
    first_tokens, last_tokens = ends[:batch], ends[batch:]
    draw = functools.partial(_draw_in_betweens, tokenizer, transformer, params,
                             num_frames=num_frames, decode_batch_size=decode_batch_size,
                             candidates=candidates, selection=selection,
                             with_statistics=with_statistics, **sampling)
    middle = num_frames - 2
    if direction == "forward" or middle == 1:  # one in-between: the forward one
        pixels, statistics = draw(first_tokens, last_tokens, last_frames, rng, keep=middle)
    else:
        forward_count = (middle + 1) // 2
        forward = draw(first_tokens, last_tokens, last_frames, rng, keep=forward_count)
        backward = draw(last_tokens, first_tokens, first_frames,
                        jax.random.fold_in(rng, _BACKWARD_STREAM), keep=middle - forward_count)
        pixels, statistics = (
            None if f is None else np.concatenate([f, b[:, ::-1]], axis=1)
            for f, b in zip(forward, backward))
    decoded_first = decoded_last = None
    if with_decoded_ends:
        decoded_ends = decode_in_batches(tokenizer, ends, decode_batch_size)
        decoded_first, decoded_last = decoded_ends[:batch], decoded_ends[batch:]
    return DrawnInBetweens(pixels, statistics, decoded_first, decoded_last)


def _draw_in_betweens(tokenizer: FrameTokenizer, transformer: Transformer, params: Any,
                      start_tokens: jax.Array, end_tokens: jax.Array, end_frames: np.ndarray,
                      rng: jax.Array, *, keep: int, num_frames: int,
                      decode_batch_size: int | None, candidates: int, selection: str,
                      with_statistics: bool, **sampling: Any
                      ) -> tuple[np.ndarray, np.ndarray | None]:
    """uint8 (B, keep, H, W, 3): the first `keep` in-between frames of the clip kept among
    `candidates` drawn from `start_tokens` towards `end_tokens` (`generate_frames`), and with
    `with_statistics` (medoid selection only) the `candidate_statistics` of those frames."""
    batch, shape = start_tokens.shape[0], tuple(tokenizer.frame_shape)
    # Arrival compares each candidate's last in-between with the end frame, so those candidates
    # are drawn whole; otherwise the draws stop after the kept frames.
    by_arrival = candidates > 1 and selection == "arrival"
    count = num_frames - 2 if by_arrival else keep
    # Candidate k draws with fold_in(rng, k) (k = 0: rng itself, the clip of candidates=1), in
    # its own call: an example's draws depend on neither the batch nor K.
    draws = [generate_in_betweens(transformer, params, start_tokens, end_tokens, num_frames,
                                  jax.random.fold_in(rng, k) if k else rng, count=count,
                                  **sampling)
             for k in range(candidates)]
    if candidates > 1 and selection == "medoid":
        kept = jnp.stack(draws, axis=1).reshape(-1, transformer.frame_tokens)
        pixels = decode_in_batches(tokenizer, kept, decode_batch_size)
        pixels = pixels.reshape(batch, candidates, keep, *shape)
        statistics = candidate_statistics(pixels) if with_statistics else None
        return pixels[np.arange(batch), medoid(pixels)], statistics
    tokens = nearest_arrival(tokenizer, jnp.stack(draws, axis=1), end_frames,
                             decode_batch_size) if by_arrival else draws[0]
    kept = tokens[:, :keep].reshape(batch * keep, -1)
    pixels = decode_in_batches(tokenizer, kept, decode_batch_size)
    return pixels.reshape(batch, keep, *shape), None


def candidate_statistics(candidates: np.ndarray) -> np.ndarray:
    """uint8 (B, M, H, W, 3C) of uint8 candidate frames (B, K, M, H, W, C): their per-pixel
    median, mean and standard deviation over the K candidates, rounded, in that order
    (`models.refiner.CANDIDATE_STATISTICS`)."""
    values = candidates.astype(np.float32)
    statistics = (np.median(values, axis=1), values.mean(axis=1), values.std(axis=1))
    return np.concatenate([np.clip(np.round(s), 0, 255).astype(np.uint8) for s in statistics],
                          axis=-1)


def nearest_arrival(tokenizer: FrameTokenizer, candidates: jax.Array, last_frames: np.ndarray,
                    decode_batch_size: int | None) -> np.ndarray:
    """(B, M, hw): of each clip's K candidates' in-between tokens (B, K, M, hw), the one whose
    last in-between frame (the clip's second-to-last) decodes nearest the given last frame
    (mean squared pixel error; the lower k on ties)."""
    batch, count = candidates.shape[:2]
    arrivals = decode_in_batches(tokenizer, candidates[:, :, -1].reshape(batch * count, -1),
                                 decode_batch_size)
    errors = (arrivals.reshape(batch, count, -1).astype(np.float32)
              - last_frames.reshape(batch, 1, -1).astype(np.float32)) ** 2
    best = errors.mean(axis=-1).argmin(axis=1)
    return np.asarray(candidates)[np.arange(batch), best]


def medoid(clips: np.ndarray) -> np.ndarray:
    """(B,) int: of each row's K clips (B, K, ...), the index of the one with the least summed
    squared pixel distance to the other K - 1 (the lower index on ties)."""
    batch, count = clips.shape[:2]
    chosen = np.empty((batch,), np.int64)
    for row, candidates in enumerate(clips.reshape(batch, count, -1)):
        flat = candidates.astype(np.float64)  # exact sums of squared uint8 differences
        gram = flat @ flat.T
        norms = np.diagonal(gram)
        chosen[row] = (norms[:, None] + norms[None, :] - 2 * gram).sum(axis=1).argmin()
    return chosen


def default_decode_batch_size() -> int | None:
    """CPU_DECODE_BATCH_SIZE on CPU; every frame in one call on accelerators."""
    return CPU_DECODE_BATCH_SIZE if jax.default_backend() == "cpu" else None


def decode_in_batches(tokenizer: FrameTokenizer, tokens: jax.Array,
                      batch_size: int | None) -> np.ndarray:
    """uint8 frames of tokens (N, hw), decoded `batch_size` at a time (None: all at once).

    The last batch is padded to the full size, so one compilation serves every call.
    """
    count = tokens.shape[0]
    if batch_size is None or batch_size >= count:
        return np.asarray(tokenizer.decode(tokens))
    padded = -(-count // batch_size) * batch_size
    tokens = jnp.pad(tokens, ((0, padded - count), (0, 0)))
    # Every call is dispatched before the first result is waited for.
    decoded = [tokenizer.decode(tokens[i:i + batch_size]) for i in range(0, padded, batch_size)]
    return np.concatenate([np.asarray(frames) for frames in decoded])[:count]
