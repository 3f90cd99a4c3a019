"""Checks a config against its stage's reference config: no missing and no unknown fields.

Convention: a field whose value is None is required and unset (ml_collections placeholders);
optional features are switched off with "" or 0, never None.
"""
import ast
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


def _parse_like(current: Any, text: str, name: str) -> Any:
    """`text` as a value of the type of `current` (what --config.name=text would give)."""
    try:
        if isinstance(current, bool):
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError(text)
            return text.lower() in ("true", "1")
        if isinstance(current, (int, float)):
            return type(current)(text)
        if isinstance(current, (tuple, list)):
            value = ast.literal_eval(text)
            return tuple(value) if isinstance(value, (tuple, list)) else (value,)
    except (ValueError, SyntaxError):
        raise UserError(f"--config.{name}={text}: expected a value like {current!r}.") from None
    return text


def apply_overrides(config: ml_collections.ConfigDict, overrides: list[str],
                    sections: tuple[str, ...]) -> None:
    """Applies `--config.a.b=value` arguments to `config` in place; only fields that exist
    under one of `sections` (or are one of them) may be set (values parsed to the field's
    type)."""
    fields = flatten(config)
    for argument in overrides:
        name, _, text = argument.removeprefix("--config.").partition("=")
        if name not in sections and not name.startswith(
                tuple(f"{section}." for section in sections)):
            raise UserError(f"--config.{name} cannot be set here: only fields of "
                            f"{', '.join(sections)} can.")
        if name not in fields:
            close = difflib.get_close_matches(name, list(fields), n=1)
            hint = f" (did you mean `{close[0]}`?)" if close else ""
            raise UserError(f"--config.{name}: no such field{hint}.")
        config.update_from_flattened_dict({name: _parse_like(fields[name], text, name)})
