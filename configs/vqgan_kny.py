"""Stage 1 (VQ-GAN frame tokenizer), reference architecture at 64x128 on anime episodes.

Sizes follow GANime (taming-transformers VQModel): base channels 32 with multipliers
(2, 4, 8, 8), one res block per level, attention at resolution 16, so a 64x128 frame becomes an
8x16 = 128-token grid. The PyTorch port used 1024 codes; the original TensorFlow version used
50257 codes (GPT-2's vocabulary, so a pretrained GPT-2 embedding table could be reused): run it
with `--config.model.num_embeddings=50257`.

The dataset `kny` is built from episode files with
`python -m data_prep.episodes --input=EPISODES_DIR --name=kny`.
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.stage = "vqgan"
    config.seed = 0

    config.data = ml_collections.ConfigDict()
    config.data.data_root = "datasets"
    config.data.dataset = "kny"
    # An embedded dataset (`synthetic_anime` or `moving_mnist`) is built into `data_root` on
    # first use when `embedded.kind` names it; "" means the dataset must already exist.
    config.data.embedded = ml_collections.ConfigDict()
    config.data.embedded.kind = ""
    config.data.height = 64
    config.data.width = 128
    config.data.train_split = "train"
    config.data.eval_split = "test"
    config.data.worker_count = 0
    config.data.worker_buffer_size = 2
    config.data.read_threads = 4
    config.data.read_buffer = 64
    config.data.prefetch = 2

    config.model = ml_collections.ConfigDict()
    config.model.in_channels = 3
    config.model.out_channels = 3
    config.model.channels = 32
    config.model.channel_multipliers = (2, 4, 8, 8)
    config.model.num_res_blocks = 1
    config.model.attention_resolutions = (16,)
    # taming counts attention resolutions down from `resolution`, halving at each level; with
    # the frame width, attention sits at the 8x16 level of a 64x128 frame, where the papers'
    # "attention at 16" puts it. (TorchGANime's vqgan.yaml says 256: no level attention, see
    # configs/vqgan_torchganime.py; GANime's TF encoder adds none either, its decoder two.)
    config.model.resolution = config.data.get_ref("width")
    config.model.z_channels = 512
    config.model.dropout = 0.0
    config.model.num_embeddings = 1024
    config.model.embedding_dim = 128
    config.model.beta = 0.25
    config.model.legacy_loss = False
    config.model.l2_normalize_codes = False
    config.model.lookup_dim = 0
    config.model.norm_groups = 32
    config.model.norm_eps = 1e-6  # GroupNorm epsilon: taming's and GANime's (TorchGANime: 6.1e-5)
    config.model.output_tanh = True
    # > 1: fold p x p pixel patches into channels around the network (pixel shuffle), so no
    # layer runs at full resolution (ours, for CPU budgets; the originals have 1).
    config.model.patch_size = 1
    # The layer kinds (see ganime_jax/models/layers.py): taming's, which TorchGANime copies.
    # GANime's TensorFlow VQ-GAN uses "avgpool_conv", "bilinear_conv", unscaled attention and
    # its own encoder attention counter: configs/vqgan_ganime_tf.py.
    config.model.downsample = "strided_conv"
    config.model.upsample = "nearest_conv"
    config.model.scaled_attention = True
    config.model.attention_placement = "taming"
    # True (ours): tokens that depend only on nearby pixels (models/vqgan.py, VQGAN).
    config.model.encoder_local = False
    # True (ours): tokens that depend only on their own pixel patch, so identical patches get
    # identical tokens (models/vqgan.py, PatchEncoder).
    config.model.encoder_per_patch = False
    config.model.dtype = "float32"
    config.model.param_dtype = "float32"

    config.discriminator = ml_collections.ConfigDict()
    config.discriminator.num_layers = 3
    config.discriminator.filters = 64
    # taming uses BatchNorm; GroupNorm keeps the step pure (no batch statistics to carry).
    config.discriminator.norm = "group"
    config.discriminator.norm_groups = 32
    config.discriminator.dtype = config.model.get_ref("dtype")

    config.loss = ml_collections.ConfigDict()
    config.loss.l1_weight = 1.0
    config.loss.perceptual_weight = 1.0
    config.loss.perceptual_dtype = "float32"  # compute dtype of LPIPS's VGG16 convolutions
    # LPIPS from this step on (0: from the start, as taming). Before it the step is L1 +
    # codebook only, about 3x cheaper at demo size: a cheap phase that learns colour and layout.
    config.loss.perceptual_start = 0
    config.loss.codebook_weight = 1.0
    config.loss.disc_weight = 0.8
    config.loss.disc_factor = 1.0
    config.loss.disc_start = 10000
    config.loss.adaptive_weight_max = 1e4

    # Dead-code restart: every `restart_every` steps (0: never), codes whose usage EMA (decay
    # `usage_decay`, starting at 0) is below `min_usage` times the uniform share
    # 1/num_embeddings are re-initialised from random encoder outputs of the batch, drawn
    # uniformly or, with restart_sampling "error", in proportion to their squared distance to
    # the nearest live code (models/quantizer.restart_dead_codes).
    config.codebook = ml_collections.ConfigDict()
    config.codebook.restart_every = 0
    config.codebook.restart_sampling = "uniform"
    config.codebook.usage_decay = 0.99
    config.codebook.min_usage = 0.1

    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.gen_lr = 3e-5
    config.optimizer.disc_lr = 5e-5
    config.optimizer.b1 = 0.5
    config.optimizer.b2 = 0.9
    config.optimizer.eps = 1e-8
    config.optimizer.grad_clip = 1.0
    config.optimizer.warmup_steps = 0
    config.optimizer.schedule = "constant"  # or "cosine" (decays to 0 at train.num_steps)

    config.train = ml_collections.ConfigDict()
    config.train.batch_size = 64
    config.train.num_steps = 200_000
    config.train.log_every = 100
    config.train.checkpoint_every = 2_000
    config.train.keep_checkpoints = 3
    config.train.image_every = 2_000

    config.eval = ml_collections.ConfigDict()
    config.eval.every = 5_000
    config.eval.num_batches = 8
    config.eval.batch_size = 16
    # The split the held-out figures logged while training read (a run's curves and the choice of
    # its settings and checkpoints); `--mode=eval` scores `data.eval_split`. GANime had no other.
    config.eval.split = "test"

    # Mesh axes: `data` shards the batch; `fsdp` shards parameters (1: replicated params).
    # -1 takes all remaining devices.
    config.mesh = ml_collections.ConfigDict()
    config.mesh.data = -1
    config.mesh.fsdp = 1
    # Logical axis -> mesh axes (Flax rules): "features", the output axis of every kernel and
    # of the codebook, is split over `fsdp` (FSDP); the batch always takes both mesh axes.
    config.mesh.axis_rules = (("features", "fsdp"),)
    return config
