"""A tiny GPT on the tiny embedded dataset, tokenised by a `configs/vqgan_tiny.py` run: tests.

    python main.py --config=configs/gpt_tiny.py --config.tokenizer.workdir=workdirs/vqgan_tiny
"""
import ml_collections

from configs import gpt_kny


def get_config() -> ml_collections.ConfigDict:
    config = gpt_kny.get_config()
    config.data.dataset = "tiny_anime"
    config.data.min_frames = 4
    config.data.max_frames = 8
    config.data.read_threads = 0
    config.data.encode_batch_size = 16
    config.data.encode_clips_per_shard = 4
    # vqgan_tiny: 16x32 frames -> a 4x8 grid of 32 codes.
    config.model.gpt = gpt_kny.gpt_fields(vocab_size=32, n_positions=96, n_embd=32, n_layer=2,
                                          n_head=2)
    config.model.frame_tokens = 32
    config.model.n_frames_before = 2
    config.optimizer.update(lr=1e-3, init_lr=1e-4, grad_accum_steps=1)
    config.train.update(batch_size=8, num_steps=8, stop_ground_truth_after_step=4, log_every=1,
                        checkpoint_every=2, keep_checkpoints=2, sample_every=4)
    config.eval.update(every=4, num_batches=1, batch_size=8)
    config.sample.update(method="greedy", num_frames=5, num_clips=2)
    config.evaluate.update(num_clips=2, num_frames=5, seeds=(0,), batch_size=2, fvd=False,
                           i3d_batch_size=2, metrics_batch_size=8)
    return config
