"""The training loop: `train(config, workdir)`.

Start-up (before anything compiles): validate the config, build the mesh, (generate synthetic data
for presets that allow it), build the `TrainingSetup` (the model abstractly, every sharding from the
logical axis names). Then: initialise or restore (exact resume from `WORKDIR/checkpoints`, or stage 2
from `init_from`), take the setup's jitted step (explicit in/out shardings, donation), and run with a
progress bar, metrics (TensorBoard + JSONL), periodic validation, periodic checkpoints and a final
checkpoint on SIGTERM or at the end, plus a loss-curve PNG.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import signal
import tempfile
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from ml_collections import ConfigDict

from trackedit_jax.parallel.mesh import make_mesh
from trackedit_jax.parallel.sharding import batch_sharding
from trackedit_jax.train import build
from trackedit_jax.train.checkpointing import Checkpointer, abstract_like, is_remote, storage_path
from trackedit_jax.train.flops import train_step_flops
from trackedit_jax.train.metrics import MetricsWriter, plot_loss_curve
from trackedit_jax.train.setup import TrainingSetup
from trackedit_jax.train.step import TrainState, init_train_state
from trackedit_jax.train.throughput import StepWindow, measure_peak_flops
from trackedit_jax.train.workdir_lock import WorkdirLock


@dataclasses.dataclass
class TrainResult:
    """What `train` returns: the final step, the last logged metrics and where things were written."""

    step: int
    metrics: dict
    workdir: pathlib.Path
    interrupted: bool = False


class _Preemption:
    """Turns SIGTERM into a flag the loop polls at step boundaries (save, then exit cleanly)."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _is_main() -> bool:
    return jax.process_index() == 0


def _global_flag(flag: bool) -> bool:
    """True on every process if any process has `flag` set (so all stop at the same step)."""
    if jax.process_count() == 1:
        return flag
    return bool(multihost_utils.process_allgather(np.asarray([flag], np.int32)).max())


def local_dir(workdir: str | pathlib.Path) -> pathlib.Path:
    """Where this process writes what must be local files (generated shards, metrics, the loss curve):
    `workdir` itself, or for a URL workdir a folder under the temp directory named after it (metrics
    and the loss curve are copied to the URL at the end)."""
    if not is_remote(workdir):
        return storage_path(workdir)
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(workdir))
    return pathlib.Path(tempfile.gettempdir()) / "trackedit_runs" / name


def prepare_data(config: ConfigDict, workdir: pathlib.Path, *, every_process: bool = False) -> tuple[str, str]:
    """Training and validation shard paths; generates synthetic sets when the preset asks for them (into
    `workdir` by process 0, or by every process into its own local `workdir` with `every_process`; the
    generator is seeded, so the copies are identical)."""
    from data_pipeline.synthetic import make_dataset

    train_path, val_path = config.data.train_path, config.data.val_path
    if train_path:
        return train_path, val_path
    d = config.data
    gen_train = workdir / "data" / "train"
    gen_val = workdir / "data" / "val"
    if _is_main() or every_process:
        for out, n, seed in (
            (gen_train, d.synthetic_pairs, config.train.seed),
            (gen_val, min(64, max(2, d.synthetic_pairs // 8)), config.train.seed + 10_000),
        ):
            if not (out / "manifest.json").exists():
                make_dataset(
                    out,
                    num_pairs=int(n),
                    num_frames=int(d.num_frames),
                    size=(int(d.height), int(d.width)),
                    seed=int(seed),
                    workers=int(d.get("synthetic_workers", 1)),
                    with_warp=build.warp_prior(config),
                )
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("trackedit:synthetic-data")
    return str(gen_train), str(val_path or gen_val)


def make_iterator(config: ConfigDict, path: str, *, seed: int, repeat: bool = True):
    """This process's share of the global batches from the shards at `path` (a grain iterator)."""
    from data_pipeline.loader import LoaderConfig
    from data_pipeline.loader import make_iterator as make_grain_iterator

    loader_cfg = LoaderConfig.from_config(
        config.data,
        batch_size=config.train.batch_size // jax.process_count(),
        seed=seed,
        shuffle=True,
        repeat=repeat,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        with_warp=build.warp_prior(config),
        with_coverage=build.warp_coverage(config),
    )
    return make_grain_iterator(path, loader_cfg)


def data_fingerprint(batch: dict) -> int:
    """CRC32 over every array of this process's batch (keys sorted): proves resumed runs see the same data."""
    import zlib

    crc = 0
    for k in sorted(batch):
        crc = zlib.crc32(np.ascontiguousarray(batch[k]).tobytes(), zlib.crc32(k.encode(), crc))
    return crc


def _to_global(batch: dict, mesh) -> dict:
    """Process-local numpy batch -> global jax arrays split over (data, fsdp)."""
    return {
        k: jax.make_array_from_process_local_data(batch_sharding(mesh, np.ndim(v)), np.asarray(v))
        for k, v in batch.items()
        if isinstance(v, np.ndarray) and v.dtype != object
    }


def _load_base(model, config: ConfigDict, mesh) -> None:
    """Overwrite the backbone's pretrained parameters with the Wan checkpoint at `init.wan_path`."""
    from trackedit_jax.convert.wan_transformer import load_wan_transformer

    base_cfg = build.wan_config(config).replace(lora_rank=0)
    base = load_wan_transformer(config.init.wan_path, config=base_cfg, mesh=mesh)
    base_state = nnx.state(base, nnx.Not(nnx.LoRAParam))
    target = nnx.state(model.dit, nnx.Not(nnx.LoRAParam))
    placed = jax.tree.map(lambda new, old: jax.device_put(new.astype(old.dtype), old.sharding), base_state, target)
    nnx.update(model.dit, placed)


def train(config: ConfigDict, workdir: str | pathlib.Path, *, max_steps: int | None = None) -> TrainResult:
    """Run (or resume) training as configured; returns when `train.num_steps` (or `max_steps` more
    steps in this call, a testing aid) are done or on SIGTERM.

    The main process holds the lock of a local `workdir` (`WorkdirLock`) throughout: a second run on the
    same directory raises `WorkdirBusyError` while this one lives (a killed run's lock is free).
    """
    local = "://" not in str(workdir)  # object stores (gs://...) have no file locks
    lock = WorkdirLock(pathlib.Path(workdir).absolute()) if local and _is_main() else None
    try:
        return _train(config, workdir, max_steps=max_steps)
    finally:
        if lock is not None:
            lock.release()


def _train(config: ConfigDict, workdir: str | pathlib.Path, *, max_steps: int | None = None) -> TrainResult:
    remote = is_remote(workdir)
    workdir, files = storage_path(workdir), local_dir(workdir)
    build.validate_config(config)
    mesh = make_mesh(dict(config.mesh))
    if _is_main():
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
    train_path, val_path = prepare_data(config, files, every_process=remote)
    seed = int(config.train.seed)

    setup = TrainingSetup.create(config, mesh)
    params, frozen = setup.init_params()
    if config.init.wan_path:
        model = nnx.merge(setup.graphdef, params, frozen)
        _load_base(model, config, mesh)
        _, params, frozen = nnx.split(model, setup.trainable, ...)
        del model
    vae = build.build_vae(config)
    vae_graphdef, vae_state = nnx.split(vae)
    vae_state = jax.device_put(vae_state, setup.replicated)
    tx, abs_state, state_sh, use_ema = setup.tx, setup.abs_state, setup.state_sh, setup.use_ema

    # --- data and checkpoints ----------------------------------------------------------------------
    train_iter = make_iterator(config, train_path, seed=seed)
    ckpt = Checkpointer(
        workdir / "checkpoints", max_to_keep=config.checkpoint.max_to_keep, async_save=config.checkpoint.async_save
    )
    latest = ckpt.latest_step()
    if latest is not None:
        state = ckpt.restore(latest, abstract_like(abs_state, state_sh), train_iter)
        resumed_from = f"resumed from step {latest}"
    else:
        state = jax.jit(lambda p: init_train_state(p, tx, seed, use_ema), out_shardings=state_sh)(params)
        resumed_from = "fresh start"
        if config.init_from:
            state = dataclasses.replace(state, params=_params_from_run(config.init_from, abs_state, state_sh))
            resumed_from = f"initialised from {config.init_from}"
    del params

    jit_step = setup.jit_step(vae_graphdef)
    eval_fn = setup.jit_eval(vae_graphdef)

    flops_per_step = train_step_flops(
        build.wan_config(config),
        latent_shape=build.latent_grid(config),
        text_tokens=config.text.text_len,
        batch_size=config.train.batch_size,
    )
    tokens_per_step = 2 * build.tokens_per_clip(config) * config.train.batch_size
    peak = float(config.hardware.peak_flops_per_device)
    peak_source = "config"
    if peak <= 0:
        peak, peak_source = measure_peak_flops(jnp.dtype(config.model.wan.dtype)), "measured"
    rates = dict(flops=flops_per_step, tokens=tokens_per_step, peak=peak * jax.device_count())
    writer = MetricsWriter(files)
    start = int(jax.device_get(state.step))
    end = int(config.train.num_steps) if max_steps is None else min(int(config.train.num_steps), start + max_steps)
    if _is_main():
        print(
            f"[trackedit train] {resumed_from}; steps {start} -> {end}; mesh {dict(mesh.shape)}; "
            f"{jax.device_count()} devices, {jax.process_count()} processes; peak {peak / 1e9:.0f} GFLOP/s "
            f"per device ({peak_source})",
            flush=True,
        )

    from tqdm.auto import tqdm

    bar = tqdm(total=end, initial=start, disable=not _is_main(), unit="step", dynamic_ncols=True)
    last_metrics: dict = {}
    interrupted = False
    window = StepWindow()  # the first step (compilation) is outside every timed window
    with _Preemption() as preempt, jax.set_mesh(mesh):
        step = start
        while step < end:
            t0 = time.perf_counter()
            local = next(train_iter)
            fingerprint = data_fingerprint(local) if config.train.fingerprint_data else None
            batch = _to_global(local, mesh)
            window.add_data_time(time.perf_counter() - t0)
            state, metrics = jit_step(state, frozen, vae_state, batch)
            step += 1
            bar.update(1)
            if not window.started:
                window.start(step, metrics)
            if step % config.train.log_every == 0 or step == end:
                timing = window.lap(step, metrics) if window.steps_to(step) else None
                last_metrics = _log(writer, step, metrics, timing, fingerprint, bar, rates)
            if config.train.val_every and step % config.train.val_every == 0:
                val = _validate(eval_fn, state, frozen, vae_state, config, val_path, mesh)
                writer.write(step, {"loss": val}, prefix="val")
                window.start(step, state)  # validation time is not step time
            stop = _global_flag(preempt.requested)
            if step % config.checkpoint.every_steps == 0 or step == end or stop:
                ckpt.save(step, state, train_iter, json.loads(config.to_json_best_effort()), force=True)
                window.start(step, state)  # checkpoint time is not step time
            if stop:
                interrupted = True
                break
    bar.close()
    ckpt.close()
    writer.close()
    if _is_main() and (files / "metrics.jsonl").exists():
        plot_loss_curve(files / "metrics.jsonl", files / "loss_curve.png")
    if _is_main() and remote:
        _copy_tree(files, workdir, skip=("data",))
    return TrainResult(step=step, metrics=last_metrics, workdir=workdir, interrupted=interrupted)


def _copy_tree(src: pathlib.Path, dst, *, skip: tuple[str, ...] = ()) -> None:
    """Copy the files under `src` to `dst` (an epath.Path), leaving out the top-level names in `skip`."""
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if path.is_file() and rel.parts[0] not in skip:
            (dst / rel.as_posix()).parent.mkdir(parents=True, exist_ok=True)
            (dst / rel.as_posix()).write_bytes(path.read_bytes())


def _log(writer, step, metrics, timing, fingerprint, bar, rates) -> dict:
    """Write one step's metrics; `timing` = (seconds per step, steps, data seconds per step) of the
    synchronised window ending at this step (None when the window is empty)."""
    m = {k: float(v) for k, v in jax.device_get(metrics).items()}
    m["model_flops_per_step"] = rates["flops"]
    if timing is not None:
        dt, _, t_data = timing
        m.update(
            step_time=dt,
            data_time=t_data,
            flops_per_second=rates["flops"] / dt,
            tokens_per_second=rates["tokens"] / dt,
            mfu=rates["flops"] / dt / rates["peak"],
        )
    if fingerprint is not None:
        m["data_fingerprint"] = float(fingerprint)  # exact: a 32-bit int in a float64
    writer.write(step, m)
    bar.set_postfix(loss=f"{m['loss']:.4f}", lr=f"{m['learning_rate']:.2e}")
    return m


def _validate(eval_fn, state, frozen, vae_state, config, val_path, mesh) -> float:
    it = make_iterator(config, val_path, seed=12345, repeat=True)
    losses = []
    for i in range(int(config.train.val_batches)):
        batch = _to_global(next(it), mesh)
        losses.append(float(eval_fn(state.params, frozen, vae_state, batch, jax.random.PRNGKey(i))))
    del it
    return float(np.mean(losses))


def _params_from_run(run_dir: str, abs_state: TrainState, state_sh: TrainState) -> Any:
    """Trainable parameters of the latest checkpoint of another run (stage 1 -> stage 2)."""
    run = pathlib.Path(run_dir)
    ckdir = run / "checkpoints" if (run / "checkpoints").is_dir() else run
    other = Checkpointer(ckdir, async_save=False)
    step = other.latest_step()
    if step is None:
        raise FileNotFoundError(f"init_from: no checkpoint in {ckdir}")
    restored = other.restore(step, abstract_like(abs_state, state_sh))
    other.close()
    return restored.params
