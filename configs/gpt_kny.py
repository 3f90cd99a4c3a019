"""Stage 2 (GPT-2 video transformer), reference setup for 64x128 anime clips.

Follows GANime's KNY run: a gpt2-medium-sized decoder over 1024 VQ-GAN codes, 128 tokens per
frame (8x16 grid), k=5 context frames, batch 64, AdamW (weight decay 1e-4) with a linear
warm-up over 15% of the steps from 5e-6 to 1e-4 and cosine decay, 500 epochs of ~28k clips,
teacher forcing for the first 200 of them, then the model's own predictions as context.

Needs a trained stage-1 workdir and the clips dataset; the token dataset `{dataset}_tokens` is
built from them on first use (or by `python -m data_prep.tokens ...`):

    python main.py --config=configs/gpt_kny.py --config.tokenizer.workdir=workdirs/vqgan_kny
"""
import ml_collections

CLIPS_PER_EPOCH = 28_213
EPOCHS = 500
GROUND_TRUTH_EPOCHS = 200


def gpt_fields(*, vocab_size: int, n_positions: int, n_embd: int, n_layer: int, n_head: int,
               **overrides) -> ml_collections.ConfigDict:
    """Every GPT2Config field: the given sizes, GPT-2's dropout, and compute knobs."""
    fields = dict(
        vocab_size=vocab_size, n_positions=n_positions, n_embd=n_embd, n_layer=n_layer,
        n_head=n_head, n_inner=0, layer_norm_epsilon=1e-5, embd_pdrop=0.1, attn_pdrop=0.1,
        resid_pdrop=0.1, tie_word_embeddings=True, initializer_range=0.02, dtype="float32",
        param_dtype="float32", remat="", scan_layers=False)
    fields.update(overrides)
    return ml_collections.ConfigDict(fields)


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.stage = "gpt"
    config.seed = 0

    config.tokenizer = ml_collections.ConfigDict()
    # Required (None until set): the stage-1 (VQ-GAN) workdir whose newest checkpoint tokenises.
    config.tokenizer.workdir = ml_collections.config_dict.placeholder(str)

    config.data = ml_collections.ConfigDict()
    config.data.data_root = "datasets"
    config.data.dataset = "kny"  # trains on {dataset}_tokens; GIFs show {dataset}_clips
    config.data.train_split = "train"
    config.data.eval_split = "test"
    config.data.min_frames = 15
    config.data.max_frames = 20  # longer clips are cropped to a random 20-frame window
    # Training clips are cut to a random length from min_frames to max_frames (uniform) instead
    # of the longest the clip allows: the countdown then varies apart from a frame's position,
    # and short clips show arrivals at the last frame. Held-out figures keep the longest.
    config.data.random_clip_lengths = False
    config.data.worker_count = 0
    config.data.worker_buffer_size = 2
    config.data.read_threads = 4
    config.data.read_buffer = 64
    config.data.prefetch = 2
    # Building {dataset}_tokens when it is missing: frames per encoder batch, clips per shard.
    config.data.encode_batch_size = 64
    config.data.encode_clips_per_shard = 128

    config.model = ml_collections.ConfigDict()
    # "window": GANime's layout, a sequence per target frame; "sequence": the whole clip in one
    # block-causal pass (ganime_jax/models/frame_sequence.py), n_frames_before then being the
    # attention window (0: the whole history). See the README's "Stage-2 layouts".
    config.model.layout = "window"
    # gpt2-medium's sizes (`ganime_jax.models.gpt.gpt_preset`) over the 1024 codes.
    config.model.gpt = gpt_fields(vocab_size=1024, n_positions=1024, n_embd=1024, n_layer=24,
                                  n_head=16, dtype="bfloat16", remat="nothing_saveable")
    config.model.frame_tokens = 128
    config.model.n_frames_before = 5
    config.model.max_frames = config.data.get_ref("max_frames")
    config.model.frame_position_embedding = True
    config.model.frame_slot_embedding = True
    # The reference adds the countdown to every position; False leaves it off the last frame,
    # whose keys/values a sampler can then compute once per clip.
    config.model.countdown_on_last_frame = True
    # Sequence layout only: a learned attention bias per (frame distance, row offset, column
    # offset) on the token grid, `grid_width` tokens wide (the tokenizer's width / 8 here).
    config.model.relative_position_bias = False
    config.model.grid_width = 16
    # Sequence layout only: "parallel" predicts a frame's tokens at once (GANime); "raster" one
    # after another, each seeing the tokens before it in its frame (README "Stage-2 layouts").
    config.model.token_order = "parallel"
    # A local Hugging Face GPT-2 directory (config.json + model.safetensors) to start from, or "".
    config.model.init_from_hf = ""
    config.model.init_vocab_policy = "truncate"  # or "reinit" (see convert/hf_gpt2.py)
    # Share in [0, 1] of the token embeddings' initial variance taken from the tokenizer's
    # codebook (a random projection of its codes: similar codes start with similar embeddings
    # and, through the tied head, similar logits); 0: GPT-2's random init (the reference).
    config.model.codebook_embedding_share = 0.0

    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.lr = 1e-4
    config.optimizer.init_lr = 5e-6
    config.optimizer.warmup_fraction = 0.15
    config.optimizer.schedule = "cosine"
    config.optimizer.weight_decay = 1e-4
    config.optimizer.b1 = 0.9
    config.optimizer.b2 = 0.999
    config.optimizer.eps = 1e-8
    config.optimizer.grad_clip = 1.0
    config.optimizer.grad_accum_steps = 8  # micro-batches of 8 clips (8 x 18 sequences of 768)

    config.train = ml_collections.ConfigDict()
    config.train.batch_size = 64
    config.train.num_steps = EPOCHS * CLIPS_PER_EPOCH // 64
    config.train.stop_ground_truth_after_step = (
        config.train.get_ref("num_steps") * GROUND_TRUTH_EPOCHS // EPOCHS)
    # How the own-prediction phase picks its context frames: 0 takes the argmax, as the
    # reference does; above 0 samples at that temperature (scheduled sampling).
    config.train.own_prediction_temperature = 0.0
    # Sequence layout: the largest share of context tokens (frames after the first) that a
    # training clip replaces by random codes, its share drawn uniformly from [0, this]; the
    # targets stay true (gpt_step.noisy_context). 0: none, as the reference.
    config.train.context_noise = 0.0
    config.train.log_every = 100
    config.train.checkpoint_every = 2_000
    config.train.keep_checkpoints = 3
    config.train.sample_every = 5_000  # GIFs of held-out clips (0: never)

    config.eval = ml_collections.ConfigDict()
    config.eval.every = 5_000
    config.eval.num_batches = 4
    config.eval.batch_size = 16
    # The split the held-out figures logged while training read (a run's curves and the choice of
    # its settings and checkpoints); `--mode=eval` scores `data.eval_split`. GANime had no other.
    config.eval.split = "test"

    # Generation: --mode=sample and the GIFs written while training.
    config.sample = ml_collections.ConfigDict()
    config.sample.method = "top_k"  # "greedy" | "top_k" | "top_p"
    config.sample.temperature = 1.0
    config.sample.top_k = 50
    config.sample.top_p = 0.9
    # Clips drawn per pair of frames, one of them kept (1: the one draw). Also used by
    # --mode=eval and the training GIFs.
    config.sample.candidates = 1
    # Which: "arrival", the one whose second-to-last frame is nearest the given last frame
    # (`generation.nearest_arrival`), or "medoid", the one nearest the other candidates in
    # pixel space (`generation.medoid`; every candidate's frames are decoded).
    config.sample.selection = "arrival"
    # "forward": every in-between drawn from the first frame on; "both": the first half from
    # the first frame on, the second half from the last frame back (the model run on the two
    # frames swapped; `generation.generate_frames`). Each draw stops after the frames it keeps,
    # so "both" costs one forward draw's sampling (two whole draws with candidates kept by
    # arrival).
    config.sample.direction = "forward"
    # A stage-3 refiner workdir (configs/refiner_demo.py): refines the decoded in-betweens with
    # the two given frames; "" decodes them plainly. Relative in a bundle: to the bundle folder.
    config.sample.refiner_workdir = ""
    # The kept draw's share w of each refined in-between: (1 - w) * refined + w * draw. The
    # refiner's pixel losses pull it towards the blurred mean, the draw is sharp; tune w on
    # validation clips (`ganime_jax.refiner`).
    config.sample.refiner_draw_weight = 0.0
    config.sample.seed = 0
    config.sample.num_frames = 20  # default clip length of --mode=sample
    config.sample.num_clips = 4  # held-out clips in a GIF / grid
    config.sample.fps = 8  # frame rate of written videos
    config.sample.output_dir = ""  # "" = <workdir>/samples

    # --mode=eval: the model against cross-fade, hold and VQ-GAN-reconstruction baselines.
    config.evaluate = ml_collections.ConfigDict()
    config.evaluate.num_clips = 256  # the first held-out clips with at least num_frames frames
    config.evaluate.num_frames = 20
    # Rows of the table; without "model" no GPT checkpoint is read: a tokenizer evaluated alone.
    # "model_mean" adds the pixel mean of the model's sampled clips over the seeds (the
    # squared-error-optimal point estimate under the model; needs sampling and 2+ seeds).
    config.evaluate.methods = ("model", "reconstruction", "cross_fade", "hold")
    config.evaluate.seeds = (0, 1, 2, 3, 4)  # the original reported 5 runs; greedy runs once
    config.evaluate.batch_size = 16  # clips per generation call
    # "" = config.sample.method; temperature, top_k and top_p always come from config.sample.
    config.evaluate.method = ""
    config.evaluate.fvd = True  # FVD/KVD through I3D at 224x224 (slow on CPU)
    config.evaluate.i3d_batch_size = 8
    config.evaluate.metrics_batch_size = 64  # frames per PSNR / SSIM / LPIPS call
    config.evaluate.ssim_gaussian = True  # tf.image.ssim's 11x11 Gaussian, as GANime evaluated
    # I3D features and frame scores of evaluated clip sets, keyed by content ("" =
    # <data_root>/eval_cache): the baselines cost nothing after the first eval on a test set.
    config.evaluate.feature_cache_dir = ""
    config.evaluate.output_dir = ""  # "" = <workdir>/eval

    config.mesh = ml_collections.ConfigDict()
    config.mesh.data = -1
    config.mesh.fsdp = 1
    # Logical axis -> mesh axes (Flax rules). The batch takes both mesh axes (every device sees
    # its own examples); "embed" is claimed by the batch first on activations, so it is split
    # over `fsdp` on parameters only: fully sharded data parallelism.
    config.mesh.axis_rules = (("batch", ("data", "fsdp")), ("embed", "fsdp"), ("vocab", None),
                              ("mlp", None), ("heads", None), ("kv", None), ("length", None),
                              ("layers", None))
    return config
