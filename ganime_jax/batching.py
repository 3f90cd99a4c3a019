"""Running a jitted function over a large array in fixed-size batches."""
from typing import Any, Callable, Sequence

import numpy as np
from tqdm import tqdm


def map_in_batches(fn: Callable[..., Any], arrays: Sequence[np.ndarray], batch_size: int,
                   desc: str | None = None) -> np.ndarray:
    """`fn(index, *batches)` over consecutive batches of `batch_size` rows of `arrays`, outputs
    concatenated. The last batch is padded with copies of its last row (so that a jitted `fn`
    compiles once) and the outputs of the padding are dropped. `desc` names a progress bar."""
    count = len(arrays[0])
    size = min(batch_size, count)
    starts = range(0, count, size)
    outputs = []
    for index, start in enumerate(tqdm(starts, desc=desc, unit="batch", leave=False,
                                       disable=desc is None or len(starts) < 2)):
        batches = [array[start:start + size] for array in arrays]
        valid = len(batches[0])
        batches = [np.concatenate([b, np.repeat(b[-1:], size - valid, axis=0)])
                   for b in batches]
        outputs.append(np.asarray(fn(index, *batches))[:valid])
    return np.concatenate(outputs)
