"""A small VQ-GAN trained on the embedded synthetic anime dataset in ~12 minutes on 2 CPU cores.

The dataset is built on first use (about a minute); nothing is downloaded. Same 64x128 frames
and 8x16 token grid as the reference, with narrower layers and a smaller codebook.
"""
import ml_collections

from configs import vqgan_kny


def get_config() -> ml_collections.ConfigDict:
    config = vqgan_kny.get_config()
    config.data.dataset = "synthetic_anime"
    config.data.embedded = ml_collections.ConfigDict(dict(
        kind="synthetic_anime", num_train_episodes=60, num_test_episodes=6, seed=0))
    # 4 channels per normalisation group: with one channel per group, GroupNorm removes each
    # channel's per-frame mean, and the flat background colours must be smuggled around it.
    config.model.update(channels=16, channel_multipliers=(1, 2, 4, 4), z_channels=64,
                        num_embeddings=512, embedding_dim=32, norm_groups=4,
                        l2_normalize_codes=True, lookup_dim=8)
    config.discriminator.update(filters=32, norm_groups=16)
    # Three phases: L1 + codebook only (0.24 s/step here), then LPIPS (0.7 s/step), then the
    # discriminator too. The cheap phase learns colours and layout; LPIPS and the GAN sharpen.
    config.loss.perceptual_start = 1_300
    config.loss.disc_start = 1_500
    config.loss.disc_weight = 0.3
    config.codebook.restart_every = 100
    config.optimizer.gen_lr = 1e-3
    config.optimizer.disc_lr = 4e-4
    config.optimizer.warmup_steps = 100
    config.optimizer.schedule = "cosine"
    config.train.update(batch_size=8, num_steps=1_800, log_every=50, checkpoint_every=300,
                        image_every=300, keep_checkpoints=2)
    config.eval.update(every=600, num_batches=16, batch_size=16)
    return config
