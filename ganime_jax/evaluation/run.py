"""`python main.py --mode=eval`: the model and its baselines on held-out clips, in one table.

The first `config.evaluate.num_clips` held-out clips with at least `num_frames` frames are cut
to `num_frames`; the model generates their in-between frames from their first and last frames
once per seed (once in all when sampling is greedy, which ignores the seed), optionally
averaged over the seeds pixel by pixel (`model_mean`), and the baselines of `baselines.py`
are made once. Every set is scored against the true clips
(`scoring.py`: PSNR, SSIM, LPIPS per in-between frame) and, with `config.evaluate.fvd`, by
FVD/KVD of I3D features (first frame dropped). Features and scores are cached on disk by the
clips' content (`set_cache.py`), so the baselines cost nothing after the first run on a test set.
Results go to `<output_dir>/results.json`, `results.md` and `quality_by_position.png`.
"""
import contextlib
import dataclasses
import json
import pathlib
import time
from typing import Any, Iterator

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from ganime_jax import conditioning, generation, sample, writable
from ganime_jax.batching import map_in_batches
from ganime_jax.errors import UserError
from ganime_jax.evaluation import baselines, report, scoring
from ganime_jax.evaluation.set_cache import I3D_OPTIONS, SetCache
from ganime_jax.losses.perceptual import load_lpips_params
from ganime_jax.metrics import fvd, i3d
from ganime_jax.tokenizer import load_tokenizer

OUTPUT_SUBDIR = "eval"  # under the workdir when config.evaluate.output_dir is ""
CACHE_SUBDIR = "eval_cache"  # under data_root when feature_cache_dir is ""
MODEL = "model"
# The pixel mean of the model's clips over the seeds: a Monte-Carlo estimate of the model's
# posterior-mean clip, the point estimate that minimises expected squared error (so PSNR)
# under the model, at the cost of sharpness (the perception-distortion trade-off).
MODEL_MEAN = "model_mean"
# The deterministic methods, made once each, in table order after the model.
BASELINE_LABELS = {"reconstruction": "VQ-GAN reconstruction (ceiling)",
                   "cross_fade": "cross-fade", "hold": "hold first, then last",
                   "black": "all-black frame"}
# Everything, in table order: what `config.evaluate.methods` selects from.
ALL_METHODS = (MODEL, MODEL_MEAN, *BASELINE_LABELS)
# What configs written before `config.evaluate.methods` existed evaluate.
DEFAULT_METHODS = (MODEL, "reconstruction", "cross_fade", "hold")

@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """`config.evaluate` with the sampling settings resolved and checked."""

    num_clips: int
    num_frames: int
    methods: tuple[str, ...]  # of ALL_METHODS, in table order
    seeds: tuple[int, ...]
    batch_size: int  # clips per generation / reconstruction call
    method: str
    temperature: float
    top_k: int
    top_p: float
    candidates: int  # clips drawn per pair of frames, one kept by `selection`
    selection: str  # generation.SELECTIONS
    direction: str  # generation.DIRECTIONS
    refined: bool  # the decoded in-betweens go through config.sample.refiner_workdir's refiner
    refiner_draw_weight: float  # the kept draw's share of each refined in-between
    fvd: bool
    i3d_batch_size: int
    metrics_batch_size: int  # frames per PSNR / SSIM / LPIPS call
    ssim_gaussian: bool

    @property
    def seeds_run(self) -> tuple[int, ...]:
        """Greedy decoding ignores the seed: one run stands for all. None without the model."""
        if MODEL not in self.methods:
            return ()
        return self.seeds[:1] if self.method == "greedy" else self.seeds

    def sampling(self) -> dict[str, Any]:
        return dict(method=self.method, temperature=self.temperature, top_k=self.top_k,
                    top_p=self.top_p, candidates=self.candidates, selection=self.selection,
                    direction=self.direction)

    def sampling_label(self) -> str:
        refined = (", refined" + sample.draw_weight_label(self.refiner_draw_weight)
                   if self.refined else "")
        if self.method == "greedy":
            return "greedy" + refined
        knob = f"k={self.top_k}" if self.method == "top_k" else f"p={self.top_p}"
        best = sample.choice_label(self.candidates, self.selection, self.direction)
        return f"{self.method}, {knob}, temperature {self.temperature}{best}{refined}"


def settings_from_config(config: ml_collections.ConfigDict) -> EvalSettings:
    """EvalSettings of `config.evaluate` ("" method = config.sample.method; temperature, top_k
    and top_p always from config.sample); one-line UserErrors for values that cannot work."""
    section, sampling = config.evaluate, config.sample
    seeds = tuple(section.seeds) if isinstance(section.seeds, (tuple, list)) else ()
    if not seeds or len(set(seeds)) != len(seeds) or not all(
            isinstance(seed, int) for seed in seeds):
        raise UserError(f"config.evaluate.seeds must be distinct integers, got "
                        f"{section.seeds!r}; e.g. --config.evaluate.seeds='(0, 1, 2)'.")
    low, high = conditioning.MIN_CLIP_FRAMES, config.model.max_frames
    if not low <= section.num_frames <= high:
        raise UserError(f"config.evaluate.num_frames={section.num_frames} is not supported: "
                        f"this model generates clips of {low} to {high} frames.")
    least = 2 if section.fvd else 1
    if section.num_clips < least:
        raise UserError(f"config.evaluate.num_clips={section.num_clips} is too small: use at "
                        f"least {least}" + (" (FVD compares two sets of clips) or set "
                                            "config.evaluate.fvd=False." if section.fvd else "."))
    for name in ("batch_size", "i3d_batch_size", "metrics_batch_size"):
        if section[name] < 1:
            raise UserError(f"config.evaluate.{name} must be at least 1, got {section[name]}.")
    methods = tuple(section.get("methods", DEFAULT_METHODS))
    unknown = [m for m in methods if m not in ALL_METHODS]
    if not methods or unknown or len(set(methods)) != len(methods):
        raise UserError(f"config.evaluate.methods={methods!r}: give distinct names out of "
                        f"{list(ALL_METHODS)} (leave out {MODEL!r} to evaluate a tokenizer "
                        "alone).")
    settings = EvalSettings(
        num_clips=section.num_clips, num_frames=section.num_frames,
        methods=tuple(m for m in ALL_METHODS if m in methods), seeds=seeds,
        batch_size=section.batch_size, method=section.method or sampling.method,
        temperature=sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p,
        **sample.choice(config), refined=bool(config.sample.get("refiner_workdir", "")),
        refiner_draw_weight=config.sample.get("refiner_draw_weight", 0.0),
        fvd=section.fvd,
        i3d_batch_size=section.i3d_batch_size, metrics_batch_size=section.metrics_batch_size,
        ssim_gaussian=section.ssim_gaussian)
    if MODEL_MEAN in settings.methods and len(settings.seeds_run) < 2:  # greedy runs once
        raise UserError(f"config.evaluate.methods has {MODEL_MEAN!r}, the pixel mean of the "
                        f"model's sampled clips: it needs {MODEL!r} in the methods, a sampling "
                        "method other than greedy and at least two seeds.")
    generation.check_sampling(settings.method, settings.temperature, settings.top_k,
                              settings.top_p)
    generation.check_choice(settings.candidates, settings.method, settings.selection,
                            settings.direction)
    return settings


class Timings(dict):
    """Seconds spent per named stage, summed over the `with timings("stage"):` blocks."""

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self[stage] = self.get(stage, 0.0) + time.perf_counter() - start


def generate_set(generator: sample.Generator, truth: np.ndarray, seed: int,
                 settings: EvalSettings) -> np.ndarray:
    """The model's clips between the first and last frames of `truth`, `batch_size` clips per
    call; batch i samples with fold_in(key(seed), i), so clips of one seed differ."""
    def generate(index: int, clips: np.ndarray) -> np.ndarray:
        return generation.generate_frames(
            generator.tokenizer, generator.transformer, generator.params, clips[:, 0],
            clips[:, -1], settings.num_frames, jax.random.fold_in(jax.random.key(seed), index),
            decode_batch_size=generation.default_decode_batch_size(), refiner=generator.refiner,
            **settings.sampling())
    return map_in_batches(generate, (truth,), settings.batch_size,
                                  desc=f"generating (seed {seed})")


def pixel_mean(sets: list[np.ndarray]) -> np.ndarray:
    """uint8 clips: the per-pixel mean of same-shaped uint8 clip sets, rounded."""
    total = np.zeros(sets[0].shape, np.float32)
    for clips in sets:
        total += clips
    return np.rint(total / len(sets)).astype(np.uint8)


def baseline_set(name: str, tokenizer: generation.FrameTokenizer, truth: np.ndarray,
                 settings: EvalSettings) -> np.ndarray:
    """The clips of baseline `name` (a key of BASELINE_LABELS)."""
    if name == "cross_fade":
        return baselines.cross_fade(truth)
    if name == "hold":
        return baselines.hold(truth)
    if name == "black":
        return baselines.black(truth)
    decode_batch_size = generation.default_decode_batch_size()
    return map_in_batches(
        lambda _, clips: baselines.vqgan_reconstruction(tokenizer, clips,
                                                        decode_batch_size),
        (truth,), settings.batch_size, desc="VQ-GAN reconstruction")


def evaluate(tokenizer: generation.FrameTokenizer, generator: sample.Generator | None,
             truth: np.ndarray, settings: EvalSettings,
             cache: SetCache | None = None) -> tuple[dict[str, list], Timings]:
    """({method: [one summary per run]}, timings) for the model and the baselines on `truth`.

    The methods are `settings.methods` (`generator` may be None without the model). A run's
    summary is `scoring.summarize`'s, plus "seed" (None for the baselines) and, with
    `settings.fvd`, "fvd" and "kvd". Every set is made first, then the sets not in `cache`
    (None: no cache) are scored together, so that the true frames go through LPIPS's VGG once.
    """
    timings = Timings()
    plan = [(name, None) for name in BASELINE_LABELS if name in settings.methods]
    plan += [(MODEL, seed) for seed in settings.seeds_run]
    sets = []
    for name, seed in tqdm(plan, desc="making clip sets", unit="set"):
        with timings("generation" if name == MODEL else "baselines"):
            sets.append(generate_set(generator, truth, seed, settings) if name == MODEL
                        else baseline_set(name, tokenizer, truth, settings))
    if MODEL_MEAN in settings.methods:
        sets.append(pixel_mean([clips for (name, _), clips in zip(plan, sets) if name == MODEL]))
        plan.append((MODEL_MEAN, None))
    with timings("metrics"):
        scores = _frame_scores(truth, sets, settings, cache)
    distances = [{} for _ in sets]
    if settings.fvd:
        with timings("i3d"):
            distances = _fvd_kvd(truth, sets, settings, cache)
    runs: dict[str, list] = {name: [] for name in settings.methods}
    for (name, seed), set_scores, set_distances in zip(plan, scores, distances):
        runs[name].append({"seed": seed, **set_distances, **scoring.summarize(set_scores)})
    return runs, timings


def _frame_scores(truth: np.ndarray, sets: list[np.ndarray], settings: EvalSettings,
                  cache: SetCache | None) -> list[dict[str, np.ndarray]]:
    scores = [cache.frame_scores(clips) if cache else None for clips in sets]
    missing = [i for i, found in enumerate(scores) if found is None]
    if missing:
        fresh = scoring.frame_scores(truth, [sets[i] for i in missing], load_lpips_params(),
                                     batch_size=settings.metrics_batch_size,
                                     ssim_gaussian=settings.ssim_gaussian)
        for i, set_scores in zip(missing, fresh):
            scores[i] = set_scores
            if cache:
                cache.save_frame_scores(sets[i], set_scores)
    return scores


def _fvd_kvd(truth: np.ndarray, sets: list[np.ndarray], settings: EvalSettings,
             cache: SetCache | None) -> list[dict[str, float]]:
    def features(clips: np.ndarray) -> np.ndarray:
        def compute() -> np.ndarray:
            return i3d.i3d_logits(clips, params=i3d.load_i3d_params(),
                                  batch_size=settings.i3d_batch_size, **I3D_OPTIONS)
        return cache.i3d_features(clips, compute) if cache else compute()

    real = features(truth)
    distances = []
    for clips in tqdm(sets, desc="I3D features", unit="set"):
        both = fvd.fvd_kvd(real, features(clips))
        distances.append({"fvd": both["fvd"], "kvd": both["kvd"]})
    return distances


def heldout_truth(config: ml_collections.ConfigDict, settings: EvalSettings) -> np.ndarray:
    """The true clips: the first `num_clips` held-out clips that are long enough, cut."""
    truth = sample.heldout_clips(config, settings.num_frames, settings.num_clips,
                                 lower_hint="lower config.evaluate.num_frames")
    if settings.fvd and len(truth) < 2:
        raise UserError(f"only one held-out clip has {settings.num_frames} frames: FVD needs "
                        "two; lower config.evaluate.num_frames or set config.evaluate.fvd=False.")
    return truth


def _set_cache(config: ml_collections.ConfigDict, truth: np.ndarray,
               settings: EvalSettings) -> SetCache:
    folder = config.evaluate.feature_cache_dir or str(
        pathlib.Path(config.data.data_root) / CACHE_SUBDIR)
    return SetCache.for_truth(folder, truth, settings.ssim_gaussian)


def _notes(config: ml_collections.ConfigDict, settings: EvalSettings, num_clips: int,
           step: int | None) -> list[str]:
    data = config.data
    notes = [f"{num_clips} held-out clips of {settings.num_frames} frames (the first long "
             f"enough of {data.dataset}_clips/{data.eval_split}); PSNR, SSIM and LPIPS over "
             f"the {settings.num_frames - 2} in-between frames (the first and last are given)."]
    if num_clips < settings.num_clips:
        notes.append(f"only {num_clips} of the {settings.num_clips} requested clips are long "
                     "enough.")
    if MODEL not in settings.methods:
        notes.append("no model: config.evaluate.methods selects "
                     f"{', '.join(settings.methods)} only.")
    else:
        notes.append(f"model: the step-{step} transformer, {settings.sampling_label()} sampling"
                     + (" (the decoded in-betweens refined with the given frames by the stage-3 "
                        f"refiner of {config.sample.refiner_workdir})." if settings.refined
                        else "."))
    if settings.seeds_run and len(settings.seeds_run) < len(settings.seeds):
        notes.append(f"greedy sampling ignores the seed: seeds {list(settings.seeds)} would give "
                     "identical clips, so the model ran once (no spread).")
    elif settings.seeds_run and len(settings.seeds) > 1:
        notes.append(f"model: mean ± standard deviation over seeds {list(settings.seeds)}.")
    if MODEL_MEAN in settings.methods:
        notes.append(f"{MODEL_MEAN}: the per-pixel mean of the model's clips over seeds "
                     f"{list(settings.seeds_run)} (one run), an estimate of the model's "
                     "posterior-mean clip: the least squared error under the model, not a "
                     "sample of it.")
    notes.append("the VQ-GAN reconstruction and the baselines are deterministic: one run each.")
    if settings.fvd:
        notes.append("FVD and KVD: Kinetics-400 I3D logits of the whole clips, first frame "
                     "dropped, against the true clips' (few clips make them noisy).")
    notes.append(f"PSNR is capped at {scoring.PSNR_CAP_DB:g} dB per frame (identical frames); "
                 + ("SSIM: 11x11 Gaussian window (tf.image.ssim)." if settings.ssim_gaussian
                    else "SSIM: 7x7 uniform window (scikit-image)."))
    return notes


def _methods(runs: dict[str, list], settings: EvalSettings) -> dict[str, dict[str, Any]]:
    labels = {MODEL: f"model ({settings.sampling_label()})",
              MODEL_MEAN: f"model, pixel mean of its {len(settings.seeds_run)} clips",
              **BASELINE_LABELS}
    return {name: {"label": labels[name],
                   "deterministic": name != MODEL or settings.method == "greedy",
                   "runs": method_runs, "aggregate": report.aggregate(method_runs)}
            for name, method_runs in runs.items()}


def run_eval(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict[str, Any]:
    """Evaluates the newest checkpoint in `workdir` (not read when `config.evaluate.methods`
    leaves out the model: a tokenizer alone), writes the report and returns its results."""
    if config.get("stage") != "gpt":
        raise UserError(f"--mode=eval needs a stage-2 (gpt) config, got stage "
                        f"{config.get('stage')!r}; pass e.g. --config=configs/gpt_demo.py.")
    settings = settings_from_config(config)
    output_dir = config.evaluate.output_dir or pathlib.Path(workdir) / OUTPUT_SUBDIR
    writable.check_folder(output_dir, "the eval output folder (config.evaluate.output_dir)")
    truth = heldout_truth(config, settings)
    generator = None
    if MODEL in settings.methods:
        generator = sample.load_generator(config, workdir)
        tokenizer = generator.tokenizer
    elif not config.tokenizer.workdir:
        raise UserError("config.tokenizer.workdir is not set; point it at the stage-1 (vqgan) "
                        "workdir to evaluate.")
    else:
        tokenizer = load_tokenizer(config.tokenizer.workdir)
    if truth.shape[2:] != tuple(tokenizer.frame_shape):
        raise UserError(
            f"the clips of {config.data.dataset}_clips have frames of {truth.shape[2:]} but the "
            f"tokenizer in {config.tokenizer.workdir} makes {tokenizer.frame_shape}; "
            "evaluate on the dataset the model was trained on.")
    start = time.perf_counter()
    runs, timings = evaluate(tokenizer, generator, truth, settings,
                             _set_cache(config, truth, settings))
    timings["total"] = time.perf_counter() - start
    step = generator.step if generator is not None else None
    results = {
        "checkpoint_step": step, "tokenizer_step": tokenizer.step,
        "refiner_step": (generator.refiner.step if generator is not None
                         and generator.refiner is not None else None),
        "dataset": config.data.dataset, "split": config.data.eval_split,
        "num_clips": len(truth), "num_clips_requested": settings.num_clips,
        "num_frames": settings.num_frames,
        "scored_positions": list(range(1, settings.num_frames - 1)),
        "seeds": list(settings.seeds), "seeds_run": list(settings.seeds_run),
        "sampling": settings.sampling(), "fvd": settings.fvd,
        "psnr_cap_db": scoring.PSNR_CAP_DB, "ssim_gaussian": settings.ssim_gaussian,
        "methods": _methods(runs, settings),
        "notes": _notes(config, settings, len(truth), step),
        "timings_s": {stage: round(seconds, 3) for stage, seconds in timings.items()},
        "config": json.loads(config.to_json()),
    }
    paths = report.write_report(results, output_dir)
    print(report.markdown_table(results), flush=True)
    for path in paths.values():
        print(f"wrote {path}")
    return results
