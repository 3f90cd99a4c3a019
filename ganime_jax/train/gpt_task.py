"""Stage 2 as a `loop.Task`: token clips, FSDP-sharded state, jit-compiled steps, evaluation,
and GIFs of held-out clips generated from their first and last frames."""
import contextlib
import functools
import pathlib
from typing import Any, Iterator

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import Mesh

from ganime_jax import checkpointing, conditioning, generation, mesh as mesh_lib, multihost
from ganime_jax.convert.hf_gpt2 import load_hf_gpt2, overlay_params
from ganime_jax.data import pipeline, tfds_io, video_io
from ganime_jax.errors import UserError
from ganime_jax.models.frame_layouts import (Transformer, check_token_grid,
                                            transformer_from_config)
from ganime_jax.models.ganime_transformer import LM_PARAMS
from ganime_jax.tokenizer import Tokenizer, load_tokenizer
from ganime_jax.train import codebook_embedding, gpt_step
from ganime_jax.train.loop import TrainingClock
from ganime_jax.train.summary import MetricWriter, image_grid

# config.model fields that choose the initialisation, not the module.
INIT_FIELDS = ("init_from_hf", "init_vocab_policy", "codebook_embedding_share")
# GPT2Config fields an imported checkpoint must share (sizes are checked by shape).
HF_MATCHING_FIELDS = ("layer_norm_epsilon", "tie_word_embeddings")
SAMPLES_DIR = "samples"
# fold_in index of the init key that draws the codebook's random projection.
CODEBOOK_PROJECTION_KEY = 1


def build_model(model_config: ml_collections.ConfigDict) -> Transformer:
    fields = {k: v for k, v in model_config.to_dict().items() if k not in INIT_FIELDS}
    return transformer_from_config(fields)


def build_fns(config: ml_collections.ConfigDict) -> gpt_step.StepFns:
    schedule = gpt_step.learning_rate(config.optimizer, config.train.num_steps)
    return gpt_step.StepFns(model=build_model(config.model),
                            tx=gpt_step.make_optimizer(config.optimizer, schedule),
                            schedule=schedule)


def check_config(config: ml_collections.ConfigDict, mesh: Mesh) -> None:
    """One-line errors for settings that cannot train."""
    data, model = config.data, config.model
    if data.min_frames < conditioning.MIN_CLIP_FRAMES:
        raise UserError(f"config.data.min_frames={data.min_frames}: a clip needs at least "
                        f"{conditioning.MIN_CLIP_FRAMES} frames (first, last, one in between).")
    if model.max_frames < data.max_frames:
        raise UserError(f"config.model.max_frames={model.max_frames} is below "
                        f"config.data.max_frames={data.max_frames}; the countdown must cover "
                        "every clip length.")
    needed = (model.n_frames_before + 1) * model.frame_tokens
    if model.get("layout", "window") == "window" and model.gpt.n_positions < needed:
        raise UserError(f"config.model.gpt.n_positions={model.gpt.n_positions} is below the "
                        f"{needed} tokens of a sequence ((n_frames_before + 1) * frame_tokens).")
    micro = config.optimizer.grad_accum_steps * mesh.size
    if config.train.batch_size % micro:
        raise UserError(f"batch size {config.train.batch_size} must be a multiple of "
                        f"grad_accum_steps x devices = {micro}.")
    mesh_lib.check_batch_size(config.eval.batch_size, mesh, "config.eval.batch_size")
    if not config.train.own_prediction_temperature >= 0:
        raise UserError(f"config.train.own_prediction_temperature="
                        f"{config.train.own_prediction_temperature} must be >= 0 (0: the "
                        "argmax, as the reference; above 0: sampled contexts).")
    noise = config.train.context_noise
    if not 0.0 <= noise <= 1.0:
        raise UserError(f"config.train.context_noise={noise} must be in [0, 1] (the largest "
                        "share of context tokens replaced by random codes; 0: none).")
    if noise and model.layout != "sequence":
        raise UserError("config.train.context_noise needs config.model.layout='sequence'.")
    if model.get("token_order", "parallel") == "raster":
        gpt_step.check_raster_objective(
            config.train.stop_ground_truth_after_step < config.train.num_steps, noise)
    generation.check_choice(config.sample.candidates, config.sample.method,  # the GIFs
                            config.sample.selection, config.sample.direction)
    share = model.codebook_embedding_share
    if not 0.0 <= share <= 1.0:
        raise UserError(f"config.model.codebook_embedding_share={share} must be in [0, 1] "
                        "(0: random embeddings; 1: the codebook's geometry only).")
    if share and model.init_from_hf:
        raise UserError("config.model.codebook_embedding_share and config.model.init_from_hf "
                        "both set the token embeddings; use one of them.")
    if share and not config.tokenizer.workdir:
        raise UserError("config.model.codebook_embedding_share needs config.tokenizer.workdir "
                        "(the codebook comes from the tokenizer).")


def check_tokens(config: ml_collections.ConfigDict) -> None:
    """The token dataset must fit the model: frame size and vocabulary."""
    data, model = config.data, config.model
    name = tfds_io.variant_name(data.dataset, "tokens")
    summary = tfds_io.dataset_summary(data.data_root, name)
    path = tfds_io.dataset_path(data.data_root, name)
    if summary["kind"] != "tokens":
        raise UserError(f"{path} holds {summary['kind']}, not tokens; build it with "
                        "`python -m data_prep.tokens ...`.")
    if summary["frame_shape"] != [model.frame_tokens]:
        raise UserError(f"{path} has {summary['frame_shape'][0]} tokens per frame but "
                        f"config.model.frame_tokens is {model.frame_tokens}; make them equal.")
    tokenizer = tfds_io.read_metadata(data.data_root, name).get("tokenizer", {})
    if "grid_shape" in tokenizer:
        check_token_grid(build_model(model), tokenizer["grid_shape"], f"the tokenizer of {path}")
    codes = tokenizer.get("num_embeddings")
    if codes is not None and model.gpt.vocab_size < codes:
        raise UserError(f"config.model.gpt.vocab_size={model.gpt.vocab_size} is below the "
                        f"tokenizer's {codes} codes; set it to at least {codes}.")


class GPTTask:
    """Everything stage 2 needs from the shared loop, on one mesh.

    Parameters (and the optimiser state that mirrors them) are sharded by the model's logical
    axes through `config.mesh.axis_rules` (configs/gpt_kny.py: FSDP over the `fsdp` mesh axis;
    the batch split over every axis).
    """

    def __init__(self, config: ml_collections.ConfigDict, mesh: Mesh,
                 workdir: str | pathlib.Path | None = None):
        self.config = config
        self.mesh = mesh
        self.workdir = None if workdir is None else pathlib.Path(workdir)
        self.rules = mesh_lib.axis_rules(config.mesh)
        check_config(config, mesh)
        self.fns = build_fns(config)
        self.model = self.fns.model
        replicated = mesh_lib.replicated(mesh)
        batch = mesh_lib.batch_sharding(mesh)
        self.batch_shardings = {"tokens": batch, "n_frames": batch}
        with self.context():
            boxed = jax.eval_shape(functools.partial(gpt_step.init_state, fns=self.fns),
                                   jax.random.key(0))
            self.state_shardings = nn.logical_to_mesh_sharding(
                nn.get_partition_spec(boxed), mesh, self.rules)
        self._abstract = checkpointing.abstract_with_shardings(nn.unbox(boxed),
                                                               self.state_shardings)
        accum = config.optimizer.grad_accum_steps
        temperature = config.train.own_prediction_temperature
        noise = config.train.context_noise
        self._steps = {own: jax.jit(gpt_step.make_train_step(self.fns, accum, own, temperature,
                                                             noise),
                                    in_shardings=(self.state_shardings, self.batch_shardings,
                                                  replicated),
                                    out_shardings=(self.state_shardings, replicated),
                                    donate_argnums=0)
                       for own in (False, True)}
        self._eval = {own: jax.jit(functools.partial(gpt_step.eval_sums, model=self.model,
                                                     own_predictions=own),
                                   in_shardings=(self.state_shardings.params,
                                                 self.batch_shardings),
                                   out_shardings=replicated)
                      for own in (False, True)}
        self._eval_batches: list[dict[str, np.ndarray]] | None = None
        self.samples = SampleWriter(config, mesh, self.model, self.workdir)

    @contextlib.contextmanager
    def context(self):
        """The mesh and logical axis rules the model's sharding annotations resolve against."""
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            yield

    def abstract_state(self) -> Any:
        return self._abstract

    def init_state(self, rng: jax.Array) -> gpt_step.GPTState:
        """A fresh state, born sharded; GPT-2 weights overlaid if `init_from_hf` names some,
        the tokenizer's codebook mixed into the token embeddings if
        `codebook_embedding_share` is above 0."""
        with self.context():
            state = mesh_lib.run_once(lambda key: nn.unbox(gpt_step.init_state(key, self.fns)),
                                      rng, out_shardings=self.state_shardings)
        if self.config.model.init_from_hf:
            state = state.replace(params=self._overlay_hf(state.params))
        share = self.config.model.codebook_embedding_share
        if share:
            state = state.replace(params=self._overlay_codebook(
                state.params, share, jax.random.fold_in(rng, CODEBOOK_PROJECTION_KEY)))
        return state

    def _overlay_codebook(self, params: Any, share: float, rng: jax.Array) -> Any:
        codes = codebook_embedding.tokenizer_codes(
            load_tokenizer(self.config.tokenizer.workdir, self.mesh))
        wte = params[LM_PARAMS]["wte"]
        mixed = codebook_embedding.mix_codebook(wte, codes, share, rng)
        lm = {**params[LM_PARAMS], "wte": jax.device_put(mixed, wte.sharding)}
        return {**params, LM_PARAMS: lm}

    def _overlay_hf(self, params: Any) -> Any:
        gpt = self.model.gpt
        loaded, fields = load_hf_gpt2(
            self.config.model.init_from_hf, vocab_size=gpt.vocab_size,
            vocab_policy=self.config.model.init_vocab_policy, n_positions=gpt.n_positions,
            scan_layers=gpt.scan_layers)
        for field in HF_MATCHING_FIELDS:
            if fields[field] != getattr(gpt, field):
                raise UserError(f"{self.config.model.init_from_hf} has {field}={fields[field]!r} "
                                f"but config.model.gpt.{field} is {getattr(gpt, field)!r}.")
        return {**params, LM_PARAMS: overlay_params(params[LM_PARAMS], loaded)}

    def train_batches(self, data_state: bytes | None) -> Iterator[tuple[dict, bytes]]:
        data = self.config.data
        loader = pipeline.tokens_loader(
            data.data_root, tfds_io.variant_name(data.dataset, "tokens"), data.train_split,
            global_batch_size=self.config.train.batch_size, max_frames=data.max_frames,
            min_frames=data.min_frames, random_length=data.random_clip_lengths,
            options=pipeline.LoaderOptions.from_config(data, self.config.seed))
        iterator = iter(loader)
        if data_state is not None:
            iterator.set_state(data_state)
        return pipeline.prefetch_to_mesh(iterator, self.mesh, size=self.config.data.prefetch,
                                         data_axis=mesh_lib.BATCH_AXES, with_state=True)

    def own_predictions(self, step: int) -> bool:
        """Teacher forcing until `stop_ground_truth_after_step`, own predictions after."""
        return step >= self.config.train.stop_ground_truth_after_step

    def train_step(self, state, batch, rng, step):
        with self.context():
            return self._steps[self.own_predictions(step)](state, batch, rng)

    def periodic(self, state, step: int, writer: MetricWriter, last_batch: dict,
                 clock: TrainingClock) -> None:
        cfg = self.config
        if cfg.train.sample_every and step % cfg.train.sample_every == 0:
            with self.context():
                self.samples.write(state.params, step, writer)
        if cfg.eval.every and step % cfg.eval.every == 0:
            reached = clock.read()
            writer.scalars(step, {**self.evaluate(state), **reached}, prefix="eval")

    def _held_out_batches(self) -> list[dict[str, np.ndarray]]:
        """The first eval clips, cropped to their start, padded with empty clips (n_frames 0,
        which the masks ignore) to whole batches."""
        if self._eval_batches is None:
            cfg = self.config
            self._eval_batches = tfds_io.first_clip_batches(
                cfg.data.data_root, tfds_io.variant_name(cfg.data.dataset, "tokens"),
                cfg.eval.split, "tokens", min_frames=cfg.data.min_frames,
                max_frames=cfg.data.max_frames, batch_size=cfg.eval.batch_size,
                num_batches=cfg.eval.num_batches, dtype=np.int32)
        return self._eval_batches

    def evaluate(self, state: gpt_step.GPTState) -> dict[str, float]:
        """Held-out loss and token accuracy, teacher-forced and from own (greedy) predictions.

        `own_*` is the accuracy of greedy generation from each clip's first and last frame
        (parallel token order only: raster order scores a frame's tokens in one pass only with
        the true tokens before them, `gpt_step.check_raster_objective`).
        `copy_previous_accuracy` and `nearer_end_accuracy` are what copying gets on the same
        targets (see `conditioning.copy_baseline_accuracies`): the bars for teacher-forced and
        own accuracy.
        """
        kinds = (False,) if getattr(self.model, "raster", False) else (False, True)
        totals = {own: gpt_step.Sums(0.0, 0.0, 0.0) for own in kinds}
        with self.context():
            for batch in self._held_out_batches():
                placed = {k: jax.make_array_from_callback(v.shape, self.batch_shardings[k],
                                                          lambda index, v=v: v[index])
                          for k, v in batch.items()}
                for own in kinds:
                    sums = jax.device_get(self._eval[own](state.params, placed))
                    totals[own] = totals[own] + gpt_step.Sums(*map(float, sums))
        result = {}
        for own in kinds:
            prefix = "own" if own else "teacher_forced"
            count = max(totals[own].count, 1.0)
            result[f"{prefix}_loss"] = totals[own].loss / count
            result[f"{prefix}_accuracy"] = totals[own].correct / count
        result["num_tokens"] = totals[False].count
        batches = self._held_out_batches()
        baselines = conditioning.copy_baseline_accuracies(
            np.concatenate([b["tokens"] for b in batches]),
            np.concatenate([b["n_frames"] for b in batches]))
        result.update({f"{name}_accuracy": value for name, value in baselines.items()})
        return result


class SampleWriter:
    """GIFs of held-out clips generated from their first and last frames (top row), over the
    ground truth passed through the tokenizer (middle row: the best the GPT could do with these
    tokens) and the ground truth (bottom row), in `<workdir>/samples/`; the same clips as one
    TensorBoard grid."""

    def __init__(self, config: ml_collections.ConfigDict, mesh: Mesh, model: Transformer,
                 workdir: pathlib.Path | None):
        self.config = config
        self.mesh = mesh
        self.model = model
        self.workdir = workdir
        self._clips: np.ndarray | None = None
        self._tokenizer: Tokenizer | None = None

    def held_out_clips(self) -> np.ndarray | None:
        """uint8 (N, num_frames, H, W, 3): the first eval clips long enough, or None."""
        if self._clips is None:
            cfg = self.config
            name, length = tfds_io.variant_name(cfg.data.dataset, "clips"), cfg.sample.num_frames
            if not tfds_io.dataset_exists(cfg.data.data_root, name):
                logging.warning("no %s in %s: no sample GIFs", name, cfg.data.data_root)
                return None
            records = tfds_io.first_records(cfg.data.data_root, name, cfg.eval.split,
                                            min_frames=length, count=cfg.sample.num_clips)
            if not records:
                logging.warning("no %s clip has %d frames: no sample GIFs", name, length)
                return None
            self._clips = np.stack([r["frames"][:length] for r in records])
        return self._clips

    def write(self, params: Any, step: int, writer: MetricWriter) -> None:
        clips = self.held_out_clips()
        if clips is None:
            return
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.config.tokenizer.workdir, self.mesh)
        s = self.config.sample
        generated = generation.generate_frames(
            self._tokenizer, self.model, params, clips[:, 0], clips[:, -1], clips.shape[1],
            jax.random.key(s.seed), method=s.method, temperature=s.temperature, top_k=s.top_k,
            top_p=s.top_p, candidates=s.candidates, selection=s.selection,
            direction=s.direction)
        flat = clips.reshape(-1, *clips.shape[2:])
        reconstructed = np.asarray(self._tokenizer.decode(self._tokenizer.encode(flat)))
        reconstructed = reconstructed.reshape(clips.shape)
        if not multihost.is_main_process():
            return
        rows = [row for clip in zip(generated, reconstructed, clips) for row in clip]
        writer.image(step, "samples/generated_reconstructed_ground_truth", image_grid(rows))
        if self.workdir is not None:
            frames = np.stack([image_grid([generated[:, t], reconstructed[:, t], clips[:, t]])
                               for t in range(clips.shape[1])])
            path = self.workdir / SAMPLES_DIR / f"train_step_{step:08d}.gif"
            path.parent.mkdir(parents=True, exist_ok=True)
            video_io.write_gif(path, frames, fps=self.config.sample.fps)
