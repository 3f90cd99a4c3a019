"""The demo VQ-GAN trained on one GPU: `vqgan_demo`'s network, data and loss phases, with four
times the batch and a step count that fits one 10-minute device call together with the GPT
(README, "Trained on a GPU").

    python main.py --config=configs/vqgan_demo_gpu.py      # -> workdirs/vqgan_demo_gpu

The network stays the CPU demo's, so the shipped tokenizer samples and evaluates on a laptop
CPU at the same cost; on an H200 this small network ran 50-60 steps a second at batch 32.
LPIPS is cheap there, so it starts at a fifth of the steps (the CPU config waits until 40 % to
save time); the light discriminator keeps the last quarter.
"""
import ml_collections

from configs import vqgan_demo

NUM_STEPS = 3_000


def get_config() -> ml_collections.ConfigDict:
    config = vqgan_demo.get_config()
    config.train.update(batch_size=32, num_steps=NUM_STEPS, log_every=100,
                        checkpoint_every=NUM_STEPS // 6, image_every=NUM_STEPS // 3)
    config.loss.perceptual_start = NUM_STEPS // 5
    config.loss.disc_start = NUM_STEPS * 3 // 4
    config.eval.every = NUM_STEPS // 6
    # Frames are decoded by Grain worker processes: in the main process alone the H200 waited
    # on them (3.3 steps/s at batch 32); with 12 workers of its 16 cores, 50-60 steps/s.
    config.data.worker_count = 12
    return config
