"""Vector quantiser with a straight-through estimator, codebook statistics and dead-code restart.

Loss (returned as `quantizer_loss`, with its two parts):
    codebook_loss   = mean((sg[z] - e)^2)      moves the codes towards the encoder outputs
    commitment_loss = mean((z - sg[e])^2)      keeps the encoder close to its codes
    legacy_loss=False: codebook_loss + beta * commitment_loss   (VQ-VAE paper; TorchGANime)
    legacy_loss=True:  commitment_loss + beta * codebook_loss   (taming's default `legacy=True`,
                       which puts beta on the wrong term; kept to reproduce taming runs)

Two switches against dead codes (codes the encoder never picks):
- `l2_normalize`: match unit vectors (cosine similarity); codes and inputs are normalised.
- `lookup_dim` > 0: ViT-VQGAN's factorised codes; project inputs to `lookup_dim` (`in_proj`),
  match there, project the chosen code back to `embedding_dim` (`out_proj`).
and `restart_dead_codes`, which the trainer calls with an EMA of code usage.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ganime_jax.models.layers import TORCH_KERNEL_INIT, check_kind

CODEBOOK_PARAM = "embedding"  # params["quantize"]["embedding"], taming's quantize.embedding.weight
L2_EPS = 1e-12
ERROR_FLOOR = 1e-12  # keeps log(error) finite for outputs that sit on a code


def _taming_codebook_init(num_embeddings: int):
    """U(-1/n, 1/n), as taming initialises `quantize.embedding`."""
    def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
        bound = 1.0 / num_embeddings
        return jax.random.uniform(key, shape, dtype, -bound, bound)
    return init


def l2_normalize(x: jax.Array, axis: int = -1) -> jax.Array:
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(jnp.square(x), axis, keepdims=True), L2_EPS))


def squared_distances(inputs: jax.Array, codebook: jax.Array) -> jax.Array:
    """(M, N) squared Euclidean distances between rows of `inputs` and codes; float32 maths."""
    inputs = inputs.astype(jnp.float32)
    codebook = codebook.astype(jnp.float32)
    cross = jnp.dot(inputs, codebook.T, precision=jax.lax.Precision.HIGHEST)
    return (jnp.sum(jnp.square(inputs), axis=1, keepdims=True) - 2.0 * cross
            + jnp.sum(jnp.square(codebook), axis=1)[None, :])


def nearest_codes(inputs: jax.Array, codebook: jax.Array) -> jax.Array:
    """Index of the closest code (squared Euclidean) for each row of `inputs`."""
    return jnp.argmin(squared_distances(inputs, codebook), axis=1).astype(jnp.int32)


class VectorQuantizer(nn.Module):
    num_embeddings: int
    embedding_dim: int
    beta: float = 0.25
    legacy_loss: bool = False
    l2_normalize: bool = False
    lookup_dim: int = 0

    def setup(self):
        code_dim = self.lookup_dim or self.embedding_dim
        self.embedding = self.param(CODEBOOK_PARAM, _taming_codebook_init(self.num_embeddings),
                                    (self.num_embeddings, code_dim), jnp.float32)
        if self.lookup_dim:
            self.in_proj = nn.Dense(self.lookup_dim, kernel_init=TORCH_KERNEL_INIT)
            self.out_proj = nn.Dense(self.embedding_dim, kernel_init=TORCH_KERNEL_INIT)

    def _codebook(self) -> jax.Array:
        return l2_normalize(self.embedding) if self.l2_normalize else self.embedding

    def _to_lookup_space(self, z: jax.Array) -> jax.Array:
        z = z.astype(jnp.float32)
        if self.lookup_dim:
            z = self.in_proj(z)
        return l2_normalize(z) if self.l2_normalize else z

    def _from_lookup_space(self, codes: jax.Array) -> jax.Array:
        return self.out_proj(codes) if self.lookup_dim else codes

    def __call__(self, z: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        """z (..., embedding_dim) -> (quantised z, float32, straight-through; aux dict).

        aux: indices (...) int32, quantizer_loss, codebook_loss, commitment_loss (scalars),
        encoder_latents (..., code dim): the float32 vectors matched against the codebook (the
        inputs `restart_dead_codes` draws new codes from).
        """
        latents = self._to_lookup_space(z)
        codebook = self._codebook()
        flat = latents.reshape(-1, latents.shape[-1])
        indices = nearest_codes(flat, codebook)
        quantized = jnp.take(codebook, indices, axis=0).reshape(latents.shape)
        codebook_loss = jnp.mean(jnp.square(jax.lax.stop_gradient(latents) - quantized))
        commitment_loss = jnp.mean(jnp.square(latents - jax.lax.stop_gradient(quantized)))
        if self.legacy_loss:
            loss = commitment_loss + self.beta * codebook_loss
        else:
            loss = codebook_loss + self.beta * commitment_loss
        straight_through = latents + jax.lax.stop_gradient(quantized - latents)
        aux = {"indices": indices.reshape(latents.shape[:-1]), "quantizer_loss": loss,
               "codebook_loss": codebook_loss, "commitment_loss": commitment_loss,
               "encoder_latents": latents}
        return self._from_lookup_space(straight_through), aux

    def lookup(self, indices: jax.Array) -> jax.Array:
        """Integer indices (...) -> quantised latents (..., embedding_dim), float32."""
        return self._from_lookup_space(jnp.take(self._codebook(), indices, axis=0))


def code_histogram(indices: jax.Array, num_embeddings: int) -> jax.Array:
    """Counts of each code in `indices` (any shape), float32 (num_embeddings,)."""
    return jnp.bincount(indices.reshape(-1), length=num_embeddings).astype(jnp.float32)


def codebook_stats(indices: jax.Array, num_embeddings: int) -> dict[str, jax.Array]:
    """usage_fraction: share of codes used at least once; perplexity: exp(entropy of usage)."""
    counts = code_histogram(indices, num_embeddings)
    probs = counts / jnp.maximum(jnp.sum(counts), 1.0)
    entropy = -jnp.sum(jnp.where(probs > 0, probs * jnp.log(jnp.where(probs > 0, probs, 1.0)),
                                 0.0))
    return {"usage_fraction": jnp.mean((counts > 0).astype(jnp.float32)),
            "perplexity": jnp.exp(entropy)}


RESTART_SAMPLING = ("uniform", "error")


def restart_dead_codes(codebook: jax.Array, usage_counts: jax.Array,
                       encoder_outputs: jax.Array, rng: jax.Array,
                       min_usage: float, sampling: str = "uniform",
                       l2_normalized: bool = False) -> jax.Array:
    """Replaces the codes whose usage is below `min_usage` by encoder outputs of the batch.

    codebook (N, D); usage_counts (N,) (e.g. an EMA of `code_histogram`, kept in the train
    state); encoder_outputs (..., D), in the codebook's space (aux["encoder_latents"]). Each
    dead code gets an independently drawn encoder output; live codes are returned unchanged.
    sampling "uniform": every output is equally likely; "error": likelihood proportional to
    the output's squared distance to its nearest live code (k-means++'s D^2 seeding). Uniform
    draws follow the data's density (on Moving MNIST 78 % of the patches are black); "error"
    puts new codes where the outputs are quantised worst.
    l2_normalized: the quantiser matches unit vectors, so distances are to the normalised codes.
    """
    check_kind("codebook.restart_sampling", sampling, RESTART_SAMPLING)
    candidates = encoder_outputs.reshape(-1, codebook.shape[-1]).astype(codebook.dtype)
    dead = usage_counts < min_usage
    if sampling == "uniform":
        picks = jax.random.randint(rng, (codebook.shape[0],), 0, candidates.shape[0])
    else:  # "error"
        codes = l2_normalize(codebook) if l2_normalized else codebook
        to_live = jnp.where(dead[None, :], jnp.inf, squared_distances(candidates, codes))
        error = jnp.min(to_live, axis=1)
        # No live code: all errors equal, so the draw is uniform.
        error = jnp.where(jnp.isfinite(error), jnp.maximum(error, 0.0), 1.0)
        picks = jax.random.categorical(rng, jnp.log(error + ERROR_FLOOR),
                                       shape=(codebook.shape[0],))
    return jnp.where(dead[:, None], candidates[picks], codebook)


def get_codebook(params: Any) -> jax.Array:
    """The codebook inside VQGAN params."""
    return params["quantize"][CODEBOOK_PARAM]


def set_codebook(params: Any, codebook: jax.Array) -> Any:
    """VQGAN params with the codebook replaced (a new dict; `params` is not modified)."""
    return {**params, "quantize": {**params["quantize"], CODEBOOK_PARAM: codebook}}
