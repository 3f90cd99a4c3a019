"""Writing outputs safely: checks, made before any long work starts, that an output place can
be written, and folders that appear whole or not at all.

A folder that does not exist yet is judged by its nearest existing ancestor, which must be a
folder (not a file) in which a file can actually be created: a probe file is made and removed
there, which also catches read-only file systems and places like /proc where permission bits
say yes.
"""
import contextlib
import os
import pathlib
import shutil
import tempfile
import uuid
from typing import Iterator

from ganime_jax.errors import UserError


def _nearest_existing(path: pathlib.Path) -> pathlib.Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_folder(path: str | os.PathLike, what: str) -> None:
    """`path` is a folder that exists or can be made, and that files can be written into.

    `what` names the setting in the message (e.g. "--workdir").
    """
    path = pathlib.Path(path).absolute()
    if path.exists() and not path.is_dir():
        raise UserError(f"{what} {path} is a file, not a folder; pass a folder path.")
    existing = _nearest_existing(path)
    if not existing.is_dir():
        raise UserError(f"{what} {path} lies under {existing}, which is a file; pass a path "
                        "under a folder.")
    try:
        with tempfile.TemporaryFile(dir=existing, prefix=".write_probe."):
            pass
    except OSError as error:
        raise UserError(f"{what} {path} cannot be written ({existing}: {error.strerror}); pass "
                        "a folder you can write to.") from None


def check_file(path: str | os.PathLike, what: str) -> None:
    """`path` can be written as a file: not an existing folder, in a folder `check_folder`
    accepts."""
    path = pathlib.Path(path).absolute()
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder; name the file to write in it, e.g. "
                        f"{path / 'clip.mp4'}.")
    check_folder(path.parent, f"the folder of {what}")


@contextlib.contextmanager
def staged_folder(out: pathlib.Path) -> Iterator[pathlib.Path]:
    """A fresh folder beside `out` to write into, renamed to `out` when the block succeeds and
    removed when it fails. An old `out` is removed only once the new one is in place, and
    leftovers of an interrupted earlier run are removed first."""
    out.parent.mkdir(parents=True, exist_ok=True)
    for kind in ("tmp", "old"):
        for leftover in out.parent.glob(f".{out.name}.{kind}-*"):
            shutil.rmtree(leftover, ignore_errors=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield staging
        if out.exists():
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex}"
            out.rename(old)
            staging.rename(out)
            shutil.rmtree(old)
        else:
            staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
