"""A small GPT trained on the embedded synthetic anime clips in ~16 minutes on 2 CPU cores.

Tokenised by the demo VQ-GAN (`configs/vqgan_demo.py`: 64x128 frames, 8x16 grid, 512 codes);
the token dataset is built from its workdir on first use:

    python main.py --config=configs/vqgan_demo.py          # stage 1 -> workdirs/vqgan_demo
    python main.py --config=configs/gpt_demo.py            # stage 2 -> workdirs/gpt_demo
    python main.py --config=configs/gpt_demo.py --mode=eval  # -> workdirs/gpt_demo/eval

A 128-wide, 4-layer, 4-head GPT (the "mini" preset at half width, 0.9M parameters) on batches
of 4 clips cropped to 16 frames; the context is the last frame plus the 2 most recent frames
(3 x 128 = 384 tokens). The countdown is left off the last frame so that generation computes
its keys/values once per clip. For the 256-wide "mini" of the benchmarks, override
`--config.model.gpt.n_embd=256 --config.model.gpt.n_head=8`.
"""
import ml_collections

from configs import gpt_kny


def get_config() -> ml_collections.ConfigDict:
    config = gpt_kny.get_config()
    config.tokenizer.workdir = "workdirs/vqgan_demo"
    config.data.dataset = "synthetic_anime"
    config.data.min_frames = 15
    config.data.max_frames = 16
    config.model.gpt = gpt_kny.gpt_fields("mini", vocab_size=512, n_positions=384, n_embd=128,
                                          n_head=4, embd_pdrop=0.0, attn_pdrop=0.0,
                                          resid_pdrop=0.0)
    config.model.n_frames_before = 2
    config.model.countdown_on_last_frame = False
    config.optimizer.update(lr=1e-3, init_lr=1e-4, grad_accum_steps=1)
    # About 2.2 s per step on 2 idle cores: ~15 minutes of steps, teacher forcing for the
    # first 2/5 (the reference's ratio, from gpt_kny), then the model's own predictions.
    config.train.update(batch_size=4, num_steps=400, log_every=20, checkpoint_every=100,
                        keep_checkpoints=2, sample_every=200)
    config.eval.update(every=200, num_batches=2, batch_size=16)
    config.sample.update(method="greedy", num_frames=16)
    config.evaluate.update(num_clips=64, num_frames=16, seeds=(0, 1, 2), method="top_k")
    return config
