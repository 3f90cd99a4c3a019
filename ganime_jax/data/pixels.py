"""The two pixel ranges of the project: uint8 [0, 255] as stored and shown, float32 [-1, 1] as
the networks (VQ-GAN, LPIPS) take and give them."""
import jax
import jax.numpy as jnp
import numpy as np


def to_unit(frames: jax.Array | np.ndarray) -> jax.Array:
    """uint8 [0, 255] -> float32 [-1, 1]."""
    return jnp.asarray(frames).astype(jnp.float32) / 127.5 - 1.0


def to_uint8(frames: jax.Array | np.ndarray) -> jax.Array:
    """float [-1, 1] -> uint8 [0, 255], rounded to the nearest level and clipped."""
    return jnp.clip(jnp.round((jnp.asarray(frames, jnp.float32) + 1.0) * 127.5), 0,
                    255).astype(jnp.uint8)
