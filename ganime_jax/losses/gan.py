"""Adversarial losses of the VQ-GAN stage (taming-transformers conventions).

All losses reduce to float32 scalars whatever the logits' dtype; everything is jit-able.
"""
from typing import Any, Callable

import jax
import jax.numpy as jnp

from ganime_jax.errors import UserError

DLossFn = Callable[[jax.Array, jax.Array], jax.Array]


def hinge_d_loss(logits_real: jax.Array, logits_fake: jax.Array) -> jax.Array:
    """Discriminator hinge loss: 0.5 * (E[relu(1 - D(x))] + E[relu(1 + D(G(z)))])."""
    loss_real = jnp.mean(jax.nn.relu(1.0 - logits_real.astype(jnp.float32)))
    loss_fake = jnp.mean(jax.nn.relu(1.0 + logits_fake.astype(jnp.float32)))
    return 0.5 * (loss_real + loss_fake)


def vanilla_d_loss(logits_real: jax.Array, logits_fake: jax.Array) -> jax.Array:
    """Logistic (non-saturating) discriminator loss.

    0.5 * (E[softplus(-D(x))] + E[softplus(D(G(z)))]).
    """
    loss_real = jnp.mean(jax.nn.softplus(-logits_real.astype(jnp.float32)))
    loss_fake = jnp.mean(jax.nn.softplus(logits_fake.astype(jnp.float32)))
    return 0.5 * (loss_real + loss_fake)


_D_LOSSES: dict[str, DLossFn] = {"hinge": hinge_d_loss, "vanilla": vanilla_d_loss}


def d_loss_fn(name: str) -> DLossFn:
    """The discriminator loss called `name` ("hinge" or "vanilla")."""
    if name not in _D_LOSSES:
        raise UserError(f"unknown discriminator loss {name!r}: use one of {sorted(_D_LOSSES)}")
    return _D_LOSSES[name]


def generator_adv_loss(logits_fake: jax.Array) -> jax.Array:
    """Generator adversarial loss -E[D(G(z))] (taming uses it with both discriminator losses)."""
    return -jnp.mean(logits_fake.astype(jnp.float32))


def _global_norm(tree: Any) -> jax.Array:
    leaves = jax.tree_util.tree_leaves(tree)
    return jnp.sqrt(sum(jnp.sum(jnp.square(leaf.astype(jnp.float32))) for leaf in leaves))


def adaptive_disc_weight(
    nll_grad: Any, g_grad: Any, max_weight: float = 1e4, eps: float = 1e-4
) -> jax.Array:
    """taming's adaptive weight ||grad nll|| / (||grad g_adv|| + eps), clipped to [0, max_weight].

    The gradients are those of the reconstruction (nll) loss and of the generator adversarial
    loss w.r.t. the decoder's last layer (an array or a pytree of arrays). The result carries no
    gradient; multiply it by the configured discriminator weight.
    """
    weight = _global_norm(nll_grad) / (_global_norm(g_grad) + eps)
    return jax.lax.stop_gradient(jnp.clip(weight, 0.0, max_weight))


def disc_factor_schedule(step: jax.Array | int, start_step: int, factor: float) -> jax.Array:
    """Discriminator factor: 0 before `start_step`, `factor` from it on (taming `adopt_weight`)."""
    return jnp.where(jnp.asarray(step) >= start_step, jnp.float32(factor), jnp.float32(0.0))
