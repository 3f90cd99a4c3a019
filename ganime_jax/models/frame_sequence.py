"""Stage 2 in one causal pass: the whole clip as one sequence of frame blocks (`sequence` layout).

GANime's layout (`GANimeTransformer`) builds a separate sequence for every target frame, so
each frame's tokens are recomputed once per target that sees it. Here a clip of T frames is laid
out once: [last frame][f_0][f_1]...[f_{T-3}], one block of `frame_tokens` tokens per frame, and
the logits at the block of f_j are those of frame j+1, position for position (one forward pass
still predicts a whole frame, for every frame at once).

- Attention is block-causal: a token sees every token of its own frame (that frame is known; the
  next one is predicted), the last frame, and the earlier frames inside the window of
  `n_frames_before` frames (f_{j-k+1}..f_j for block j; `WHOLE_HISTORY` = every earlier frame).
  The last frame's block sees itself only, so its keys/values are computed once per clip.
- Optional relative position bias (`relative_position_bias`, T5/Swin style): a learned logit
  bias per head for each (frame distance, row offset, column offset) between a query token and a
  key token on the `grid_width`-wide token grid (the last frame is its own distance bucket),
  shared by all layers. Zeros at init (the model then equals one without it); it lets the model
  learn "the token one cell up-left, one frame back" once for every position instead of once
  per absolute position.
- Embeddings: token + within-frame position (the GPT-2 position table, rows 0..frame_tokens-1,
  so the HF trunk still imports) + frame index (0 for the last frame, 1 + j for f_j) + the
  countdown of the frame each block predicts (frames left until the last frame after it). The
  last frame's block carries no countdown. Absolute frame indices are cheap and fit the short
  clips here (T <= max_frames); 25 frames x 128 tokens would exceed GPT-2's 1,024 positions.
- With a window, training computes each block against its window only (keys/values gathered
  per block), not a dense (T-1)*hw square; the whole history uses one dense block-causal mask.
- Sampling feeds one frame's block per step against a fixed-size cache: slot 0 holds the last
  frame, then a ring of `n_frames_before` frame slots (or one slot per frame for the whole
  history); see `init_cache` and `step`.
- `token_order="raster"` (ours; GANime's is "parallel"): a frame's tokens are predicted one
  after another in raster order, each seeing the tokens before it in its own frame, as in a
  plain GPT over the flattened clip [last][f_0][f_1]...: the logit at token p of a block is
  that of token p+1 (of the next block's token 0 at p = hw-1). A frame's tokens are then drawn
  jointly, not independently: where the context leaves a digit's next position uncertain,
  parallel draws put each patch of it at a different position, a raster draw commits to one.
  The clip blocks include the frames predicted (their earlier tokens are context), so the
  window reaches `n_frames_before` whole frames back from the block being predicted, and
  sampling feeds one token per step (`step_tokens`).
"""
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ganime_jax.errors import UserError
from ganime_jax.models.gpt import GPT2Config, GPT2LM, LayerStates, embedding_init

LM_PARAMS = "lm"  # the GPT-2 trunk's parameter subtree, as in GANimeTransformer
WHOLE_HISTORY = 0  # `n_frames_before` value meaning: every earlier frame is visible
TOKEN_ORDERS = ("parallel", "raster")  # `token_order` values (module docstring)

# Per layer, (keys, values) (B, heads, slots * hw, head_dim): each layer's in its own buffers.
Cache = LayerStates


@jax.custom_vjp
def add_shared_bias(logits: jax.Array, bias: jax.Array) -> jax.Array:
    """logits + bias, where `bias` is the trailing part of the logits' shape (one bias shared by
    every leading index: batch, frame). Its gradient sums over the leading axes as a product
    with a vector of ones: XLA:CPU reduces over leading axes about 30x slower (the position
    bias's gradient took 15 % of the sequence layout's train step; README, "Stage-2 layouts,
    speed")."""
    return logits + bias


def _add_shared_bias_fwd(logits: jax.Array, bias: jax.Array) -> tuple[jax.Array, jax.Array]:
    return logits + bias, bias


def _add_shared_bias_bwd(bias: jax.Array, grad: jax.Array) -> tuple[jax.Array, jax.Array]:
    rows = grad.reshape(-1, bias.size)
    bias_grad = jnp.ones((rows.shape[0],), rows.dtype) @ rows
    return grad, bias_grad.reshape(bias.shape).astype(bias.dtype)


add_shared_bias.defvjp(_add_shared_bias_fwd, _add_shared_bias_bwd)


def _attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array,
               bias: jax.Array | None = None) -> jax.Array:
    """Softmax attention, logits and softmax in float32. q (..., T, H, D), k/v (..., S, H, D),
    mask broadcastable to (..., H, T, S), and the optional float32 logit bias (H, T, S)."""
    # The queries scaled rather than the logits: (S / D) times fewer divisions.
    logits = jnp.einsum("...thd,...shd->...hts", q / q.shape[-1] ** 0.5, k,
                        preferred_element_type=jnp.float32)
    if bias is not None:
        if bias.shape != logits.shape[logits.ndim - bias.ndim:]:
            raise ValueError(f"position bias {bias.shape} does not end the logits' shape "
                             f"{logits.shape}")
        logits = add_shared_bias(logits, bias)
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("...hts,...shd->...thd", weights, v)


def block_mask(frame_ids: jax.Array, frame_tokens: int, window: int,
               causal_within: bool = False) -> jax.Array:
    """(L, L) bool over the tokens of blocks with frame indices `frame_ids` ((F,), 0 = the last
    frame): a query sees a key when the key's block is the last frame, or when both are clip
    frames and the key's frame is at most the query's and within `window` of it; with
    `causal_within`, a clip token sees only the tokens up to itself in its own block."""
    ids = jnp.repeat(frame_ids, frame_tokens)
    q, k = ids[:, None], ids[None, :]
    visible = (k == 0) | ((q > 0) & (k <= q))
    if window != WHOLE_HISTORY:
        visible &= (k == 0) | (k > q - window)
    if causal_within:
        position = jnp.tile(jnp.arange(frame_tokens), frame_ids.shape[0])
        visible &= (k != q) | (q == 0) | (position[None, :] <= position[:, None])
    return visible


def dense_attend(q: jax.Array, k: jax.Array, v: jax.Array, past: Any,
                 inputs: Any) -> tuple[jax.Array, Any]:
    """Block-causal attention over the whole sequence; `inputs` = (the (L, L) mask, the
    (H, L, L) position bias or None)."""
    del past
    mask, bias = inputs
    return _attention(q, k, v, mask[None, None], bias), None


def windowed_attend(q: jax.Array, k: jax.Array, v: jax.Array, past: Any,
                    inputs: Any) -> tuple[jax.Array, Any]:
    """Block j of the clip frames against the last frame and its own window only.

    `inputs` = (window_index (F, W) int32: the blocks of each clip frame's window, oldest first,
    window_valid (F, W) bool, None or the (hw, hw) bool mask of a block's tokens against its
    own, the newest of its window (raster order: up to itself), then the position biases or
    None: the last frame's block against itself (H, hw, hw), and every clip block against
    [last frame, window] (H, hw, (1 + W) * hw)). Block 0 (the last frame) attends to itself.
    """
    del past
    window_index, window_valid, own_mask, last_bias, frame_bias = inputs
    batch, length, heads, dim = q.shape
    blocks = window_index.shape[0] + 1
    hw = length // blocks
    q, k, v = (x.reshape(batch, blocks, hw, heads, dim) for x in (q, k, v))
    last_out = _attention(q[:, 0], k[:, 0], v[:, 0], jnp.ones((1, 1, 1, 1), bool), last_bias)

    def windows(x):  # (B, F, (1 + W) * hw, H, D): the last frame, then the window
        gathered = x[:, window_index]  # (B, F, W, hw, H, D)
        last = jnp.broadcast_to(x[:, :1, None], (batch, blocks - 1, 1, hw, heads, dim))
        return jnp.concatenate([last, gathered], axis=2).reshape(batch, blocks - 1, -1, heads,
                                                                 dim)

    valid = jnp.concatenate([jnp.ones((blocks - 1, 1), bool), window_valid], axis=1)
    mask = jnp.repeat(valid, hw, axis=1)[:, None, :]  # (F, 1, S)
    if own_mask is not None:
        older = mask.shape[-1] - hw
        mask = jnp.concatenate([jnp.broadcast_to(mask[..., :older], (blocks - 1, hw, older)),
                                jnp.broadcast_to(own_mask, (blocks - 1, hw, hw))], axis=-1)
    mask = mask[None, :, None]  # (1, F, 1, hw or 1, S)
    frame_out = _attention(q[:, 1:], windows(k), windows(v), mask, frame_bias)
    return jnp.concatenate([last_out[:, None], frame_out], axis=1).reshape(
        batch, length, heads, dim), None


def cached_attend(q: jax.Array, k: jax.Array, v: jax.Array, past: Any,
                  inputs: Any) -> tuple[jax.Array, Any]:
    """L new tokens against the cache (read only) and against each other.

    `past` = (keys, values) (B, H, slots * hw, D), heads before rows so that the products
    with the cache need no transpose of it; `inputs` = (cache_mask (L, slots * hw) bool:
    the cache rows each new token sees, never those it is about to overwrite; new_mask (L, L)
    bool; the (H, L, slots * hw + L) position bias or None). Returns the attention and the new
    tokens' (keys, values): the caller writes those into the cache once for all layers
    (`write_cache`), so a step copies no layer's whole cache.
    """
    cache_mask, new_mask, bias = inputs
    keys, values = past
    scale = q.shape[-1] ** 0.5
    logits = jnp.concatenate([
        jnp.einsum("bthd,bhsd->bhts", q, keys.astype(q.dtype),
                   preferred_element_type=jnp.float32),
        jnp.einsum("bthd,bshd->bhts", q, k, preferred_element_type=jnp.float32)], axis=-1)
    logits = logits / scale
    if bias is not None:
        logits = logits + bias
    mask = jnp.concatenate([cache_mask, new_mask], axis=-1)[None, None]
    weights = jax.nn.softmax(jnp.where(mask, logits, jnp.finfo(jnp.float32).min), axis=-1)
    weights = weights.astype(v.dtype)
    rows = keys.shape[2]
    out = (jnp.einsum("bhts,bhsd->bthd", weights[..., :rows], values.astype(v.dtype))
           + jnp.einsum("bhts,bshd->bthd", weights[..., rows:], v))
    return out, (k, v)


def write_cache(cache: Cache, new: tuple[jax.Array, jax.Array], row: jax.Array) -> Cache:
    """The cache with every layer's new keys/values (stacked: (n_layer, B, L, H, D) each)
    written at `row`."""
    return LayerStates(
        tuple(jax.lax.dynamic_update_slice_in_dim(c, jnp.swapaxes(n[layer], 1, 2).astype(c.dtype),
                                                  row, axis=2)
              for c, n in zip(states, new))
        for layer, states in enumerate(cache))


def window_indices(num_frames: int, window: int) -> tuple[np.ndarray, np.ndarray]:
    """For clip frames f_0..f_{F-1} (blocks 1..F): the block indices of each one's window,
    oldest first, (F, W) int32, and which are real (those before f_0 are not)."""
    j = np.arange(num_frames)[:, None]
    frames = j - window + 1 + np.arange(window)[None, :]
    return (np.clip(frames, 0, None) + 1).astype(np.int32), frames >= 0


def grid_offset_index(frame_tokens: int, grid_width: int) -> np.ndarray:
    """(hw, hw) int32: for query token p and key token q of a `grid_width`-wide grid, the row of
    their (row offset, column offset) in a table of (2 rows - 1) x (2 grid_width - 1) offsets."""
    rows = frame_tokens // grid_width
    r, c = np.divmod(np.arange(frame_tokens), grid_width)
    dr = r[:, None] - r[None, :] + rows - 1
    dc = c[:, None] - c[None, :] + grid_width - 1
    return (dr * (2 * grid_width - 1) + dc).astype(np.int32)


class FrameSequenceTransformer(nn.Module):
    """Next-frame logits for every frame of a clip in one pass (module docstring).

    `n_frames_before` is the attention window in frames (WHOLE_HISTORY = 0: all of them).
    `relative_position_bias`: the learned bias of the module docstring, on a token grid
    `grid_width` tokens wide (ignored without it). `token_order`: "parallel" (a frame's tokens
    at once) or "raster" (one after another; module docstring).
    """

    gpt: GPT2Config
    frame_tokens: int
    n_frames_before: int
    max_frames: int
    relative_position_bias: bool = False
    grid_width: int = 0
    token_order: str = "parallel"

    def setup(self) -> None:
        cfg = self.gpt
        init = embedding_init(cfg)
        self.countdown = self.param(
            "countdown", init, (self.max_frames + 1, cfg.n_embd), cfg.weight_dtype)
        self.frame_index = self.param(
            "frame_index", init, (self.max_frames, cfg.n_embd), cfg.weight_dtype)
        self.lm = GPT2LM(cfg, name=LM_PARAMS)
        if self.relative_position_bias:
            rows = self.frame_tokens // self.grid_width
            offsets = (2 * rows - 1) * (2 * self.grid_width - 1)
            self.bias_table = self.param("relative_bias", nn.initializers.zeros,
                                         (cfg.n_head, 1 + self._distances, offsets), jnp.float32)

    @property
    def raster(self) -> bool:
        return self.token_order == "raster"

    @property
    def _window_blocks(self) -> int:
        """Clip blocks a block sees (itself included): the window, plus the block being
        predicted in raster order (WHOLE_HISTORY stays)."""
        window = self.n_frames_before
        return window + 1 if self.raster and window != WHOLE_HISTORY else window

    @property
    def _distances(self) -> int:
        """Frame distances with a bucket of their own (query frame minus key frame, 0..D-1)."""
        window = self._window_blocks
        return self.max_frames if window == WHOLE_HISTORY else window

    def _bucket(self, distance: jax.Array, key_is_last: jax.Array) -> jax.Array:
        """Bias bucket of a key block: 0 for the last frame, else 1 + its (clipped) distance."""
        return jnp.where(key_is_last, 0, 1 + jnp.clip(distance, 0, self._distances - 1))

    def _position_bias(self, buckets: jax.Array) -> jax.Array | None:
        """(H, Q * hw, K * hw) float32 bias for query blocks against key blocks with bias buckets
        `buckets` (Q, K); None without a relative position bias."""
        if not self.relative_position_bias:
            return None
        hw = self.frame_tokens
        offsets = jnp.asarray(grid_offset_index(hw, self.grid_width))
        bias = self.bias_table[:, buckets][..., offsets]  # (H, Q, K, hw, hw)
        heads, q_blocks, k_blocks = bias.shape[:3]
        return jnp.transpose(bias, (0, 1, 3, 2, 4)).reshape(heads, q_blocks * hw, k_blocks * hw)

    @property
    def cache_slots(self) -> int:
        """Frame slots of the sampling cache: the last frame plus the window (or the clip)."""
        window = self._window_blocks
        return 1 + (self.max_frames - 2 + self.raster if window == WHOLE_HISTORY else window)

    def __call__(self, last_tokens: jax.Array, frames: jax.Array, remaining: jax.Array,
                 frame_ids: jax.Array | None = None, train: bool = False) -> jax.Array:
        """Logits (B, P, frame_tokens, vocab) of P predicted frames.

        last_tokens (B, hw). Parallel order: frames (B, F, hw) are clip frames f_0..f_{F-1} in
        order, or, with `frame_ids` ((F,) ints >= 0, increasing), the frames with those indices
        (the others are absent, as in a hand-built context), and block j's logits are those of
        the frame after frames[j] (P = F). Raster order: frames f_0..f_F, and the logits are
        those of f_1..f_F (P = F), each token's from the frames before it and the tokens before
        it in its frame. remaining (B, P): the countdown of each predicted frame, clipped to
        [0, max_frames].
        """
        batch, num_frames, hw = frames.shape
        self._check(last_tokens, frames, remaining, frame_ids)
        tokens = jnp.concatenate([last_tokens[:, None], frames], axis=1).reshape(batch, -1)
        contiguous = frame_ids is None
        ids = jnp.arange(num_frames) if contiguous else jnp.asarray(frame_ids)
        block_ids = jnp.concatenate([jnp.zeros((1,), ids.dtype), ids + 1])
        extra = self._embeddings(block_ids, self._block_countdowns(remaining))
        window = self._window_blocks
        own_mask = jnp.tril(jnp.ones((hw, hw), bool)) if self.raster else None
        if contiguous and window != WHOLE_HISTORY and num_frames > window:
            index, valid = window_indices(num_frames, window)
            # Keys: the last frame (bucket 0), then the window, oldest first (distance W-1..0).
            window_buckets = np.concatenate([[0], 1 + np.arange(window - 1, -1, -1)])
            last_bias = self._position_bias(jnp.zeros((1, 1), jnp.int32))
            frame_bias = self._position_bias(jnp.asarray(window_buckets)[None])
            attend, inputs = windowed_attend, (jnp.asarray(index), jnp.asarray(valid), own_mask,
                                               last_bias, frame_bias)
        else:
            bias = self._position_bias(self._bucket(block_ids[:, None] - block_ids[None, :],
                                                    (block_ids == 0)[None, :]))
            attend, inputs = dense_attend, (block_mask(block_ids, hw, window, self.raster), bias)
        # Raster order: token i's logits are those of token i + 1 of the flattened clip.
        rows = slice(2 * hw - 1, -1) if self.raster else slice(hw, None)
        logits = self.lm(tokens, extra, train=train, attend=attend, attend_inputs=inputs,
                         positions=jnp.tile(jnp.arange(hw), num_frames + 1), output_rows=rows)
        predicted = num_frames - 1 if self.raster else num_frames
        return logits.reshape(batch, predicted, hw, -1)

    def _block_countdowns(self, remaining: jax.Array) -> jax.Array:
        """(B, clip blocks): the countdown each clip block carries. Parallel: that of the frame
        it predicts; raster: its own frame's (f_0's is one more than f_1's)."""
        if not self.raster:
            return remaining
        return jnp.concatenate([remaining[:, :1] + 1, remaining], axis=1)

    def init_cache(self, batch: int) -> Cache:
        """An empty cache: per layer, keys and values (B, heads, cache_slots * hw, head_dim)."""
        cfg = self.gpt
        shape = (batch, cfg.n_head, self.cache_slots * self.frame_tokens, cfg.head_dim)
        zeros = jnp.zeros(shape, cfg.compute_dtype)
        return LayerStates((zeros, zeros) for _ in range(cfg.n_layer))

    def prefill(self, cache: Cache, last_tokens: jax.Array) -> Cache:
        """The cache with the last frame's keys/values in slot 0."""
        hw = self.frame_tokens
        cache_mask = jnp.zeros((hw, self.cache_slots * hw), bool)  # the cache is empty
        extra = self.frame_index[0][None, None]
        bias = self._position_bias(jnp.zeros((1, 1), jnp.int32))  # the last frame on itself
        if bias is not None:
            bias = jnp.concatenate([jnp.zeros((bias.shape[0], hw, self.cache_slots * hw),
                                              bias.dtype), bias], axis=-1)
        _, new = self.lm(last_tokens, extra, past_kv=cache, return_kv=True,
                         attend=cached_attend,
                         attend_inputs=(cache_mask, jnp.ones((hw, hw), bool), bias),
                         positions=jnp.arange(hw))
        return write_cache(cache, new, jnp.int32(0))

    def step(self, cache: Cache, frame: jax.Array, index: jax.Array,
             remaining: jax.Array) -> tuple[jax.Array, Cache]:
        """Parallel order: feeds clip frame f_index (B, hw) -> (logits (B, hw, vocab) of
        f_{index+1}, cache); `remaining` (B,): f_{index+1}'s countdown.

        Frames must be fed in order 0, 1, ... after `prefill`; with a window the cache is a
        ring, so f_index overwrites the frame that just left the window.
        """
        return self._feed(cache, frame, index, jnp.int32(0), remaining)

    def step_tokens(self, cache: Cache, tokens: jax.Array, index: jax.Array, start: jax.Array,
                    countdown: jax.Array) -> tuple[jax.Array, Cache]:
        """Raster order: feeds tokens (B, L) of clip frame f_index at positions start..start+L-1
        -> (logits (B, L, vocab) of the token after each, cache); `countdown` (B,): f_index's.

        Tokens must be fed in order (f_0 may come as one block) after `prefill`.
        """
        return self._feed(cache, tokens, index, start, countdown)

    def _feed(self, cache: Cache, tokens: jax.Array, index: jax.Array, start: jax.Array,
              countdown: jax.Array) -> tuple[jax.Array, Cache]:
        """`feed_unwritten`, then the new keys/values written (step, step_tokens)."""
        logits, new, row = self.feed_unwritten(cache, tokens, index, start, countdown)
        return logits, write_cache(cache, new, row)

    def feed_unwritten(self, cache: Cache, tokens: jax.Array, index: jax.Array,
                       start: jax.Array, countdown: jax.Array
                       ) -> tuple[jax.Array, Cache, jax.Array]:
        """Tokens (B, L) of f_index from position `start` against the cache (step,
        step_tokens), leaving the cache as it is: (logits, the tokens' keys/values, the row
        where `write_cache` must put them before the cache is read again)."""
        hw, length = self.frame_tokens, tokens.shape[1]
        window = self._window_blocks
        slots = jnp.arange(self.cache_slots)
        slot = self.cache_slot(index)
        if window == WHOLE_HISTORY:
            visible = slots <= slot
            distance = index - (slots - 1)
        else:
            visible = (slots == 0) | ((slots >= 1) & (slots - 1 <= index))
            distance = (index - (slots - 1)) % window  # slot s holds the latest f = s-1 mod W
        key_slots = jnp.arange(self.cache_slots * hw) // hw
        key_positions = jnp.arange(self.cache_slots * hw) % hw
        # Cached rows: the visible slots, except the rows of its own slot these tokens (and, in
        # raster order, the tokens after them) are about to overwrite.
        cache_mask = visible[key_slots] & ((key_slots != slot) | (key_positions < start))
        cache_mask = jnp.broadcast_to(cache_mask, (length, key_slots.shape[0]))
        new_mask = (jnp.tril(jnp.ones((length, length), bool)) if self.raster
                    else jnp.ones((length, length), bool))
        row = slot * hw + start
        extra = self._embeddings(jnp.reshape(index + 1, (1,)), countdown[:, None])[:, :1]
        bias = self._position_bias(self._bucket(distance, slots == 0)[None])
        if bias is not None:
            bias = jax.lax.dynamic_slice_in_dim(bias, start, length, axis=1)
            bias = jnp.concatenate([bias, jax.lax.dynamic_slice_in_dim(bias, row, length,
                                                                       axis=2)], axis=-1)
        logits, new = self.lm(tokens, extra, past_kv=cache, return_kv=True,
                              attend=cached_attend, attend_inputs=(cache_mask, new_mask, bias),
                              positions=start + jnp.arange(length))
        return logits, new, row

    def cache_slot(self, index: jax.Array) -> jax.Array:
        """The cache slot of clip frame f_index (slot 0 holds the last frame; with a window
        the slots are a ring)."""
        window = self._window_blocks
        return 1 + (index if window == WHOLE_HISTORY else index % window)

    def _embeddings(self, block_ids: jax.Array, remaining: jax.Array) -> jax.Array:
        """(B, blocks * hw, n_embd): frame index of every block, plus the countdown of every
        block but the last frame's (block id 0)."""
        hw = self.frame_tokens
        batch = remaining.shape[0]
        index = jnp.take(self.frame_index, block_ids, axis=0, mode="clip")  # (blocks, d)
        countdown = jnp.take(self.countdown, remaining.astype(jnp.int32), axis=0, mode="clip")
        clip_blocks = block_ids.shape[0] - remaining.shape[1]  # 1 when the last frame leads
        countdown = jnp.concatenate(
            [jnp.zeros((batch, clip_blocks, countdown.shape[-1]), countdown.dtype), countdown],
            axis=1)
        extra = index[None] + countdown  # (B, blocks, d)
        return jnp.repeat(extra, hw, axis=1)

    def _check(self, last_tokens: jax.Array, frames: jax.Array, remaining: jax.Array,
               frame_ids: jax.Array | None) -> None:
        batch, num_frames, hw = frames.shape
        if hw != self.frame_tokens or last_tokens.shape != (batch, hw):
            raise UserError(f"frames {frames.shape} and last frame {last_tokens.shape} do not "
                            f"match (B, F, frame_tokens) and (B, frame_tokens) with "
                            f"frame_tokens = {self.frame_tokens}.")
        predicted = num_frames - self.raster
        if remaining.shape != (batch, predicted):
            raise UserError(f"remaining of shape {remaining.shape} must be (batch, predicted "
                            f"frames) = ({batch}, {predicted}).")
        if predicted > self.max_frames - 2 or predicted < 1:
            raise UserError(f"{predicted} predicted frames: between 1 and max_frames - 2 = "
                            f"{self.max_frames - 2}; raise config.model.max_frames.")
        if self.raster and frame_ids is not None:
            raise UserError("frame_ids (a hand-built context) needs token_order='parallel'.")


def frame_sequence_from_config(model: Mapping[str, Any]) -> FrameSequenceTransformer:
    """Builds the module from a config section: a `gpt` mapping plus the layout's fields."""
    fields = dict(model)
    gpt = GPT2Config.from_dict(dict(fields.pop("gpt")))
    if gpt.attn_pdrop > 0:
        raise UserError("the sequence layout has no attention dropout: set "
                        "config.model.gpt.attn_pdrop=0.0.")
    if gpt.n_positions < fields["frame_tokens"]:
        raise UserError(f"config.model.gpt.n_positions={gpt.n_positions} is below "
                        f"frame_tokens={fields['frame_tokens']} (positions inside a frame).")
    if fields.get("relative_position_bias"):
        width = fields.get("grid_width", 0)
        if width <= 0 or fields["frame_tokens"] % width:
            raise UserError(f"config.model.grid_width={width} must be a positive divisor of "
                            f"frame_tokens={fields['frame_tokens']}: the tokenizer's grid width "
                            "(frame width / its downsampling factor).")
    if fields["n_frames_before"] < 0:
        raise UserError(f"config.model.n_frames_before={fields['n_frames_before']}: use a window "
                        f"of at least 1 frame, or {WHOLE_HISTORY} for the whole history.")
    if fields.get("token_order", "parallel") not in TOKEN_ORDERS:
        raise UserError(f"config.model.token_order={fields['token_order']!r} is unknown; use "
                        f"one of {list(TOKEN_ORDERS)}.")
    known = set(FrameSequenceTransformer.__dataclass_fields__) - {"gpt", "parent", "name"}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise UserError(f"config.model keys {unknown} do not apply to the sequence layout; "
                        f"it takes {sorted(known)}.")
    return FrameSequenceTransformer(gpt=gpt, **fields)


def rollout(model: FrameSequenceTransformer, params: Any, first_tokens: jax.Array,
            last_tokens: jax.Array, remaining: jax.Array,
            choose: Callable[[jax.Array, jax.Array], jax.Array]) -> jax.Array:
    """Frames 1..S (B, S, hw) generated from f_0 and the last frame in one `lax.scan`.

    remaining (B, S): the countdown of each generated frame. Parallel order: step s feeds
    frame s (f_0, then its own output) against the cache and turns the logits (B, hw, vocab)
    into frame s+1 with `choose(logits, s)` (argmax, or a sampler keyed on s). Raster order:
    f_0 is fed as one block, then every step draws one token, token p of frame s+1, with
    `choose(logits (B, 1, vocab), s * hw + p)` and feeds it.
    """
    variables = {"params": params}
    batch = first_tokens.shape[0]
    cache = model.apply(variables, batch, method=FrameSequenceTransformer.init_cache)
    cache = model.apply(variables, cache, last_tokens, method=FrameSequenceTransformer.prefill)
    first_tokens = first_tokens.astype(jnp.int32)
    if model.raster:
        return _raster_rollout(model, variables, cache, first_tokens, remaining, choose)

    hw = model.frame_tokens

    def frame_step(carry, xs):
        cache, frame, pending, pending_row = carry
        index, remaining_s = xs
        cache = write_cache(cache, pending, pending_row)  # before the read: see _raster_rollout
        logits, new, row = model.apply(variables, cache, frame, index, jnp.int32(0),
                                       remaining_s, method=FrameSequenceTransformer.feed_unwritten)
        following = choose(logits, index).astype(jnp.int32)
        return (cache, following, new, row), following

    steps = jnp.arange(remaining.shape[1], dtype=jnp.int32)
    # Step 0 writes zeros into f_0's rows, which it does not read (its own slot); step 1 writes
    # f_0's keys/values there.
    carry = (cache, first_tokens, _no_pending(cache, hw), model.cache_slot(jnp.int32(0)) * hw)
    _, frames = jax.lax.scan(frame_step, carry, (steps, jnp.swapaxes(remaining, 0, 1)))
    return jnp.swapaxes(frames, 0, 1)


def _no_pending(cache: Cache, length: int) -> Cache:
    """Zero keys/values of `length` tokens in the layout `feed_unwritten` returns them."""
    batch, heads, _, dim = cache[0][0].shape
    return tuple(jnp.zeros((len(cache), batch, length, heads, dim), c.dtype) for c in cache[0])


def _raster_rollout(model: FrameSequenceTransformer, variables: Any, cache: Cache,
                    first_tokens: jax.Array, remaining: jax.Array,
                    choose: Callable[[jax.Array, jax.Array], jax.Array]) -> jax.Array:
    """`rollout` in raster order: one token per `lax.scan` step."""
    batch, frames = remaining.shape
    hw = model.frame_tokens
    logits, cache = model.apply(variables, cache, first_tokens, jnp.int32(0), jnp.int32(0),
                                remaining[:, 0] + 1, method=FrameSequenceTransformer.step_tokens)

    # Each step writes the previous token's keys/values into the cache before reading it: a
    # write after the read makes XLA copy the whole cache (twice) every step to keep the read's
    # operand intact, which cost more than the step's arithmetic (README, "Raster sampling").
    # Step 0 writes zeros into the row its own token takes next (masked until then).
    def token_step(carry, xs):
        cache, logits, pending, pending_row = carry
        i, countdown = xs
        cache = write_cache(cache, pending, pending_row)
        frame, position = jnp.divmod(i, hw)
        token = choose(logits[:, None], i).astype(jnp.int32)  # (B, 1)
        logits, new, row = model.apply(variables, cache, token, frame + 1, position, countdown,
                                       method=FrameSequenceTransformer.feed_unwritten)
        return (cache, logits[:, 0], new, row), token[:, 0]

    steps = jnp.arange(frames * hw, dtype=jnp.int32)
    countdowns = jnp.repeat(jnp.swapaxes(remaining, 0, 1), hw, axis=0)  # (S * hw, B)
    f1_row = model.cache_slot(jnp.int32(1)) * hw
    _, tokens = jax.lax.scan(token_step, (cache, logits[:, -1], _no_pending(cache, 1), f1_row),
                             (steps, countdowns))
    return jnp.transpose(tokens.reshape(frames, hw, batch), (2, 0, 1))
