"""A small VQ-GAN trained on the embedded synthetic anime dataset in ~10 minutes on 2 CPU cores.

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
    config.model.update(channels=16, channel_multipliers=(1, 2, 4, 4), z_channels=64,
                        num_embeddings=512, embedding_dim=32, norm_groups=16)
    config.discriminator.update(filters=32, norm_groups=16)
    config.loss.disc_start = 800
    config.loss.disc_weight = 0.3
    config.codebook.restart_every = 100
    config.optimizer.gen_lr = 4e-4
    config.optimizer.disc_lr = 4e-4
    config.optimizer.warmup_steps = 100
    config.optimizer.schedule = "cosine"
    config.train.update(batch_size=8, num_steps=1_200, log_every=50, checkpoint_every=200,
                        image_every=200, keep_checkpoints=2)
    config.eval.update(every=400, num_batches=16, batch_size=16)
    return config
