"""GANime's video transformer: a GPT-2 trunk that predicts a whole next frame per forward pass.

The sequence is [last frame] + [k most recent frames, oldest first], each frame a grid of
`frame_tokens` VQ-GAN codes. A learned countdown embedding (frames left until the last frame)
is added to every position, plus optional embeddings of the position inside the frame grid and
of the frame slot. The logits at the positions of the most recent frame are read as the logits
of the next frame's tokens, position for position.
"""
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ganime_jax.errors import UserError
from ganime_jax.models.gpt import GPT2Config, GPT2LM, embedding_init

LM_PARAMS = "lm"  # name of the GPT-2 trunk's parameter subtree (where HF weights go)

KVCache = tuple[jax.Array, jax.Array]


class GANimeTransformer(nn.Module):
    """Next-frame logits from the last frame, k context frames and a frame countdown.

    `countdown_on_last_frame=False` adds the countdown to the context positions only, which
    makes the last frame's keys/values independent of the step, so a sampler can compute
    them once with `prefix_cache` and reuse them for the whole clip.
    """

    gpt: GPT2Config
    frame_tokens: int
    n_frames_before: int
    max_frames: int
    frame_position_embedding: bool = True
    frame_slot_embedding: bool = True
    countdown_on_last_frame: bool = True

    def setup(self) -> None:
        cfg = self.gpt
        init = embedding_init(cfg)
        self.countdown = self.param(
            "countdown", init, (self.max_frames + 1, cfg.n_embd), cfg.weight_dtype)
        if self.frame_position_embedding:
            self.frame_position = self.param(
                "frame_position", init, (self.frame_tokens, cfg.n_embd), cfg.weight_dtype)
        if self.frame_slot_embedding:
            self.frame_slot = self.param(
                "frame_slot", init, (1 + self.n_frames_before, cfg.n_embd), cfg.weight_dtype)
        self.lm = GPT2LM(cfg, name=LM_PARAMS)

    def __call__(
        self, last_tokens: jax.Array | None, context_tokens: jax.Array, remaining: jax.Array,
        train: bool = False, prefix_kv: KVCache | None = None,
    ) -> jax.Array:
        """Logits (B, frame_tokens, vocab) of the frame after the most recent context frame.

        last_tokens: (B, frame_tokens), ignored (may be None) when `prefix_kv` from
        `prefix_cache` is given; context_tokens: (B, n_frames_before, frame_tokens), oldest
        first (callers pad a short history, e.g. by repeating the first frame);
        remaining: (B,) int, frames left until the last frame, clipped to [0, max_frames].
        """
        batch = context_tokens.shape[0]
        expected = (self.n_frames_before, self.frame_tokens)
        if context_tokens.shape[1:] != expected:
            raise UserError(
                f"context tokens of shape {context_tokens.shape} do not match (batch, "
                f"n_frames_before, frame_tokens) = (B, {expected[0]}, {expected[1]}).")
        if remaining.shape != (batch,):
            raise UserError(f"remaining of shape {remaining.shape} must be (batch,) = ({batch},).")
        context = context_tokens.reshape(batch, -1)
        if prefix_kv is None:
            self._check_last(last_tokens)
            tokens = jnp.concatenate([last_tokens, context], axis=1)
            first_slot = 0
        else:
            tokens, first_slot = context, 1
        extra = self._extra_embeddings(remaining, first_slot, tokens.shape[1] // self.frame_tokens)
        logits = self.lm(tokens, extra, train=train, past_kv=prefix_kv)
        return logits[:, -self.frame_tokens:]

    def prefix_cache(self, last_tokens: jax.Array, remaining: jax.Array) -> KVCache:
        """Per-layer keys/values of the last frame, each (n_layer, B, frame_tokens, heads, dim).

        Pass them as `prefix_kv` to `__call__`. With `countdown_on_last_frame` they depend on
        `remaining` and must be recomputed whenever it changes.
        """
        self._check_last(last_tokens)
        extra = self._extra_embeddings(remaining, 0, 1)
        _, kv = self.lm(last_tokens, extra, train=False, return_kv=True)
        return kv

    def _check_last(self, last_tokens: jax.Array | None) -> None:
        if last_tokens is None or last_tokens.ndim != 2 or last_tokens.shape[1] != self.frame_tokens:
            shape = None if last_tokens is None else last_tokens.shape
            raise UserError(
                f"last-frame tokens of shape {shape} do not match (B, frame_tokens) = "
                f"(B, {self.frame_tokens}).")

    def _extra_embeddings(self, remaining: jax.Array, first_slot: int, n_slots: int) -> jax.Array:
        """(B, n_slots * frame_tokens, n_embd) conditioning for frame slots first_slot...."""
        length = n_slots * self.frame_tokens
        position = jnp.arange(length)
        slot = first_slot + position // self.frame_tokens
        extra = jnp.zeros((1, length, self.gpt.n_embd), self.gpt.weight_dtype)
        if self.frame_position_embedding:
            extra = extra + self.frame_position[position % self.frame_tokens][None]
        if self.frame_slot_embedding:
            extra = extra + self.frame_slot[slot][None]
        countdown = jnp.take(self.countdown, remaining.astype(jnp.int32), axis=0, mode="clip")
        countdown = countdown[:, None, :]
        if not self.countdown_on_last_frame:
            countdown = countdown * (slot > 0)[None, :, None].astype(countdown.dtype)
        return extra + countdown


def ganime_transformer_from_config(model: Mapping[str, Any]) -> GANimeTransformer:
    """Builds the module from a config section: a `gpt` mapping plus the GANime fields."""
    fields = dict(model)
    if "gpt" not in fields:
        raise UserError("the transformer's model config needs a `gpt` section (see gpt_preset).")
    gpt = GPT2Config.from_dict(dict(fields.pop("gpt")))
    known = set(GANimeTransformer.__dataclass_fields__) - {"gpt", "parent", "name"}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise UserError(f"unknown transformer config keys {unknown}; valid keys are {sorted(known)}.")
    return GANimeTransformer(gpt=gpt, **fields)
