"""The demo VQ-GAN: the embedded synthetic anime dataset, sized for 2 CPU cores and 2 hours.

The dataset is built on first use (about a minute); nothing is downloaded. Same 64x128 frames
and 8x16 token grid as the reference. What the proxy runs in the README's results chose:
- a narrow four-level net (16/32/64/64 channels at 64x128 ... 8x16, attention at 8x16): it
  learns more per CPU second than a pixel-shuffle stem with twice the width
  (`--config.model.patch_size=2`, 32/64/128 channels), which was behind at equal CPU time;
- 2048 codes (looked up in 8 dimensions, l2-normalised, dead ones restarted): at 750 steps
  +1.3 dB over 512 codes; the GPT's vocabulary grows with it.
- Three phases: L1 + codebook only (cheap: colours and layout), then LPIPS (outlines and
  texture), then a light discriminator for the last stretch.
"""
import ml_collections

from configs import vqgan_kny


def get_config() -> ml_collections.ConfigDict:
    config = vqgan_kny.get_config()
    config.data.dataset = "synthetic_anime"
    # 12 test episodes hold 264 clips of 16 frames, enough for a 256-clip eval (6 held 137).
    # Every episode is rendered from its own seed, so the train split does not depend on it.
    # 6 validation episodes (134 clips of 16 frames or more) for choosing settings without the
    # test clips.
    config.data.embedded = ml_collections.ConfigDict(dict(
        kind="synthetic_anime", num_train_episodes=60, num_test_episodes=12,
        num_validation_episodes=6, seed=0))
    # 4 channels per normalisation group: with one channel per group, GroupNorm removes each
    # channel's per-frame mean, and the flat background colours must be smuggled around it.
    config.model.update(channels=16, channel_multipliers=(1, 2, 4, 4), z_channels=64,
                        num_embeddings=2048, embedding_dim=32, norm_groups=4,
                        l2_normalize_codes=True, lookup_dim=8)
    config.discriminator.update(filters=32, norm_groups=16)
    config.loss.perceptual_start = 2_500
    config.loss.disc_start = 4_500
    config.loss.disc_weight = 0.2
    config.codebook.restart_every = 100
    config.optimizer.gen_lr = 1e-3
    config.optimizer.disc_lr = 4e-4
    config.optimizer.warmup_steps = 100
    config.optimizer.schedule = "cosine"
    config.train.update(batch_size=8, num_steps=6_000, log_every=50, checkpoint_every=250,
                        image_every=500, keep_checkpoints=2)
    # Curves and choices while training read the validation episodes, never the test ones.
    config.eval.update(every=500, num_batches=16, batch_size=16, split="validation")
    return config
