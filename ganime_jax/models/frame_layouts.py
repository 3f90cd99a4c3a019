"""The two stage-2 layouts behind one constructor (`config.model.layout`).

- `window` (GANime's): one sequence per target frame, [last frame] + [k previous frames]
  (`GANimeTransformer`); the reference, and the layout the Hugging Face import was built for.
- `sequence`: the whole clip in one block-causal pass, frame-level KV cache for sampling
  (`FrameSequenceTransformer`); several times more target tokens per second of training.
"""
from collections.abc import Mapping, Sequence
from typing import Any

import jax.numpy as jnp

from ganime_jax.errors import UserError
from ganime_jax.models.frame_sequence import FrameSequenceTransformer, frame_sequence_from_config
from ganime_jax.models.ganime_transformer import GANimeTransformer, ganime_transformer_from_config

LAYOUTS = ("window", "sequence")
# Fields of config.model that only the window layout has.
WINDOW_ONLY_FIELDS = ("frame_position_embedding", "frame_slot_embedding",
                      "countdown_on_last_frame")
# Fields of config.model that only the sequence layout has.
SEQUENCE_ONLY_FIELDS = ("relative_position_bias", "grid_width", "token_order")

Transformer = GANimeTransformer | FrameSequenceTransformer


def transformer_from_config(model: Mapping[str, Any]) -> Transformer:
    """The transformer of a config.model section (`layout` picks the class; default window)."""
    fields = dict(model)
    layout = fields.pop("layout", "window")
    if layout == "window":
        if fields.get("relative_position_bias"):
            raise UserError("config.model.relative_position_bias needs the sequence layout: set "
                            "config.model.layout='sequence' or turn the bias off.")
        if fields.get("token_order", "parallel") != "parallel":
            raise UserError(f"config.model.token_order={fields['token_order']!r} needs the "
                            "sequence layout: set config.model.layout='sequence' or "
                            "token_order='parallel'.")
        return ganime_transformer_from_config(
            {k: v for k, v in fields.items() if k not in SEQUENCE_ONLY_FIELDS})
    if layout == "sequence":
        return frame_sequence_from_config(
            {k: v for k, v in fields.items() if k not in WINDOW_ONLY_FIELDS})
    raise UserError(f"config.model.layout={layout!r} is unknown; use one of {list(LAYOUTS)}.")


def check_token_grid(model: Transformer, grid_shape: Sequence[int], source: str) -> None:
    """One-line error where a relative position bias assumes another grid width than the
    tokenizer's (`grid_shape` = (rows, columns) of its token grid, `source` names it)."""
    rows, columns = grid_shape
    if getattr(model, "relative_position_bias", False) and model.grid_width != columns:
        raise UserError(f"config.model.grid_width={model.grid_width} but {source} makes token "
                        f"grids of {rows}x{columns}; set config.model.grid_width={columns}.")


def example_inputs(model: Transformer) -> tuple[jnp.ndarray, ...]:
    """Inputs of batch 1 that `model.init` takes (all zeros)."""
    hw = model.frame_tokens
    last = jnp.zeros((1, hw), jnp.int32)
    if isinstance(model, FrameSequenceTransformer):
        return last, jnp.zeros((1, 1 + model.raster, hw), jnp.int32), jnp.zeros((1, 1), jnp.int32)
    return (last, jnp.zeros((1, model.n_frames_before, hw), jnp.int32),
            jnp.zeros((1,), jnp.int32))
