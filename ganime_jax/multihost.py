"""Several JAX processes as one run: start-up, and the barrier behind work only one process does.

`initialize` joins the processes of a run (`main.py --multihost`). Where a cluster manager
started them (TPU pod slices, SLURM, Open MPI's `mpirun`), JAX finds the coordinator, the
process count and this process's id itself; elsewhere (processes started by hand) give all
three, as arguments or as the environment variables `JAX_COORDINATOR_ADDRESS`,
`JAX_NUM_PROCESSES` and `JAX_PROCESS_ID`. CPU processes talk through gloo.
"""
import os

import jax
import numpy as np
from jax.experimental import multihost_utils

from ganime_jax.errors import UserError

ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"
CPU_COLLECTIVES = "gloo"


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise UserError(f"${name}={value!r} is not an integer.") from None


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
    """Joins this process to the run; arguments left None come from the environment, then from
    the cluster manager's. Call before anything touches a JAX device."""
    coordinator_address = coordinator_address or os.environ.get(ENV_COORDINATOR) or None
    num_processes = num_processes if num_processes is not None else _env_int(ENV_NUM_PROCESSES)
    process_id = process_id if process_id is not None else _env_int(ENV_PROCESS_ID)
    if num_processes is not None and num_processes < 1:
        raise UserError(f"the process count must be at least 1, got {num_processes}.")
    if process_id is not None and num_processes is not None and not 0 <= process_id < num_processes:
        raise UserError(f"the process id must be in [0, {num_processes}), got {process_id}.")
    # Selects the CPU backend's collectives only; accelerators keep their own.
    jax.config.update("jax_cpu_collectives_implementation", CPU_COLLECTIVES)
    try:
        jax.distributed.initialize(coordinator_address=coordinator_address,
                                   num_processes=num_processes, process_id=process_id)
    except (ValueError, TypeError, RuntimeError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        raise UserError(
            f"--multihost could not join the run ({first_line}); outside a cluster manager "
            "(TPU pod, SLURM, mpirun) give --coordinator_address=HOST:PORT, --num_processes "
            "and --process_id (or $JAX_COORDINATOR_ADDRESS, $JAX_NUM_PROCESSES, "
            "$JAX_PROCESS_ID).") from None


def is_main_process() -> bool:
    """Process 0 builds shared datasets and writes logs and metadata."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Every process waits here until all have arrived (a no-op for one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def allgather_texts(text: str) -> list[str]:
    """Every process's `text`, in process order, on every process (a collective: all call it)."""
    if jax.process_count() == 1:
        return [text]
    data = np.frombuffer(text.encode(), np.uint8)
    lengths = np.asarray(multihost_utils.process_allgather(np.array([data.size], np.int64)))
    padded = np.zeros((int(lengths.max()),), np.uint8)
    padded[:data.size] = data
    rows = np.asarray(multihost_utils.process_allgather(padded))
    return [bytes(row[:int(n)]).decode() for row, n in zip(rows, lengths.reshape(-1))]
