"""Stage-1 losses: LPIPS perceptual distance and adversarial (GAN) losses."""
from ganime_jax.losses.gan import (
    adaptive_disc_weight,
    d_loss_fn,
    disc_factor_schedule,
    generator_adv_loss,
    hinge_d_loss,
    vanilla_d_loss,
)
from ganime_jax.losses.perceptual import load_lpips_params, lpips_distance

__all__ = [
    "adaptive_disc_weight",
    "d_loss_fn",
    "disc_factor_schedule",
    "generator_adv_loss",
    "hinge_d_loss",
    "lpips_distance",
    "load_lpips_params",
    "vanilla_d_loss",
]
