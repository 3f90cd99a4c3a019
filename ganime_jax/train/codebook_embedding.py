"""Token embeddings that start from the tokenizer's codebook geometry.

A freshly initialised GPT knows nothing about its tokens: code 17 and code 18 are as unlike as
any two, though they may draw nearly the same patch. The tokenizer already placed its codes in
a space where the decoder reads them, so similar codes draw similar patches. Mixing a random
projection of that space into the token embedding gives the GPT that similarity at step 0, on
the input side and, through GPT-2's tied output head, on the logits: a code near the right one
scores near it.
"""
import jax
import jax.numpy as jnp
import numpy as np

from ganime_jax.errors import UserError
from ganime_jax.models.quantizer import get_codebook, l2_normalize
from ganime_jax.tokenizer import Tokenizer


def tokenizer_codes(tokenizer: Tokenizer) -> np.ndarray:
    """The codes (K, d) as the quantiser matches them: its lookup space, unit vectors when it
    normalises, so distances here are the ones that chose each token."""
    codebook = jnp.asarray(jax.device_get(get_codebook(tokenizer.params)), jnp.float32)
    if tokenizer.config.model.l2_normalize_codes:
        codebook = l2_normalize(codebook)
    return np.asarray(codebook)


def mix_codebook(embeddings: jax.Array, codes: np.ndarray, share: float,
                 rng: jax.Array) -> jax.Array:
    """`embeddings` (V, D) with rows 0..K-1 moved towards the codes (K, d): each becomes
    sqrt(1 - share) x itself + sqrt(share) x its code's centred coordinates through a random
    orthonormal map R^d -> R^D, scaled to the embeddings' standard deviation. Rows past K
    (a vocabulary larger than the codebook) are kept. share (in [0, 1]) 0 returns
    `embeddings`."""
    vocab, width = embeddings.shape
    count, dim = codes.shape
    if count > vocab or dim > width:
        raise UserError(f"a codebook of {count} codes of {dim} dims does not fit token "
                        f"embeddings of shape ({vocab}, {width}); the GPT needs vocab_size >= "
                        "the codes and n_embd >= the code dimension.")
    if share == 0.0:
        return embeddings
    centred = codes - codes.mean(axis=0)
    spread = centred.std()
    if spread == 0.0:
        raise UserError("the tokenizer's codes are all equal: there is no geometry to start "
                        "from; set config.model.codebook_embedding_share=0.")
    # Orthonormal columns keep the codes' distances; sqrt(D / d) restores unit variance per
    # embedding dimension after spreading d dimensions over D.
    basis, _ = jnp.linalg.qr(jax.random.normal(rng, (width, dim), jnp.float32))
    projected = (centred / spread) @ np.asarray(basis).T * np.sqrt(width / dim)
    scale = jnp.std(embeddings.astype(jnp.float32))
    mixed = (np.sqrt(1.0 - share) * embeddings[:count].astype(jnp.float32)
             + np.sqrt(share) * scale * projected)
    return embeddings.at[:count].set(mixed.astype(embeddings.dtype))
