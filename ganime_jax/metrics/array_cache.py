"""Float32 arrays stored on disk under a JSON key: what an evaluation computed once and may reuse.

An entry's key is a JSON object with a "kind" (it names the file) and every value that changes
the array: versions, options, and the content hash of the inputs (`content_sha256`), so that a
changed input is never served stale. The file name carries a hash of the key and the file
stores the key itself, which is checked on load. Writes go to a temporary file that is then
renamed (a killed run leaves no half-written entry; its temporary is removed by the next save);
nothing is pickled.
"""
import dataclasses
import glob
import hashlib
import json
import os
import tempfile
from typing import Any, Callable

import numpy as np

from ganime_jax.errors import UserError

_TEMPORARY_SUFFIX = ".tmp"


def content_sha256(array: np.ndarray) -> str:
    """Hash of an array's shape, dtype and bytes."""
    array = np.ascontiguousarray(array)
    digest = hashlib.sha256(f"{array.shape}{array.dtype.str}".encode())
    digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


def cache_key(kind: str, **fields: Any) -> dict[str, Any]:
    """A key: `kind` plus JSON-ready fields (str, int, float, bool, lists of them)."""
    key = {"kind": kind, **fields}
    try:
        json.dumps(key)
    except TypeError as e:
        raise UserError(f"array cache keys must be JSON values (str, int, float, bool): {e}"
                        ) from e
    return key


@dataclasses.dataclass(frozen=True)
class ArrayCache:
    """Arrays as npz files under `directory`, one per key."""

    directory: str

    def path(self, key: dict[str, Any]) -> str:
        canonical = json.dumps(key, sort_keys=True)
        digest = hashlib.sha256(canonical.encode()).hexdigest()[:16]
        kind = "".join(c if c.isalnum() or c in "-_" else "-" for c in str(key["kind"]))
        return os.path.join(self.directory, f"{kind}_{digest}.npz")

    def load(self, key: dict[str, Any]) -> np.ndarray | None:
        """The cached array for `key`, or None when there is no entry."""
        path = self.path(key)
        if not os.path.exists(path):
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                stored_key, array = json.loads(str(data["key"])), data["array"]
        except (OSError, ValueError, KeyError) as e:
            raise UserError(f"unreadable cache file {path} ({e}): delete it") from e
        if stored_key != json.loads(json.dumps(key)):
            raise UserError(f"cache file {path} holds another key: delete it")
        return array

    def save(self, key: dict[str, Any], array: np.ndarray) -> str:
        array = np.asarray(array, np.float32)
        if not np.all(np.isfinite(array)):
            raise UserError(f"refusing to cache a {key['kind']} array with NaN or inf values")
        os.makedirs(self.directory, exist_ok=True)
        for stale in glob.glob(os.path.join(self.directory, "*" + _TEMPORARY_SUFFIX)):
            os.remove(stale)
        path = self.path(key)
        fd, tmp = tempfile.mkstemp(dir=self.directory, suffix=_TEMPORARY_SUFFIX)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, array=array, key=np.array(json.dumps(key, sort_keys=True)))
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
        return path

    def get_or_compute(self, key: dict[str, Any],
                       compute: Callable[[], np.ndarray]) -> np.ndarray:
        array = self.load(key)
        if array is None:
            array = np.asarray(compute(), np.float32)
            self.save(key, array)
        return array
