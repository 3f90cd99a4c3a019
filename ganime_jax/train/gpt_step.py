"""Stage 2's train state and pure step: GANime's next-frame objective on token clips.

Two ways to build the context of each target frame (`ganime_jax.conditioning`):
- teacher forcing: the true previous frames. Every target of every clip is independent, so
  the B x (M-2) sequences are gathered with index arrays and run in ONE batched forward pass;
- own predictions (the reference schedule's second phase): the context is the model's own
  frames, so the targets are visited in order by a `lax.scan` over frames, each step
  predicting frame t from the window carried in the scan state and pushing its choice
  (stop_gradient) into that window. The reference chooses the argmax; a positive
  `temperature` samples instead (scheduled sampling as Bengio et al. 2015 draw it), so that
  uncertain content is not erased from the context (on Moving MNIST it still collapsed to
  black frames, as with the argmax: README, gpt_mnist9).
- context noise (sequence layout): teacher forcing, but each training clip replaces a random
  share of its context tokens (frames after the first, which sampling is always given) by
  random codes, up to `context_noise`. The targets stay the true frames, so they stay
  consistent with what the context was, and a model that cannot trust its history must read
  the last frame and the countdown: what its own drifting rollouts ask of it.
Padded frames (beyond a clip's n_frames) are masked: the loss is the mean cross-entropy over
the valid target tokens of the whole batch. Gradient accumulation splits the batch into
micro-batches inside the step (a `lax.scan`), normalising by the whole batch's token count,
so the update equals that of one big batch.
"""
import functools
from typing import Any, Callable, NamedTuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from ganime_jax import conditioning
from ganime_jax.errors import UserError
from ganime_jax.models.frame_layouts import Transformer, example_inputs
from ganime_jax.models.frame_sequence import FrameSequenceTransformer, rollout
from ganime_jax.models.ganime_transformer import GANimeTransformer
from ganime_jax.train import optimizers

# fold_in indices of a step's key for its draws, apart from the dropout keys folded from it.
CHOICE_KEY = 1
NOISE_KEY = 2


@flax.struct.dataclass
class GPTState:
    step: jax.Array
    params: Any
    opt_state: Any


@flax.struct.dataclass
class StepFns:
    model: Transformer = flax.struct.field(pytree_node=False)
    tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)
    schedule: optax.Schedule = flax.struct.field(pytree_node=False)


class Sums(NamedTuple):
    """Loss and accuracy summed over valid target tokens, and how many there were."""
    loss: jax.Array
    correct: jax.Array
    count: jax.Array

    def __add__(self, other: "Sums") -> "Sums":
        return Sums(*(a + b for a, b in zip(self, other)))


def learning_rate(opt: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """Linear warm-up over `warmup_fraction` of the steps from `init_lr` to `lr`, then decay."""
    return optimizers.learning_rate_schedule(
        opt.lr, schedule=opt.schedule, warmup_steps=int(opt.warmup_fraction * total_steps),
        total_steps=total_steps, init_value=opt.init_lr)


def _decay_mask(params: Any) -> Any:
    """Weight decay on matrices (kernels, embeddings), not on biases and norm parameters."""
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(opt: ml_collections.ConfigDict, schedule: optax.Schedule
                   ) -> optax.GradientTransformation:
    """Global-norm clipping, then AdamW."""
    return optax.chain(
        optax.clip_by_global_norm(opt.grad_clip),
        optax.adamw(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=opt.weight_decay,
                    mask=_decay_mask))


def init_state(rng: jax.Array, fns: StepFns) -> GPTState:
    """A fresh state; parameters keep their logical-axis boxes (unbox after sharding them)."""
    params = fns.model.init({"params": rng}, *example_inputs(fns.model))["params"]
    return GPTState(step=jnp.zeros((), jnp.int32), params=params, opt_state=fns.tx.init(params))


def token_sums(logits: jax.Array, targets: jax.Array, valid: jax.Array) -> Sums:
    """logits (..., hw, V), targets (..., hw), valid (...) -> sums over the valid frames."""
    weight = valid.astype(jnp.float32)[..., None]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    count = jnp.sum(weight) * targets.shape[-1]
    return Sums(jnp.sum(ce * weight), jnp.sum(correct * weight), count)


def teacher_forced_sums(model: GANimeTransformer, params: Any, tokens: jax.Array,
                        n_frames: jax.Array, rng: jax.Array, train: bool) -> Sums:
    """All targets of the batch in one forward pass over B * (M-2) sequences."""
    tf = conditioning.teacher_forcing_inputs(tokens, n_frames, model.n_frames_before)
    batch, num_targets = tf.remaining.shape
    hw = tokens.shape[-1]
    last = jnp.broadcast_to(tf.last[:, None], (batch, num_targets, hw))
    logits = model.apply(
        {"params": params}, last.reshape(-1, hw),
        tf.context.reshape(batch * num_targets, model.n_frames_before, hw),
        tf.remaining.reshape(-1), train=train, rngs={"dropout": rng})
    return token_sums(logits, tf.targets.reshape(-1, hw), tf.valid.reshape(-1))


def context_choice(temperature: float,
                   rng: jax.Array) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """`choose(logits, s)` for own-prediction contexts: the argmax at temperature 0, else a
    draw from softmax(logits / temperature) keyed on (rng, s)."""
    if temperature == 0:
        return lambda logits, _: jnp.argmax(logits, axis=-1).astype(jnp.int32)
    key = jax.random.fold_in(rng, CHOICE_KEY)
    return lambda logits, s: jax.random.categorical(
        jax.random.fold_in(key, s), logits / temperature).astype(jnp.int32)


def own_prediction_sums(model: GANimeTransformer, params: Any, tokens: jax.Array,
                        n_frames: jax.Array, rng: jax.Array, train: bool,
                        temperature: float = 0.0) -> Sums:
    """Targets in order, each predicted from the model's own previous frames
    (`context_choice`)."""
    n_frames = n_frames.astype(jnp.int32)
    last = conditioning.last_frame_tokens(tokens, n_frames)
    context = conditioning.initial_context(tokens[:, 0], model.n_frames_before)
    t = jnp.asarray(conditioning.target_frames(tokens.shape[1]))
    targets = jnp.swapaxes(tokens[:, 1:-1], 0, 1)  # (M-2, B, hw)
    choose = context_choice(temperature, rng)

    def frame_step(context: jax.Array, xs: tuple[jax.Array, jax.Array]):
        t_i, target = xs
        remaining = conditioning.remaining_frames(t_i, n_frames)
        logits = model.apply({"params": params}, last, context, jnp.maximum(remaining, 0),
                             train=train, rngs={"dropout": jax.random.fold_in(rng, t_i)})
        prediction = jax.lax.stop_gradient(choose(logits, t_i)).astype(context.dtype)
        return conditioning.push_frame(context, prediction), token_sums(logits, target,
                                                                      remaining >= 1)

    _, sums = jax.lax.scan(frame_step, context, (t, targets))
    return Sums(*(jnp.sum(s) for s in sums))


def noisy_context(frames: jax.Array, max_rate: float, vocab_size: int,
                  rng: jax.Array) -> jax.Array:
    """frames (B, F, hw) with each token after frame 0 replaced, with probability r, by a code
    drawn uniformly from [0, vocab_size); each clip draws its r uniformly from [0, max_rate]."""
    rate_key, where_key, code_key = jax.random.split(rng, 3)
    rate = jax.random.uniform(rate_key, (frames.shape[0], 1, 1)) * max_rate
    replace = jax.random.uniform(where_key, frames.shape) < rate
    replace = replace.at[:, 0].set(False)
    codes = jax.random.randint(code_key, frames.shape, 0, vocab_size, frames.dtype)
    return jnp.where(replace, codes, frames)


def sequence_sums(model: FrameSequenceTransformer, params: Any, tokens: jax.Array,
                  n_frames: jax.Array, rng: jax.Array, train: bool,
                  own_predictions: bool = False, temperature: float = 0.0,
                  context_noise: float = 0.0) -> Sums:
    """Every target of the batch in one causal pass over [last][f_0]...[f_{M-3}] (raster token
    order: ...[f_{M-2}], the targets being their own within-frame context).

    With `own_predictions` the clip frames after f_0 are first generated from f_0 and the last
    frame (cached, no gradient; `context_choice`), then scored against the true frames in one
    pass. With `context_noise` (training only) the context frames after f_0 are first put
    through `noisy_context`. Neither applies to raster order (`check_raster_objective`).
    """
    tf = conditioning.teacher_forcing_inputs(tokens, n_frames, 1)
    if model.raster:
        check_raster_objective(own_predictions, context_noise if train else 0.0)
        return token_sums(model.apply({"params": params}, tf.last, tokens[:, :-1], tf.remaining,
                                      train=train, rngs={"dropout": rng}), tf.targets, tf.valid)
    inputs = tokens[:, :-2]
    if own_predictions:
        # Constant parameters: the rollout is a primal-only computation (no residuals kept
        # for the backward pass of the loss around it).
        generated = rollout(model, jax.lax.stop_gradient(params), tokens[:, 0], tf.last,
                            tf.remaining[:, :-1], context_choice(temperature, rng))
        inputs = jnp.concatenate([tokens[:, :1], generated], axis=1)
    if train and context_noise:
        inputs = noisy_context(inputs, context_noise, model.gpt.vocab_size,
                               jax.random.fold_in(rng, NOISE_KEY))
    logits = model.apply({"params": params}, tf.last, inputs, tf.remaining, train=train,
                         rngs={"dropout": rng})
    return token_sums(logits, tf.targets, tf.valid)


def check_raster_objective(own_predictions: bool, context_noise: float) -> None:
    """Raster order scores each target token with the true tokens before it in its frame as
    context, so its frames cannot also be the model's own or noised ones in the same pass."""
    if own_predictions or context_noise:
        raise UserError("config.model.token_order='raster' trains teacher-forced only: set "
                        "config.train.stop_ground_truth_after_step to at least num_steps and "
                        "config.train.context_noise=0.")


def objective(model: Transformer, own_predictions: bool, temperature: float = 0.0,
              context_noise: float = 0.0) -> Callable[..., Sums]:
    """The loss sums of `model`'s layout, teacher-forced or from its own predictions (chosen
    at `temperature`, `context_choice`); `context_noise`: the sequence layout's
    `noisy_context` while training."""
    if isinstance(model, FrameSequenceTransformer):
        return functools.partial(sequence_sums, own_predictions=own_predictions,
                                 temperature=temperature, context_noise=context_noise)
    if own_predictions:
        return functools.partial(own_prediction_sums, temperature=temperature)
    return teacher_forced_sums


def _micro_batches(x: jax.Array, count: int) -> jax.Array:
    """(B, ...) -> (count, B / count, ...); micro-batch j holds rows j, j+count, ... so that
    every device keeps contributing its own rows to every micro-batch."""
    x = jnp.swapaxes(x.reshape(x.shape[0] // count, count, *x.shape[1:]), 0, 1)
    return nn.with_logical_constraint(x, (None, "batch") + (None,) * (x.ndim - 2))


def train_step(state: GPTState, batch: dict, rng: jax.Array, *, fns: StepFns,
               grad_accum_steps: int, own_predictions: bool,
               temperature: float = 0.0, context_noise: float = 0.0) -> tuple[GPTState, dict]:
    """One AdamW update from the batch {"tokens": (B, M, hw), "n_frames": (B,)}.

    `rng`: the run's base key; this step's key folds in `state.step`. `temperature`: how the
    own-prediction contexts are chosen (`context_choice`); `context_noise`: see
    `noisy_context`."""
    rng = jax.random.fold_in(rng, state.step)
    tokens = batch["tokens"].astype(jnp.int32)
    n_frames = batch["n_frames"].astype(jnp.int32)
    total = jnp.maximum(jnp.sum(conditioning.valid_targets(n_frames, tokens.shape[1]))
                        * tokens.shape[-1], 1).astype(jnp.float32)
    sums_fn = objective(fns.model, own_predictions, temperature, context_noise)

    def loss_fn(params, micro_tokens, micro_frames, micro_rng):
        sums = sums_fn(fns.model, params, micro_tokens, micro_frames, micro_rng, True)
        return sums.loss / total, sums

    grad_fn = jax.grad(loss_fn, has_aux=True)
    if grad_accum_steps == 1:
        grads, sums = grad_fn(state.params, tokens, n_frames, rng)
    else:
        def accumulate(carry, xs):
            grads, sums = carry
            micro_grads, micro_sums = grad_fn(state.params, *xs)
            return (jax.tree.map(jnp.add, grads, micro_grads), sums + micro_sums), None

        zeros = Sums(*(jnp.zeros((), jnp.float32) for _ in Sums._fields))
        xs = (_micro_batches(tokens, grad_accum_steps), _micro_batches(n_frames, grad_accum_steps),
              jax.random.split(rng, grad_accum_steps))
        (grads, sums), _ = jax.lax.scan(
            accumulate, (jax.tree.map(jnp.zeros_like, state.params), zeros), xs)
    updates, opt_state = fns.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {
        "loss": sums.loss / total,
        "accuracy": sums.correct / total,
        "grad_norm": optax.tree.norm(grads),
        "learning_rate": fns.schedule(state.step),
        "valid_tokens": sums.count,
        "own_predictions": jnp.float32(own_predictions),
    }
    return GPTState(step=state.step + 1, params=params, opt_state=opt_state), metrics


def eval_sums(params: Any, batch: dict, *, model: Transformer,
              own_predictions: bool) -> Sums:
    """Deterministic sums over a held-out batch (padded clips may have n_frames 0); its own
    predictions are greedy, whatever the training draws."""
    return objective(model, own_predictions)(model, params, batch["tokens"].astype(jnp.int32),
                                      batch["n_frames"], jax.random.key(0), False)


def make_train_step(fns: StepFns, grad_accum_steps: int, own_predictions: bool,
                    temperature: float = 0.0, context_noise: float = 0.0) -> Callable:
    return functools.partial(train_step, fns=fns, grad_accum_steps=grad_accum_steps,
                             own_predictions=own_predictions, temperature=temperature,
                             context_noise=context_noise)
