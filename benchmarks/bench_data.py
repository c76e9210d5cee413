"""Data engine speed: synthetic renderer and grain loader.

    PYTHONPATH=$PWD python benchmarks/bench_data.py                 # everything (~3-4 min on 2 cores)
    PYTHONPATH=$PWD python benchmarks/bench_data.py --skip-paper    # without the 384x672x81 pair

Prints
  * renderer: pairs/s on one core at 64x64x17 (generate + render + tracks + JPEG encode, 1024 tracks),
  * renderer: seconds per pair at 384x672x81,
  * loader: records/s and batches/s with the configs/tiny_cpu.py data settings (17 frames, 64x64,
    max_tracks 256, batch 2) in-process (threads) and with worker processes, against what one training
    step consumes (batch_size records per step): the step time above which the loader keeps up.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # "per core": numpy stays on one thread

import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402


def bench_renderer(size, frames, n, seed=0, tracks=1024):
    from data_pipeline.schema import encode_record
    from data_pipeline.synthetic import SyntheticConfig, make_record

    cfg = SyntheticConfig(num_frames=frames, image_size=size, num_tracks=tracks)
    make_record(10_000, seed=seed, config=cfg)  # warm-up (imports, caches)
    t = time.perf_counter()
    nbytes = 0
    for i in range(n):
        nbytes += len(encode_record(make_record(i, seed=seed, config=cfg)))
    dt = time.perf_counter() - t
    return dt / n, nbytes / n


def tiny_cpu_loader_config():
    """LoaderConfig from configs/tiny_cpu.py (data section + train.batch_size) when it exists, else the
    values the brief announced (17 frames, 64x64, max_tracks 256, batch 2)."""
    from data_pipeline.loader import LoaderConfig

    common = dict(seed=0, process_index=0, process_count=1)
    try:
        from configs import tiny_cpu

        c = tiny_cpu.get_config()
        return LoaderConfig.from_config(c.data, batch_size=c.train.batch_size, **common), "configs/tiny_cpu.py"
    except Exception as e:  # no preset on this branch
        return (
            LoaderConfig(batch_size=2, num_frames=17, image_size=(64, 64), max_tracks=256, **common),
            f"brief values ({type(e).__name__}: configs/tiny_cpu.py unavailable)",
        )


def bench_loader(data_dir, cfg, workers, batches):
    import dataclasses

    from data_pipeline.loader import make_iterator

    it = make_iterator(data_dir, dataclasses.replace(cfg, worker_count=workers))
    t0 = time.perf_counter()
    next(it)
    first = time.perf_counter() - t0
    t = time.perf_counter()
    for _ in range(batches):
        next(it)
    dt = time.perf_counter() - t
    del it
    return batches / dt, first


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--pairs", type=int, default=16, help="pairs timed at 64x64x17")
    p.add_argument("--paper-pairs", type=int, default=1, help="pairs timed at 384x672x81")
    p.add_argument("--skip-paper", action="store_true")
    p.add_argument("--dataset-pairs", type=int, default=64, help="records in the loader benchmark set")
    p.add_argument("--batches", type=int, default=100)
    p.add_argument("--step-seconds", type=float, default=None, help="measured tiny_cpu train step time, if known")
    args = p.parse_args()
    print(f"load average before: {os.getloadavg()}")

    s, b = bench_renderer((64, 64), 17, args.pairs)
    print(
        f"[renderer] 64x64x17, 1024 tracks: {s:.3f} s/pair = {1 / s:.2f} pairs/s on one core "
        f"(record {b / 1e3:.0f} kB, JPEG q95)"
    )
    if not args.skip_paper:
        s, b = bench_renderer((384, 672), 81, args.paper_pairs)
        print(f"[renderer] 384x672x81, 1024 tracks: {s:.1f} s/pair on one core (record {b / 1e6:.1f} MB)")

    from data_pipeline.synthetic import make_dataset

    cfg, origin = tiny_cpu_loader_config()
    d = tempfile.mkdtemp(prefix="bench_data_")
    try:
        t = time.perf_counter()
        make_dataset(
            d,
            args.dataset_pairs,
            cfg.num_frames,
            cfg.image_size,
            seed=1,
            workers=2,
            records_per_shard=16,
            progress=False,
        )
        gen = time.perf_counter() - t
        print(
            f"[dataset] {args.dataset_pairs} pairs at {cfg.image_size[0]}x{cfg.image_size[1]}x{cfg.num_frames} "
            f"with 2 worker processes: {gen:.1f} s ({args.dataset_pairs / gen:.2f} pairs/s)"
        )
        B = cfg.batch_size
        print(
            f"[loader] settings from {origin}: batch {B}, {cfg.num_frames} frames, {cfg.image_size}, "
            f"max_tracks {cfg.max_tracks}, "
            f"tracks drawn in [{cfg.min_tracks}, {min(cfg.max_drawn_tracks, cfg.max_tracks)}]"
        )
        for workers in (0, 2):
            bps, first = bench_loader(d, cfg, workers, args.batches)
            line = (
                f"[loader] worker_count={workers}: {bps:.1f} batches/s = {bps * B:.1f} records/s "
                f"(first batch {first:.2f} s); one step consumes {B} records, so the loader keeps up "
                f"with any step slower than {1000 / bps:.1f} ms"
            )
            if args.step_seconds:
                line += (
                    f"; measured step {args.step_seconds * 1000:.0f} ms"
                    f" -> loader/step ratio {bps * args.step_seconds:.1f}x"
                )
            print(line)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
