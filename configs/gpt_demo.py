"""The demo GPT: the embedded synthetic anime clips, tokenised by the demo VQ-GAN, sized for 2
CPU cores and about 2 hours.

Tokenised by `configs/vqgan_demo.py` (64x128 frames, 8x16 grid, 2048 codes); the token dataset
is built from its workdir on first use:

    python main.py --config=configs/vqgan_demo.py          # stage 1 -> workdirs/vqgan_demo
    python main.py --config=configs/gpt_demo.py            # stage 2 -> workdirs/gpt_demo
    python main.py --config=configs/gpt_demo.py --mode=eval  # -> workdirs/gpt_demo/eval

The `sequence` layout (the whole clip in one block-causal pass; README "Stage-2 layouts"): at
this width and depth (with 512 codes and k=2) its teacher-forced step processed 2.7x the target
tokens per second of GANime's window layout at the same k (`bench/bench_gpt_train.py
--config=demo`). Attention window of 3
frames per layer; over 4 layers a frame's prediction can draw on the 9 frames before it. A
128-wide, 4-layer, 4-head GPT on batches of 4 clips cropped to 16 frames; teacher forcing for
the first 2/5 of the steps (the reference's ratio, from gpt_kny), then the model's own
predictions.
"""
import ml_collections

from configs import gpt_kny


def get_config() -> ml_collections.ConfigDict:
    config = gpt_kny.get_config()
    config.tokenizer.workdir = "workdirs/vqgan_demo"
    config.data.dataset = "synthetic_anime"
    config.data.min_frames = 15
    config.data.max_frames = 16
    config.model.layout = "sequence"
    # n_positions: positions inside a frame only (the sequence layout's frame index is its own
    # embedding).
    config.model.gpt = gpt_kny.gpt_fields(vocab_size=2048, n_positions=128, n_embd=128,
                                          n_layer=4, n_head=4, embd_pdrop=0.0, attn_pdrop=0.0,
                                          resid_pdrop=0.0)
    config.model.n_frames_before = 3
    config.optimizer.update(lr=1e-3, init_lr=1e-4, grad_accum_steps=1)
    config.train.update(batch_size=4, num_steps=4_000, log_every=20, checkpoint_every=200,
                        keep_checkpoints=2, sample_every=1_000)
    # Curves and choices while training read the validation clips, never the test ones (the
    # tokenizer's config must build them: `vqgan_demo` does).
    config.eval.update(every=500, num_batches=2, batch_size=16, split="validation")
    config.sample.update(method="greedy", num_frames=16)
    config.evaluate.update(num_clips=256, num_frames=16, seeds=(0, 1, 2), method="top_k")
    return config
