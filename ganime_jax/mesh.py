"""Device mesh and shardings. Two axes: `data` (batch) and `fsdp` (parameters)."""
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ganime_jax.errors import UserError

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"

AxisRules = tuple[tuple[str, str | tuple[str, ...] | None], ...]


def axis_rules(mesh_config: ml_collections.ConfigDict) -> AxisRules:
    """`config.mesh.axis_rules` as Flax logical-axis rules: (logical axis, mesh axis, a tuple
    of mesh axes, or None) pairs. A saved config.json holds them as lists; unknown mesh axes
    are a UserError."""
    rules = []
    for rule in mesh_config.axis_rules:
        if len(rule) != 2:
            raise UserError(f"config.mesh.axis_rules entry {rule!r} is not a (logical axis, mesh "
                            "axes) pair.")
        logical, target = rule
        axes = tuple(target) if isinstance(target, (list, tuple)) else target
        for axis in (axes if isinstance(axes, tuple) else (axes,)):
            if axis not in (DATA_AXIS, FSDP_AXIS, None):
                raise UserError(f"config.mesh.axis_rules maps {logical!r} to mesh axis {axis!r}; "
                                f"the mesh axes are {DATA_AXIS!r} and {FSDP_AXIS!r} (or None).")
        rules.append((logical, axes))
    return tuple(rules)


def make_mesh(mesh_config: ml_collections.ConfigDict, devices: list | None = None) -> Mesh:
    """Builds a (data, fsdp) mesh; an axis size of -1 takes the remaining devices."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = {DATA_AXIS: mesh_config.data, FSDP_AXIS: mesh_config.fsdp}
    fixed = int(np.prod([s for s in sizes.values() if s != -1]))
    if list(sizes.values()).count(-1) > 1:
        raise UserError("config.mesh: at most one axis may be -1; set the others explicitly.")
    if len(devices) % fixed:
        raise UserError(
            f"config.mesh {sizes} does not divide the {len(devices)} available devices; "
            "choose axis sizes whose product divides the device count.")
    sizes = {k: (len(devices) // fixed if v == -1 else v) for k, v in sizes.items()}
    count = int(np.prod(list(sizes.values())))
    if count != len(devices):
        raise UserError(
            f"config.mesh {sizes} uses {count} devices but {len(devices)} are available; "
            "set one axis to -1 to use them all.")
    grid = np.asarray(devices).reshape(sizes[DATA_AXIS], sizes[FSDP_AXIS])
    return Mesh(grid, (DATA_AXIS, FSDP_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


# The batch is split over both axes: devices that share parameters (fsdp) still take their own
# slice of the data.
BATCH_AXES = (DATA_AXIS, FSDP_AXIS)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over every mesh axis."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def check_batch_size(global_batch_size: int, mesh: Mesh, name: str = "batch size") -> None:
    """`name` (the batch size's config field, say) starts the error message."""
    if global_batch_size % mesh.size:
        raise UserError(
            f"{name} {global_batch_size} is not divisible by the {mesh.size} devices of the "
            "mesh; pick a multiple of the device count.")


# A computation that runs once (a fresh train state) is compiled without XLA's backend (LLVM)
# optimisation: at demo size on CPU its threefry key derivations took 50 s to compile and
# under 10 s this way, and the values agree to float rounding (about 6e-8). At that level the
# CPU's newer fusion emitters cost more compile time than they save (the tiny VQ-GAN's train
# step: 14 s -> 9 s to compile, same run time and loss); at the default level they pay.
RUN_ONCE_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0,
                             "xla_cpu_use_fusion_emitters": False}


def run_once(fn: Callable[..., Any], *args: Any, out_shardings: Any = None) -> Any:
    """`jax.jit(fn, out_shardings=...)(*args)`, compiled with RUN_ONCE_COMPILER_OPTIONS on CPU
    (where they were measured) and with the backend's defaults elsewhere."""
    options = RUN_ONCE_COMPILER_OPTIONS if jax.default_backend() == "cpu" else None
    compiled = jax.jit(fn, out_shardings=out_shardings).lower(*args).compile(
        compiler_options=options)
    return compiled(*args)
