"""From a training run to the inference directory: `restore_trained` and `export_run` (`trackedit export`).

The trained parameters come from `WORKDIR/checkpoints/<step>/state` (the latest step unless one is
given; the EMA copy with `ema=True`). Everything else is rebuilt exactly as `train.loop.train` builds
it, so the exported model computes the same function as the model the run trained:

* the frozen part of the edit model (the Wan base in LoRA mode) is re-created by the same jitted
  initialiser with the run's `train.seed`, then overwritten from `init.wan_path` when the run had one
  (random-base presets such as `tiny_cpu` therefore get their deterministic random base back);
* the VAE is `build.build_vae(config)`: `init.vae_path`, or the fixed-seed tiny VAE.

LoRA adapters are merged into the kernels by `save_pretrained` (via `export_wan_transformer`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import time
from typing import Any

import jax
import numpy as np
from flax import nnx


@dataclasses.dataclass
class TrainedModel:
    """A run's model as trained: config (ConfigDict), model (EditByTrack), vae (WanVAE), the step restored
    and whether the parameters are the EMA copy."""

    config: Any
    model: Any
    vae: Any
    step: int
    ema: bool


def run_config(workdir: pathlib.Path, step: int):
    """The config saved with checkpoint `step` (the run's config.json if that item is unreadable)."""
    from ml_collections import ConfigDict

    from trackedit_jax.configuration import config_from_json

    item = workdir / "checkpoints" / str(step) / "config" / "metadata"
    if item.is_file():  # the orbax JsonSave item: the config as the run had it at that step
        import json

        try:
            return ConfigDict(json.loads(item.read_text()))
        except (ValueError, TypeError):
            pass
    path = workdir / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{workdir}: no config.json and no readable config in checkpoint {step}")
    return config_from_json(path)


def _lookup(tree: Any, path: tuple, where: str) -> np.ndarray:
    node = tree
    for part in path:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, dict) and str(part) in node:
            node = node[str(part)]
        elif isinstance(node, (list, tuple)) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            raise ValueError(f"{where}: the checkpoint has no parameter {'/'.join(map(str, path))}")
    if isinstance(node, dict) and "value" in node:  # nnx.Variable serialised by orbax
        node = node["value"]
    return np.asarray(node)


def _fill_state(abstract: nnx.State, tree: Any, where: str) -> nnx.State:
    """Replace every leaf of `abstract` (an nnx.State) by the checkpoint array at the same path."""
    out = []
    for path, var in nnx.to_flat_state(abstract):
        arr = _lookup(tree, path, where)
        want = tuple(var.shape)
        if tuple(arr.shape) != want:
            raise ValueError(f"{where}: {'/'.join(map(str, path))} has shape {arr.shape}; the model expects {want}")
        out.append((path, var.replace(jax.numpy.asarray(arr, dtype=var.dtype))))
    return nnx.from_flat_state(out)


def restore_trained(
    workdir: str | os.PathLike,
    *,
    step: int | None = None,
    ema: bool = False,
    wan_path: str | None = None,
    vae_path: str | None = None,
) -> TrainedModel:
    """Rebuild a run's model with its trained parameters (module docstring).

    Args:
      workdir: the run directory (`trackedit train --workdir`).
      step: checkpoint step; default the latest.
      ema: use the EMA parameters (the run must have `train.ema_decay > 0`).
      wan_path, vae_path: override `init.wan_path` / `init.vae_path` (e.g. the run was trained elsewhere).
    Raises:
      FileNotFoundError (no run, no checkpoints, no such step, Wan weights missing), ValueError
      (no EMA in the run, checkpoint does not fit the config).
    """
    from trackedit_jax.train import build
    from trackedit_jax.train.checkpointing import read_state_numpy
    from trackedit_jax.train.loop import _load_base

    workdir = pathlib.Path(workdir)
    if not workdir.is_dir():
        raise FileNotFoundError(f"run directory not found: {workdir}")
    ckdir = workdir / "checkpoints"
    if not ckdir.is_dir():
        raise FileNotFoundError(f"{workdir}: no checkpoints/ folder (is this a `trackedit train` workdir?)")
    step, state = read_state_numpy(ckdir, step)
    config = run_config(workdir, step)
    if wan_path is not None:
        config.init.wan_path = str(wan_path)
    if vae_path is not None:
        config.init.vae_path = str(vae_path)
    for field in ("wan_path", "vae_path"):
        p = config.init[field]
        if p and not pathlib.Path(p).exists():
            raise FileNotFoundError(
                f"init.{field}: {p} does not exist (the run's frozen weights); pass --{field.replace('_', '-')} PATH"
            )
    where = f"{ckdir / str(step)}"
    tree = state.get("ema") if ema else state["params"]
    if ema and not tree:
        raise ValueError(f"--ema: checkpoint {where} holds no EMA parameters (the run had train.ema_decay = 0)")

    # Built as train.loop.train builds it: same seed, same jitted initialiser, same base loading.
    seed = int(config.train.seed)
    trainable = build.trainable(config)
    abstract = nnx.eval_shape(lambda: build.build_edit_model(config, seed=seed))
    graphdef, abs_params, _ = nnx.split(abstract, trainable, ...)

    def _init():
        _, p, f = nnx.split(build.build_edit_model(config, seed=seed), trainable, ...)
        return p, f

    _, frozen = jax.jit(_init)()
    params = _fill_state(abs_params, tree, where)
    model = nnx.merge(graphdef, params, frozen)
    if config.init.wan_path:
        _load_base(model, config, None)
    vae = build.build_vae(config)
    return TrainedModel(config=config, model=model, vae=vae, step=int(step), ema=bool(ema))


def export_run(
    workdir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    step: int | None = None,
    ema: bool = False,
    text_encoder=None,
    tokenizer=None,
    wan_path: str | None = None,
    vae_path: str | None = None,
    sample_shift: float | None = None,
    sample_steps: int | None = None,
    overwrite: bool = False,
) -> tuple[pathlib.Path, TrainedModel]:
    """`restore_trained` then `save_pretrained(out_dir, ...)`; returns (out_dir, the restored model).

    sample_shift, sample_steps: the sampler's default timestep shift and step count to record (default:
    the run's `diffusion.sample_shift` / `sample_steps`); sampling choices made after training, on
    validation pairs."""
    from trackedit_jax import __version__
    from trackedit_jax.infer.pretrained import PretrainedConfig, save_pretrained

    out_dir = pathlib.Path(out_dir)
    if sample_shift is not None and not (math.isfinite(sample_shift) and sample_shift > 0):
        raise ValueError(f"sample_shift must be a positive number; got {sample_shift}")
    if sample_steps is not None and not (isinstance(sample_steps, int) and sample_steps >= 1):
        raise ValueError(f"sample_steps must be a positive int; got {sample_steps!r}")
    if out_dir.exists() and not overwrite:  # before the (slow) restore
        raise FileExistsError(f"{out_dir} exists; pass --overwrite to replace it")
    trained = restore_trained(workdir, step=step, ema=ema, wan_path=wan_path, vae_path=vae_path)
    source = {
        "workdir": str(pathlib.Path(workdir).absolute()),
        "step": trained.step,
        "ema": trained.ema,
        "lora": str(trained.config.lora.mode),
        "exported_by": f"trackedit_jax {__version__}",
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    config = PretrainedConfig.from_train_config(trained.config, source=source)
    if sample_shift is not None:
        config = dataclasses.replace(config, sample_shift=float(sample_shift))
    if sample_steps is not None:
        config = dataclasses.replace(config, sample_steps=int(sample_steps))
    save_pretrained(out_dir, config, trained.model, trained.vae, text_encoder, tokenizer, overwrite=overwrite)
    return out_dir, trained
