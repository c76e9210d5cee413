"""Training checkpoints with orbax: `WORKDIR/checkpoints/<step>/` holding three items.

  state   the training state pytree (trainable parameters, optimiser state, step, RNG key, EMA);
          the frozen Wan base is NOT stored: it is re-read from the Wan checkpoint on start-up
  data    the grain iterator state of every process, so a resumed run sees the exact next batches
  config  the run's ConfigDict as JSON

Saving is asynchronous (`save` returns after the device-to-host copy; `wait` blocks). Restoring
takes abstract targets (`jax.ShapeDtypeStruct` with shardings), so a checkpoint written on one mesh
restores onto any other mesh or device count.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import re
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath

_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")  # the same rule as trackedit_jax.cli.is_url


def storage_path(path: str | os.PathLike) -> pathlib.Path | epath.Path:
    """A local path as an absolute `pathlib.Path`; a URL (`gs://bucket/run`, ...) as an `etils.epath.Path`,
    whose `/`, `mkdir`, `exists` and `write_text` reach that storage (gs:// through gcsfs or tf.io.gfile) and
    which orbax writes to directly."""
    text = os.fspath(path)
    if _URL.match(text):
        return epath.Path(text)
    return pathlib.Path(text).absolute()


def is_remote(path: str | os.PathLike) -> bool:
    """True when `path` is a URL (see `storage_path`)."""
    return _URL.match(os.fspath(path)) is not None


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (a full disk, a file-size limit, lost storage); the earlier
    checkpoints are intact (orbax writes each step to a temporary directory and renames it when complete)."""


class Checkpointer:
    """Thin wrapper over `ocp.CheckpointManager` with the project's item layout.

    Args:
      directory: `WORKDIR/checkpoints`.
      max_to_keep: how many of the latest checkpoints to keep.
      async_save: write in a background thread.
    """

    ITEMS = ("state", "data", "config")

    def __init__(self, directory: str | os.PathLike, *, max_to_keep: int = 3, async_save: bool = True):
        self.directory = storage_path(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            enable_async_checkpointing=async_save,
            create=True,
        )
        self._mngr = ocp.CheckpointManager(self.directory, options=options, item_names=self.ITEMS)

    def latest_step(self) -> int | None:
        return self._mngr.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._mngr.all_steps())

    def save(self, step: int, state: Any, data_iterator: Any | None, config: dict, *, force: bool = False) -> bool:
        """Save `state` (pytree of jax arrays), the iterator state and the config at `step`."""
        items = {"state": ocp.args.StandardSave(state), "config": ocp.args.JsonSave(config)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        with self._write_errors():
            return self._mngr.save(step, args=ocp.args.Composite(**items), force=force)

    def restore(self, step: int, abstract_state: Any, data_iterator: Any | None = None) -> Any:
        """Restore the state onto the shardings in `abstract_state` and, if given, the iterator in place."""
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        out = self._mngr.restore(step, args=ocp.args.Composite(**items))
        return out["state"]

    def restore_config(self, step: int) -> dict:
        return self._mngr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]

    def wait(self) -> None:
        with self._write_errors():
            self._mngr.wait_until_finished()

    def close(self) -> None:
        with self._write_errors():
            self._mngr.wait_until_finished()
        self._mngr.close()

    @contextlib.contextmanager
    def _write_errors(self):
        """Turn orbax's write failures (ValueErrors wrapping tensorstore's I/O errors, raised by the save
        that started them or, when asynchronous, by the next save or wait) into one `CheckpointWriteError`."""
        try:
            yield
        except (OSError, ValueError) as e:
            steps = [s for s in self.all_steps()]
            reason = " ".join(str(e).split())
            raise CheckpointWriteError(
                f"{self.directory}: a checkpoint could not be written ({reason[-300:]}); the last complete "
                f"checkpoint is {'step ' + str(max(steps)) if steps else 'none'}"
            ) from e


def abstract_like(tree: Any, shardings: Any) -> Any:
    """`jax.ShapeDtypeStruct`s of `tree` placed on `shardings` (a matching tree), the restore target."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def read_state_numpy(checkpoint_dir: str | os.PathLike, step: int | None = None) -> tuple[int, dict]:
    """The saved training state of `step` (default: latest) as a nested dict of numpy arrays.

    Needs no model, mesh or config (shapes and dtypes come from the checkpoint's metadata): for
    inspection, tests and export.
    """
    directory = pathlib.Path(checkpoint_dir)
    steps = (
        sorted(int(p.name) for p in directory.iterdir() if p.is_dir() and p.name.isdigit())
        if directory.is_dir()
        else []
    )
    if not steps:
        raise FileNotFoundError(f"no checkpoints in {directory}")
    step = steps[-1] if step is None else int(step)
    if step not in steps:
        raise FileNotFoundError(f"no checkpoint for step {step} in {directory}; have {steps}")
    import numpy as np

    ckptr = ocp.StandardCheckpointer()
    path = directory / str(step) / "state"
    meta = ckptr.metadata(path).item_metadata
    target = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), meta)
    return step, ckptr.restore(path, target)
