"""Stage-3 configs on the tiny dataset and tokenizer, for the refiner tests."""
import ml_collections

from configs import vqgan_tiny


def tiny_refiner_config(config: ml_collections.ConfigDict, data_root: str,
                        tokenizer_workdir: str, num_steps: int, *, min_frames: int,
                        max_frames: int) -> ml_collections.ConfigDict:
    """`config` (a refiner config) on the tiny data: two levels of 4 and 8 channels, batches of
    8, checkpoints and held-out figures (the test split) every 2 steps."""
    config.tokenizer.workdir = tokenizer_workdir
    tiny = vqgan_tiny.get_config().data
    config.data.update(dataset=tiny.dataset, height=tiny.height, width=tiny.width,
                       data_root=data_root, read_threads=0, max_frames=max_frames,
                       min_frames=min_frames)
    config.data.embedded = tiny.embedded
    config.model.widths = (4, 8)
    config.train.update(batch_size=8, num_steps=num_steps, log_every=1, checkpoint_every=2)
    config.eval.update(every=2, batch_size=8, num_batches=1, split="test")
    return config
