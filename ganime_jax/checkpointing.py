"""Orbax checkpoints of the train state, the data iterator state and the config.

Every checkpoint step holds three items: `state` (the whole train state, restored straight
into its shardings), `data` (the Grain iterator state of the last batch the step consumed, so
a resumed run sees exactly the batches an uninterrupted run would have seen) and `config`.
Orbax writes each step under a temporary name and renames it when complete, so a run killed at
any moment leaves only whole checkpoints behind.
"""
import contextlib
import json
import pathlib
from collections.abc import Iterator
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

from ganime_jax import multihost
from ganime_jax.data import pipeline
from ganime_jax.errors import UserError

STATE_ITEM = "state"
DATA_ITEM = "data"
CONFIG_ITEM = "config"
CONFIG_FILENAME = "config.json"

# What Orbax and TensorStore raise on a truncated, missing or garbled checkpoint file.
DAMAGE_ERRORS = (ValueError, OSError, KeyError)
DAMAGE_DETAIL_CHARS = 200  # of the underlying error, in the one-line message

# Config sections that fix the shape of the saved state: resuming with others is an error.
ARCHITECTURE_SECTIONS = ("model", "discriminator", "gpt")
# Architecture fields added after checkpoints had been written, with the value those older
# checkpoints (whose saved configs lack the field) were trained with.
LATER_FIELDS = {"model.patch_size": 1, "model.norm_eps": 1e-6,
                "model.downsample": "strided_conv", "model.upsample": "nearest_conv",
                "model.scaled_attention": True, "model.attention_placement": "taming",
                "model.relative_position_bias": False, "model.codebook_embedding_share": 0.0,
                "model.token_order": "parallel"}
# Fields that shape the state only while another (boolean) field is on: compared only when it
# is on in both configs (where it differs, that field's own comparison names it).
DEPENDENT_FIELDS = {"model.grid_width": "model.relative_position_bias"}


def checkpoint_dir(workdir: str | pathlib.Path) -> pathlib.Path:
    return pathlib.Path(workdir).absolute() / "checkpoints"


def make_manager(workdir: str | pathlib.Path, *, every: int, keep: int,
                 async_save: bool = True) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=every, max_to_keep=keep, create=True,
        cleanup_tmp_directories=True, enable_async_checkpointing=async_save)
    return ocp.CheckpointManager(
        checkpoint_dir(workdir), options=options,
        item_names=(STATE_ITEM, DATA_ITEM, CONFIG_ITEM))


def this_process_only() -> ocp.options.MultiprocessingOptions:
    """Orbax options for a manager that only this process uses (no barriers with the others)."""
    index = jax.process_index()
    return ocp.options.MultiprocessingOptions(primary_host=index, active_processes={index})


def save(manager: ocp.CheckpointManager, step: int, state: Any, data_state: bytes | None,
         config: ml_collections.ConfigDict, *, force: bool = False) -> bool:
    """Saves one step (asynchronously when the manager allows); returns whether it saved.

    Every process calls it; the data item holds every process's loader position
    ("iterators", in process order), gathered when the step is saved.
    """
    if not (force or manager.should_save(step)):
        return False
    iterators = (None if data_state is None
                 else multihost.allgather_texts(data_state.decode()))
    data = {"iterators": iterators}
    return manager.save(step, args=ocp.args.Composite(**{
        STATE_ITEM: ocp.args.StandardSave(state),
        DATA_ITEM: ocp.args.JsonSave(data),
        CONFIG_ITEM: ocp.args.JsonSave(config.to_dict()),
    }), force=force)


def _damage(error: BaseException) -> BaseException | None:
    """The DAMAGE_ERRORS in `error`'s chain of causes: Orbax re-raises a failed read of an
    array as a bare Exception whose cause is TensorStore's ValueError."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, DAMAGE_ERRORS):
            return error
        seen.add(id(error))
        error = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
    return None


@contextlib.contextmanager
def reading(manager: ocp.CheckpointManager, step: int) -> Iterator[None]:
    """Wrap reads of checkpoint `step`: a damaged checkpoint becomes one line naming it."""
    try:
        yield
    except Exception as error:  # noqa: BLE001 (narrowed by _damage; anything else re-raised)
        damage = None if isinstance(error, UserError) else _damage(error)
        if damage is None:
            raise
        detail = (str(damage).strip().splitlines() or [""])[0][:DAMAGE_DETAIL_CHARS]
        raise UserError(
            f"the checkpoint {pathlib.Path(manager.directory) / str(step)} is damaged or "
            f"unreadable ({type(damage).__name__}: {detail}); restore it from a copy, export "
            "the bundle again, or delete that step's folder to use an earlier checkpoint."
        ) from None


def restore_latest(manager: ocp.CheckpointManager, abstract_state: Any,
                   config: ml_collections.ConfigDict) -> tuple[Any, bytes | None, int] | None:
    """Restores the newest checkpoint into `abstract_state`'s shapes and shardings.

    Returns (state, this process's data iterator state, step), or None when the workdir has no
    checkpoint. A checkpoint written by another number of processes restores too (see
    `pipeline.data_state_for_this_process`).
    """
    step = manager.latest_step()
    if step is None:
        return None
    with reading(manager, step):
        saved_config = manager.restore(step, args=ocp.args.Composite(
            **{CONFIG_ITEM: ocp.args.JsonRestore()}))[CONFIG_ITEM]
    check_same_architecture(saved_config, config.to_dict(), manager.directory)
    with reading(manager, step):
        restored = manager.restore(step, args=ocp.args.Composite(**{
            STATE_ITEM: ocp.args.StandardRestore(abstract_state),
            DATA_ITEM: ocp.args.JsonRestore(),
        }))
    data = restored[DATA_ITEM]
    # checkpoints written before the data item held one position per process: one process
    iterators = data["iterators"] if "iterators" in data else [data["iterator"]]
    if iterators is None or iterators[0] is None:
        return restored[STATE_ITEM], None, step
    iterator = pipeline.data_state_for_this_process(iterators, config.train.batch_size)
    return restored[STATE_ITEM], iterator.encode(), step


def write_params_checkpoint(workdir: str | pathlib.Path, step: int, state: dict,
                            config: ml_collections.ConfigDict) -> None:
    """A workdir for inference: one checkpoint holding `state` (parameters only) and `config`,
    no data item, plus config.json. The loaders of sampling and tokenizing read it as they
    read a training run's."""
    manager = ocp.CheckpointManager(
        checkpoint_dir(workdir),
        options=ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False),
        item_names=(STATE_ITEM, CONFIG_ITEM))
    manager.save(step, args=ocp.args.Composite(**{
        STATE_ITEM: ocp.args.StandardSave(state),
        CONFIG_ITEM: ocp.args.JsonSave(config.to_dict())}), force=True)
    manager.wait_until_finished()
    manager.close()
    write_config(workdir, config)


def check_same_architecture(saved: dict, current: dict, where: Any) -> None:
    """Raises a one-line error naming the first architecture field that differs."""
    def value(config: dict, field: str) -> Any:
        section, key = field.split(".", 1)
        return config.get(section, {}).get(key, LATER_FIELDS.get(field))

    for section in ARCHITECTURE_SECTIONS:
        old, new = saved.get(section, {}), current.get(section, {})
        for key in sorted(set(old) | set(new)):
            field = f"{section}.{key}"
            switch = DEPENDENT_FIELDS.get(field)
            if switch and not (value(saved, switch) and value(current, switch)):
                continue
            before = value(saved, field)
            if _normalise(before) != _normalise(new.get(key)):
                raise UserError(
                    f"the checkpoint in {where} was trained with {section}.{key}="
                    f"{before!r} but the config says {new.get(key)!r}; use another "
                    "--workdir or the config the checkpoint was trained with.")


def _normalise(value: Any) -> Any:
    return json.loads(json.dumps(value))


def abstract_with_shardings(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs carrying shardings: the restore target for `StandardRestore`."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def write_config(workdir: str | pathlib.Path, config: ml_collections.ConfigDict) -> None:
    """Writes the run's config beside its checkpoints (atomically, process 0 only)."""
    if not multihost.is_main_process():
        return
    path = pathlib.Path(workdir) / CONFIG_FILENAME
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(config.to_json(indent=2))
    tmp.replace(path)


def read_config_file(path: pathlib.Path, what: str, hint: str = "") -> ml_collections.ConfigDict:
    """A config.json as `write_config` writes it (a run's, or a bundle's); one error line naming
    `what`, then `hint`, if it cannot be read."""
    try:
        return ml_collections.ConfigDict(json.loads(path.read_text()))
    except (OSError, ValueError) as error:
        raise UserError(f"cannot read {what} {path}: {error}{hint}") from None


@contextlib.contextmanager
def newest(workdir: str | pathlib.Path, what: str, hint: str, *,
           this_process: bool = True) -> Iterator[tuple[ocp.CheckpointManager, int]]:
    """Opens the newest complete checkpoint of `workdir` read-only: yields (manager, step).

    Every item can be read from the manager (`saved_config`, `restore_params`). No checkpoint
    is one error line: "no `what` checkpoint in `workdir`; `hint`". `this_process=False` for a
    read that all processes of a run make together (arrays restored onto a mesh that spans
    them).
    """
    directory = checkpoint_dir(workdir)
    if not directory.is_dir():
        raise UserError(f"no {what} checkpoint in {workdir}; {hint}")
    options = ocp.CheckpointManagerOptions(
        create=False, multiprocessing_options=(
            this_process_only() if this_process else ocp.options.MultiprocessingOptions()))
    manager = ocp.CheckpointManager(directory, options=options, item_handlers={
        STATE_ITEM: ocp.PyTreeCheckpointHandler(), DATA_ITEM: ocp.JsonCheckpointHandler(),
        CONFIG_ITEM: ocp.JsonCheckpointHandler()})
    try:
        step = manager.latest_step()
        if step is None:
            raise UserError(f"{directory} holds no complete checkpoint; {hint}")
        yield manager, step
    finally:
        manager.close()


def saved_config(manager: ocp.CheckpointManager, step: int) -> dict:
    """The config saved with checkpoint `step`."""
    with reading(manager, step):
        return manager.restore(step, args=ocp.args.Composite(**{
            CONFIG_ITEM: ocp.args.JsonRestore()}))[CONFIG_ITEM]


def restore_params(manager: ocp.CheckpointManager, step: int, field: str, abstract: Any,
                   sharding: jax.sharding.Sharding) -> Any:
    """`state[field]` of checkpoint `step` alone (a partial restore: the rest of the train state
    stays on disk), shaped like `abstract`, every array placed with `sharding`."""
    restore_args = jax.tree.map(
        lambda x: ocp.ArrayRestoreArgs(sharding=sharding, global_shape=x.shape, dtype=x.dtype),
        abstract)
    with reading(manager, step):
        restored = manager.restore(step, args=ocp.args.Composite(**{
            STATE_ITEM: ocp.args.PyTreeRestore(item={field: abstract},
                                               restore_args={field: restore_args},
                                               partial_restore=True)}))
    return restored[STATE_ITEM][field]


def read_config(workdir: str | pathlib.Path) -> ml_collections.ConfigDict:
    """The config saved with the newest checkpoint of `workdir`."""
    with newest(workdir, "trained", "give the workdir of a trained run.") as (manager, step):
        return ml_collections.ConfigDict(saved_config(manager, step))
