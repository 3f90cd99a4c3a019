"""Optax optimisers and learning-rate schedules built from config sections."""
import ml_collections
import optax

from ganime_jax.errors import UserError

SCHEDULES = ("constant", "cosine")


def learning_rate_schedule(peak: float, *, schedule: str, warmup_steps: int, total_steps: int,
                           init_value: float = 0.0) -> optax.Schedule:
    """Linear warm-up from `init_value` to `peak`, then constant or cosine decay to 0."""
    if schedule not in SCHEDULES:
        raise UserError(f"unknown learning-rate schedule {schedule!r}; use one of {SCHEDULES}.")
    if schedule == "constant":
        after = optax.constant_schedule(peak)
    else:
        after = optax.cosine_decay_schedule(peak, max(total_steps - warmup_steps, 1))
    if warmup_steps <= 0:
        return after
    warmup = optax.linear_schedule(init_value, peak, warmup_steps)
    return optax.join_schedules([warmup, after], [warmup_steps])


def adam(lr: float, opt: ml_collections.ConfigDict, total_steps: int) -> optax.GradientTransformation:
    """Adam with the config's betas, global-norm clipping and schedule."""
    schedule = learning_rate_schedule(lr, schedule=opt.schedule, warmup_steps=opt.warmup_steps,
                                      total_steps=total_steps)
    return optax.chain(optax.clip_by_global_norm(opt.grad_clip),
                       optax.adam(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps))
