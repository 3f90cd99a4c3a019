"""What the benchmarks say about the CPU they ran on, from /proc/cpuinfo."""
import os
import pathlib
from typing import Any

# Vector extensions that change what XLA and PyTorch can use on x86.
EXTENSIONS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")


def _fields() -> dict[str, str]:
    """The first processor's "key: value" lines ({} where there is no /proc/cpuinfo)."""
    try:
        text = pathlib.Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in fields:
            fields[key.strip()] = value.strip()
    return fields


def cpu_name() -> str:
    """The CPU model ("" where it is not known)."""
    return _fields().get("model name", "")


def cpu_description() -> dict[str, Any]:
    """Model name, core count and which of EXTENSIONS the CPU has."""
    fields = _fields()
    flags = set(fields.get("flags", "").split())
    return {"model_name": fields.get("model name", ""), "cpu_count": os.cpu_count(),
            "extensions": [name for name in EXTENSIONS if name in flags]}
