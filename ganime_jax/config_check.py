"""Checks a config against its stage's reference config: no missing and no unknown fields.

Convention: a field whose value is None is required and unset (ml_collections placeholders);
optional features are switched off with "" or 0, never None.
"""
import difflib
from typing import Any

import ml_collections

from ganime_jax.errors import UserError

# Sections whose contents are free-form (passed through as keyword arguments of a builder).
FREE_FORM_SECTIONS = ("data.embedded",)


def flatten(config: ml_collections.ConfigDict, prefix: str = "") -> dict[str, Any]:
    """Dotted leaf paths -> values; free-form sections count as one leaf."""
    out = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        if isinstance(value, ml_collections.ConfigDict) and path not in FREE_FORM_SECTIONS:
            out.update(flatten(value, f"{path}."))
        else:
            out[path] = value
    return out


def check_fields(config: ml_collections.ConfigDict, reference: ml_collections.ConfigDict,
                 reference_name: str) -> None:
    """Raises a one-line UserError naming the first missing, unknown or unset field."""
    have, want = flatten(config), flatten(reference)
    for path in want:
        if path not in have:
            raise UserError(f"config is missing the required field `{path}`; "
                            f"see {reference_name} for a complete config.")
    for path, value in have.items():
        if path not in want:
            close = difflib.get_close_matches(path, list(want), n=1)
            hint = f" (did you mean `{close[0]}`?)" if close else ""
            raise UserError(f"config has an unknown field `{path}`{hint}.")
        if value is None:
            raise UserError(f"config field `{path}` is required but not set; pass "
                            f"--config.{path}=VALUE.")
