"""A tiny VQ-GAN on a tiny embedded dataset (16x32 frames): for tests and smoke runs."""
import ml_collections

from configs import vqgan_kny


def get_config() -> ml_collections.ConfigDict:
    config = vqgan_kny.get_config()
    config.data.dataset = "tiny_anime"
    config.data.height = 16
    config.data.width = 32
    config.data.read_threads = 0
    config.data.embedded = ml_collections.ConfigDict(dict(
        kind="synthetic_anime", num_train_episodes=2, num_test_episodes=1, shots_per_episode=2,
        min_drawings=6, max_drawings=8, min_frames=4, max_frames=8, seed=0))
    config.model.update(channels=8, channel_multipliers=(1, 2, 2), attention_resolutions=(8,),
                        z_channels=8, num_embeddings=32, embedding_dim=8, norm_groups=4)
    config.discriminator.update(filters=8, num_layers=2, norm_groups=4)
    config.loss.disc_start = 2
    config.codebook.restart_every = 2
    config.optimizer.gen_lr = 1e-3
    config.optimizer.disc_lr = 1e-3
    config.train.update(batch_size=8, num_steps=4, log_every=1, checkpoint_every=2,
                        image_every=2, keep_checkpoints=2)
    config.eval.update(every=4, num_batches=1, batch_size=8)
    return config
