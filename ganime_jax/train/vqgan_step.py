"""The VQ-GAN train state and its pure, jit-compiled step (generator + discriminator).

Losses follow taming-transformers: L1 + LPIPS reconstruction, codebook/commitment loss, and
after `disc_start` a hinge-loss PatchGAN whose generator term is scaled by the adaptive weight
||grad nll|| / ||grad g|| taken at the decoder's last layer.
"""
import functools
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from ganime_jax.data import pixels
from ganime_jax.losses import gan
from ganime_jax.losses.perceptual import lpips_distance
from ganime_jax.models import quantizer, vqgan


@flax.struct.dataclass
class VQGANState:
    step: jax.Array
    gen_params: Any
    disc_params: Any
    gen_opt_state: Any
    disc_opt_state: Any
    code_usage: jax.Array  # EMA of the fraction of tokens assigned to each code, from 0


@flax.struct.dataclass
class StepFns:
    model: nn.Module = flax.struct.field(pytree_node=False)
    disc: nn.Module = flax.struct.field(pytree_node=False)
    gen_tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)
    disc_tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)


def init_state(rng: jax.Array, fns: StepFns, frame_shape: tuple[int, int, int],
               num_embeddings: int) -> VQGANState:
    gen_rng, disc_rng = jax.random.split(rng)
    dummy = jnp.zeros((1, *frame_shape), jnp.float32)
    gen_params = fns.model.init({"params": gen_rng}, dummy)["params"]
    disc_params = fns.disc.init({"params": disc_rng}, dummy)["params"]
    return VQGANState(
        step=jnp.zeros((), jnp.int32), gen_params=gen_params, disc_params=disc_params,
        gen_opt_state=fns.gen_tx.init(gen_params), disc_opt_state=fns.disc_tx.init(disc_params),
        code_usage=jnp.zeros((num_embeddings,), jnp.float32))


def reconstruction_losses(x: jax.Array, recon: jax.Array, lpips_params: Any,
                          loss_cfg: ml_collections.ConfigDict,
                          use_perceptual: bool = True) -> dict[str, jax.Array]:
    """L1 plus the weighted LPIPS term; without `use_perceptual` (or with weight 0) no VGG16
    pass runs at all and no "lpips" entry is returned."""
    l1 = jnp.mean(jnp.abs(x - recon))
    losses = {"l1": l1, "rec_loss": loss_cfg.l1_weight * l1}
    if use_perceptual and loss_cfg.perceptual_weight:
        losses["lpips"] = jnp.mean(lpips_distance(lpips_params, x, recon,
                                                  dtype=jnp.dtype(loss_cfg.perceptual_dtype)))
        losses["rec_loss"] += loss_cfg.perceptual_weight * losses["lpips"]
    return losses


def train_step(state: VQGANState, batch: dict, rng: jax.Array, lpips_params: Any, *,
               fns: StepFns, config: ml_collections.ConfigDict, use_disc: bool,
               use_perceptual: bool = True) -> tuple[VQGANState, dict]:
    """One generator update and, once the discriminator is on, one discriminator update.

    `use_disc`/`use_perceptual` pick the compiled variant of the training phase (see
    `loss.disc_start` and `loss.perceptual_start`). `rng`: the run's base key; this step's key
    folds in `state.step`, so a resumed run draws the keys an uninterrupted one would."""
    loss_cfg, codebook_cfg = config.loss, config.codebook
    x = pixels.to_unit(batch["frames"])
    dropout_rng, restart_rng = jax.random.split(jax.random.fold_in(rng, state.step))

    def generator(gen_params):
        recon, aux = fns.model.apply({"params": gen_params}, x, train=True,
                                     rngs={"dropout": dropout_rng})
        return (recon, aux["quantizer_loss"]), aux

    # The generator runs forward once; the losses are differentiated w.r.t. its output, and one
    # backward pass through the generator takes the weighted sum of those output gradients.
    (recon, quantizer_loss), generator_vjp, aux = jax.vjp(generator, state.gen_params,
                                                          has_aux=True)
    recon_grad, metrics = generator_losses(x, recon, quantizer_loss, aux, state, lpips_params,
                                           fns, loss_cfg, use_disc, use_perceptual)
    (param_grads,) = generator_vjp((recon_grad, jnp.asarray(loss_cfg.codebook_weight,
                                                            quantizer_loss.dtype)))
    updates, gen_opt_state = fns.gen_tx.update(param_grads, state.gen_opt_state,
                                               state.gen_params)
    gen_params = optax.apply_updates(state.gen_params, updates)
    metrics["gen_grad_norm"] = optax.tree.norm(param_grads)

    disc_params, disc_opt_state = state.disc_params, state.disc_opt_state
    if use_disc:
        fake = jax.lax.stop_gradient(recon)

        def disc_loss_fn(params):
            logits_real = fns.disc.apply({"params": params}, x)
            logits_fake = fns.disc.apply({"params": params}, fake)
            d_loss = loss_cfg.disc_factor * gan.hinge_d_loss(logits_real, logits_fake)
            return d_loss, (jnp.mean(logits_real), jnp.mean(logits_fake))

        (d_loss, (real_mean, fake_mean)), d_grads = jax.value_and_grad(
            disc_loss_fn, has_aux=True)(disc_params)
        d_updates, disc_opt_state = fns.disc_tx.update(d_grads, disc_opt_state, disc_params)
        disc_params = optax.apply_updates(disc_params, d_updates)
        metrics.update(d_loss=d_loss, logits_real=real_mean, logits_fake=fake_mean)

    num_codes = state.code_usage.shape[0]
    batch_usage = quantizer.code_histogram(aux["indices"], num_codes) / aux["indices"].size
    code_usage = (codebook_cfg.usage_decay * state.code_usage
                  + (1.0 - codebook_cfg.usage_decay) * batch_usage)
    gen_params, code_usage, restarted = _maybe_restart_codes(
        gen_params, code_usage, aux, restart_rng, state.step + 1, codebook_cfg,
        config.model.l2_normalize_codes)
    metrics.update(usage_fraction=aux["usage_fraction"], perplexity=aux["perplexity"])
    metrics["codes_alive"] = jnp.mean(code_usage >= codebook_cfg.min_usage / num_codes)
    metrics["codes_restarted"] = restarted
    new_state = state.replace(step=state.step + 1, gen_params=gen_params, disc_params=disc_params,
                              gen_opt_state=gen_opt_state, disc_opt_state=disc_opt_state,
                              code_usage=code_usage)
    return new_state, metrics


def generator_losses(x, recon, quantizer_loss, aux, state: VQGANState, lpips_params,
                     fns: StepFns, loss_cfg, use_disc: bool,
                     use_perceptual: bool = True) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(gradient of the total generator loss w.r.t. `recon`, the loss terms).

    With the discriminator on, the GAN term is weighted by taming's adaptive weight
    ||d nll / d W|| / ||d g / d W|| at the decoder's output-layer kernel W. Both gradients are
    pulled back from their gradients w.r.t. `recon` through that layer alone (its input held
    fixed), which gives the same numbers as differentiating the whole generator.
    """
    def nll_fn(r):
        losses = reconstruction_losses(x, r, lpips_params, loss_cfg, use_perceptual)
        return losses["rec_loss"], losses

    (nll, metrics), recon_grad = jax.value_and_grad(nll_fn, has_aux=True)(recon)
    loss = nll + loss_cfg.codebook_weight * quantizer_loss
    metrics["quantizer_loss"] = quantizer_loss
    if use_disc:
        def g_fn(r):
            return gan.generator_adv_loss(fns.disc.apply({"params": state.disc_params}, r))

        g_loss, g_grad = jax.value_and_grad(g_fn)(recon)
        nll_kernel_grad, g_kernel_grad = _output_kernel_grads(
            state.gen_params, aux["pre_output_features"], fns, (recon_grad, g_grad))
        d_weight = loss_cfg.disc_weight * gan.adaptive_disc_weight(
            nll_kernel_grad, g_kernel_grad, max_weight=loss_cfg.adaptive_weight_max)
        g_scale = d_weight * loss_cfg.disc_factor
        loss = loss + g_scale * g_loss
        recon_grad = recon_grad + g_scale * g_grad
        metrics.update(g_loss=g_loss, d_weight=d_weight)
    metrics["loss"] = loss
    return recon_grad, metrics


def _output_kernel_grads(gen_params, features, fns: StepFns, recon_grads):
    """Gradients w.r.t. the decoder's output-layer kernel for each gradient w.r.t. `recon`."""
    features = jax.lax.stop_gradient(features)

    def output(layer_params):
        params = vqgan.with_output_layer_params(gen_params, layer_params)
        return fns.model.apply({"params": params}, features,
                               method=fns.model.decoder_output_layer)

    _, output_vjp = jax.vjp(output, vqgan.output_layer_params(gen_params))
    return tuple(output_vjp(g)[0]["kernel"] for g in recon_grads)


def _maybe_restart_codes(gen_params, code_usage, aux, rng, step, codebook_cfg, l2_normalized):
    """Re-initialises dead codes from this batch's encoder outputs every `restart_every` steps."""
    if codebook_cfg.restart_every <= 0:
        return gen_params, code_usage, jnp.zeros((), jnp.float32)
    num_codes = code_usage.shape[0]
    min_usage = codebook_cfg.min_usage / num_codes
    dead = code_usage < min_usage
    due = (step % codebook_cfg.restart_every) == 0
    codebook = quantizer.get_codebook(gen_params)
    restarted = quantizer.restart_dead_codes(
        codebook, code_usage, aux["encoder_latents"], rng, min_usage,
        sampling=codebook_cfg.restart_sampling, l2_normalized=l2_normalized)
    codebook = jnp.where(due, restarted, codebook)
    # A restarted code starts at the uniform share: it has time to be picked before it counts
    # as dead again.
    reset_usage = jnp.where(dead, 1.0 / num_codes, code_usage)
    code_usage = jnp.where(due, reset_usage, code_usage)
    count = jnp.where(due, jnp.sum(dead), 0).astype(jnp.float32)
    return quantizer.set_codebook(gen_params, codebook), code_usage, count


def make_train_step(fns: StepFns, config: ml_collections.ConfigDict, use_disc: bool,
                    use_perceptual: bool = True) -> Callable:
    return functools.partial(train_step, fns=fns, config=config, use_disc=use_disc,
                             use_perceptual=use_perceptual)
