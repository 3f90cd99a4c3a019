"""Stage 3 of the demo: the refiner of decoded in-betweens (`ganime_jax.models.refiner`).

    python main.py --config=configs/refiner_demo.py      # -> workdirs/refiner_demo

It trains on the embedded synthetic anime clips (built on first use) through the shipped demo
VQ-GAN, which stays frozen: each step encodes and decodes one in-between and both given frames
of each clip, and the refiner learns to bring the decode back to the true frame (L1 + LPIPS).
A scratch probe of this network (README, "Refining the decoded in-betweens") took held-out
LPIPS of the generated in-betweens from 0.237 to 0.207 after 1,400 steps of batch 8.
This is also the reference config of stage 3: every refiner config has its fields.
"""
import ml_collections

from configs import vqgan_demo


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.stage = "refiner"
    config.seed = 0
    config.tokenizer = ml_collections.ConfigDict(dict(workdir="ganime_jax/assets/demo/vqgan"))
    config.data = vqgan_demo.get_config().data
    # Clips of up to 16 frames (the eval's length); the in-between is drawn from the real ones.
    config.data.max_frames = 16
    config.data.min_frames = 15
    config.model = ml_collections.ConfigDict(dict(
        widths=(32, 64, 96), convs_per_level=2, blend_init=(3.0, -1.0, -1.0),
        candidate_statistics=False, dtype="float32"))
    config.loss = ml_collections.ConfigDict(dict(
        l1_weight=1.0, perceptual_weight=1.0, perceptual_dtype="float32",
        # Weight of the negative per-frame PSNR (dB); 0: not computed.
        psnr_weight=0.0))
    # A scratch probe at lr 2e-3 moved away from the plain decode before it learned anything;
    # 5e-4 learned from step ~300 on.
    config.optimizer = ml_collections.ConfigDict(dict(
        lr=5e-4, warmup_steps=100, schedule="cosine", b1=0.9, b2=0.999, eps=1e-8, grad_clip=1.0))
    config.train = ml_collections.ConfigDict(dict(
        batch_size=8, num_steps=3_000, log_every=50, checkpoint_every=250, keep_checkpoints=2))
    # 2 batches of 16 validation clips, every in-between of each: 448 frames.
    config.eval = ml_collections.ConfigDict(dict(every=500, batch_size=16, num_batches=2,
                                                 split="validation"))
    config.mesh = vqgan_demo.get_config().mesh
    return config
