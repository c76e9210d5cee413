"""ArrayRecord shards of pair records: atomic writing, a manifest, parallel and resumable generation,
and a random-access reader (a grain data source) that names the file and index of any bad record.

Layout of a data set directory:
  shard-00000-of-00004.array_record ...   one encoded `PairRecord` per ArrayRecord record
  manifest.json                           written last: counts, sha256 per shard, generator config
  .parts/config.json, .parts/shard-00000.json   progress of an unfinished (resumable) generation

A shard is written to a hidden temporary file and renamed into place only when complete, so a
crash or an error never leaves a partial shard. `write_dataset` (random-access record function,
parallel over worker processes and over tasks/machines, resumable) is used by the synthetic
generator; `write_records` (a stream, all-or-nothing) by ingest.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import hashlib
import json
import logging
import math
import multiprocessing
import os
import pathlib
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence

from data_pipeline.schema import SCHEMA_VERSION, PairRecord, RecordError, decode_record, encode_record

MANIFEST = "manifest.json"
PARTS = ".parts"
FORMAT = "trackedit-pair-records"
_log = logging.getLogger(__name__)


class ShardError(ValueError):
    """A shard file or record that cannot be read; the message names the file (and record index)."""


def shard_name(index: int, count: int) -> str:
    return f"shard-{index:05d}-of-{count:05d}.array_record"


def _atomic_write_text(path: pathlib.Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _sha256(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_shard(path: str | os.PathLike, records: Iterable[bytes | PairRecord]) -> dict:
    """Write records (encoded bytes or PairRecord) to one ArrayRecord file, atomically.

    Returns {"file", "num_records", "bytes", "sha256", "edit_family_counts"}.
    """
    from array_record.python.array_record_module import ArrayRecordWriter

    path = pathlib.Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    writer = ArrayRecordWriter(str(tmp), "group_size:1")
    families: collections.Counter = collections.Counter()
    n = 0
    try:
        for rec in records:
            if isinstance(rec, PairRecord):
                families[rec.edit_family] += 1
                rec = encode_record(rec)
            try:
                writer.write(rec)
            except RuntimeError as e:  # array_record's C++ I/O errors (a full disk) arrive as RuntimeError
                raise OSError(f"{path}: cannot write the shard ({' '.join(str(e).split())})") from e
            n += 1
        try:
            writer.close()
        except RuntimeError as e:
            raise OSError(f"{path}: cannot write the shard ({' '.join(str(e).split())})") from e
        writer = None
        os.replace(tmp, path)
    except BaseException:
        if writer is not None:
            try:
                writer.close()
            except Exception:
                pass
        tmp.unlink(missing_ok=True)
        raise
    return {
        "file": path.name,
        "num_records": n,
        "bytes": path.stat().st_size,
        "sha256": _sha256(path),
        "edit_family_counts": dict(families),
    }


def _manifest(shards: list, generator: dict, extra: dict | None = None) -> dict:
    counts: collections.Counter = collections.Counter()
    for s in shards:
        counts.update(s.get("edit_family_counts", {}))
    m = {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "num_records": sum(s["num_records"] for s in shards),
        "num_shards": len(shards),
        "shards": shards,
        "edit_family_counts": dict(sorted(counts.items())),
        "generator": generator,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    m.update(extra or {})
    return m


# ----------------------------------------------------------------------------- random-access writing
def _write_shard_job(
    out_dir: str,
    index: int,
    count: int,
    start: int,
    stop: int,
    make_record: Callable[[int], PairRecord],
    progress_queue=None,
) -> dict:
    def gen():
        for i in range(start, stop):
            rec = make_record(i)
            yield rec
            if progress_queue is not None:
                progress_queue.put(1)

    info = write_shard(pathlib.Path(out_dir) / shard_name(index, count), gen())
    info["first_index"] = start
    return info


def _spawn_init():  # grain/absl-free workers; keep numpy single-threaded per worker
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def write_dataset(
    out_dir: str | os.PathLike,
    make_record: Callable[[int], PairRecord],
    num_records: int,
    *,
    generator: dict,
    records_per_shard: int = 64,
    workers: int = 1,
    task_index: int = 0,
    num_tasks: int = 1,
    progress: bool = True,
    desc: str = "records",
) -> dict | None:
    """Generate records 0..num_records-1 with `make_record(i)` into shards under out_dir.

    Shard k holds records [k * records_per_shard, (k + 1) * records_per_shard). Shards are spread over
    `workers` processes (spawned; make_record must be picklable) and over `num_tasks` independent
    invocations (task_index picks shards k with k % num_tasks == task_index; e.g. one per machine).
    Resumable: finished shards (recorded in out_dir/.parts with their sha256) are kept; re-running the
    same command completes the rest. A different `generator` config in an existing out_dir is refused.
    Returns the manifest once every shard of the data set exists (else None).
    """
    if num_records < 1:
        raise ValueError(f"num_records must be >= 1; got {num_records}")
    if records_per_shard < 1:
        raise ValueError(f"records_per_shard must be >= 1; got {records_per_shard}")
    if not 0 <= task_index < num_tasks:
        raise ValueError(f"task_index must be in [0, num_tasks={num_tasks}); got {task_index}")
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    parts = out / PARTS
    count = math.ceil(num_records / records_per_shard)
    config = {"generator": generator, "num_records": num_records, "records_per_shard": records_per_shard}
    manifest_path = out / MANIFEST
    if manifest_path.exists():
        m = json.loads(manifest_path.read_text())
        if m.get("generator") != generator or m.get("num_records") != num_records:
            raise ValueError(f"{out} already holds a different data set (see {manifest_path}); choose another --out")
        return m
    parts.mkdir(exist_ok=True)
    cfg_path = parts / "config.json"
    cfg_text = json.dumps(config, sort_keys=True, indent=1)
    if cfg_path.exists():
        if json.loads(cfg_path.read_text()) != json.loads(cfg_text):
            raise ValueError(
                f"{out} holds an unfinished data set made with a different configuration ({cfg_path}); "
                "re-run with the same arguments to resume, or choose another --out"
            )
    else:
        _atomic_write_text(cfg_path, cfg_text)

    def part_path(k):
        return parts / f"shard-{k:05d}.json"

    def done(k) -> bool:
        pp = part_path(k)
        if not pp.exists():
            return False
        info = json.loads(pp.read_text())
        f = out / info["file"]
        return f.exists() and f.stat().st_size == info["bytes"] and _sha256(f) == info["sha256"]

    mine = [k for k in range(count) if k % num_tasks == task_index]
    for k in mine:  # temp files of crashed runs of our shards
        for stale in out.glob(f".{shard_name(k, count)}.tmp-*"):
            stale.unlink(missing_ok=True)
    todo = [k for k in mine if not done(k)]
    ranges = {k: (k * records_per_shard, min(num_records, (k + 1) * records_per_shard)) for k in todo}
    total = sum(b - a for a, b in ranges.values())
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc=desc, unit="rec", dynamic_ncols=True)

    def finish(k, info):
        _atomic_write_text(part_path(k), json.dumps(info, sort_keys=True))

    try:
        if workers <= 1 or len(todo) <= 1:

            class _Q:
                def put(self, n):
                    if bar is not None:
                        bar.update(n)

            for k in todo:
                finish(k, _write_shard_job(str(out), k, count, *ranges[k], make_record, _Q()))
        else:
            ctx = multiprocessing.get_context("spawn")
            with ctx.Manager() as manager:
                q = manager.Queue()
                stop = threading.Event()

                def pump():
                    while not stop.is_set():
                        try:
                            n = q.get(timeout=0.2)
                        except Exception:
                            continue
                        if bar is not None:
                            bar.update(n)

                t = threading.Thread(target=pump, daemon=True)
                t.start()
                ex = cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_spawn_init)
                try:
                    futs = {
                        ex.submit(_write_shard_job, str(out), k, count, *ranges[k], make_record, q): k for k in todo
                    }
                    for fut in cf.as_completed(futs):
                        finish(futs[fut], fut.result())
                except BaseException:
                    # stop at the first error: running shards finish (atomically), queued ones are dropped
                    ex.shutdown(wait=True, cancel_futures=True)
                    raise
                else:
                    ex.shutdown(wait=True)
                finally:
                    stop.set()
                    t.join()
    finally:
        if bar is not None:
            bar.close()
    if not all(part_path(k).exists() for k in range(count)):
        return None  # other tasks still have shards to write
    shards = [json.loads(part_path(k).read_text()) for k in range(count)]
    m = _manifest(shards, generator, {"records_per_shard": records_per_shard})
    _atomic_write_text(manifest_path, json.dumps(m, indent=1, sort_keys=True))
    shutil.rmtree(parts, ignore_errors=True)
    return m


# ----------------------------------------------------------------------------- stream writing
def write_records(
    out_dir: str | os.PathLike,
    records: Iterable[PairRecord],
    *,
    generator: dict,
    records_per_shard: int = 64,
    extra: dict | None = None,
) -> dict:
    """Write a stream of records as a new data set, all or nothing.

    Shards go to a hidden staging directory inside out_dir and are moved into place with the
    manifest only after the stream ends without error; on any error the staging directory is
    removed, so out_dir never holds a partial shard or a partial data set. out_dir must not
    already hold a data set.
    """
    out = pathlib.Path(out_dir)
    if (out / MANIFEST).exists() or any(out.glob("shard-*.array_record")):
        raise ValueError(f"{out} already holds a data set; choose a new --out directory")
    out.mkdir(parents=True, exist_ok=True)
    stage = out / f".staging-{uuid.uuid4().hex[:8]}"
    stage.mkdir()
    moved: list[pathlib.Path] = []
    try:
        infos, batch = [], []
        for rec in records:
            batch.append(rec)
            if len(batch) == records_per_shard:
                infos.append(write_shard(stage / f"part-{len(infos):05d}", batch))
                batch = []
        if batch:
            infos.append(write_shard(stage / f"part-{len(infos):05d}", batch))
        if not infos:
            raise ValueError("no records were produced, so no data set was written")
        for k, info in enumerate(infos):
            dst = out / shard_name(k, len(infos))
            os.replace(stage / info["file"], dst)
            moved.append(dst)
            info["file"] = dst.name
        m = _manifest(infos, generator, extra)
        _atomic_write_text(out / MANIFEST, json.dumps(m, indent=1, sort_keys=True))
        return m
    except BaseException:
        for dst in moved:
            dst.unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)


# ----------------------------------------------------------------------------- reading
def load_manifest(data_dir: str | os.PathLike) -> dict:
    path = pathlib.Path(data_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"{data_dir}: no {MANIFEST} (not a finished data set; an interrupted generation resumes "
            "when re-run with the same arguments)"
        )
    try:
        m = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ShardError(f"{path}: not valid JSON ({e})") from e
    if m.get("format") != FORMAT:
        raise ShardError(f"{path}: format {m.get('format')!r} is not {FORMAT!r}")
    if m.get("schema_version") != SCHEMA_VERSION:
        raise ShardError(f"{path}: schema version {m.get('schema_version')} is not {SCHEMA_VERSION}")
    return m


def resolve_shards(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[tuple[pathlib.Path, dict | None]]:
    """Data set directories (with manifest) and/or shard files -> [(file, manifest entry or None)]."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out = []
    for p in paths:
        p = pathlib.Path(p)
        if p.is_dir():
            m = load_manifest(p)
            out += [(p / s["file"], s) for s in m["shards"]]
        elif p.is_file():
            out.append((p, None))
        else:
            raise FileNotFoundError(f"no data set or shard at {p}")
    if not out:
        raise ValueError(f"no shards found in {list(map(str, paths))}")
    return out


class PairRecordSource:
    """Random access to the encoded records of several shards (a grain `RandomAccessDataSource`).

    `source[i]` -> bytes of record i (global index over the shards in order). Shards are checked when
    the source is built: a missing file, a size that differs from the manifest (truncation) or an
    unreadable file raises `ShardError` naming the file; with on_error="skip" such shards are left
    out and listed in `skipped_shards`. Reading record i that fails raises `ShardError` naming the file
    and the record index (`decode` does the same for a record that fails its checksum or schema).
    Picklable (readers reopen lazily in worker processes).
    """

    def __init__(self, paths, on_error: str = "raise"):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip'; got {on_error!r}")
        self.on_error = on_error
        self.files: list[str] = []
        self.counts: list[int] = []
        self.skipped_shards: list[tuple[str, str]] = []
        for path, entry in resolve_shards(paths):
            try:
                n = self._check(path, entry)
            except ShardError as e:
                if on_error == "raise":
                    raise
                _log.warning("skipping shard: %s", e)
                self.skipped_shards.append((str(path), str(e)))
                continue
            self.files.append(str(path))
            self.counts.append(n)
        self.offsets = [0]
        for n in self.counts:
            self.offsets.append(self.offsets[-1] + n)
        self._readers: dict = {}
        self._lock = threading.Lock()

    @staticmethod
    def _check(path: pathlib.Path, entry: dict | None) -> int:
        from array_record.python.array_record_module import ArrayRecordReader

        if not path.is_file():
            raise ShardError(f"{path}: shard file is missing")
        size = path.stat().st_size
        if entry is not None and size != entry["bytes"]:
            raise ShardError(
                f"{path}: shard is {size} bytes but the manifest says {entry['bytes']} (truncated or altered)"
            )
        try:
            r = ArrayRecordReader(str(path), "readahead_buffer_size:0")
            n = r.num_records()
            r.close()
        except Exception as e:
            raise ShardError(f"{path}: unreadable ArrayRecord file ({type(e).__name__}: {e})") from e
        expected = entry["num_records"] if entry is not None else None
        if expected is not None and n != expected:
            raise ShardError(f"{path}: holds {n} records but the manifest says {expected} (truncated?)")
        return n

    def __len__(self) -> int:
        return self.offsets[-1]

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_readers"], d["_lock"] = {}, None
        return d

    def __setstate__(self, d):
        self.__dict__.update(d)
        self._lock = threading.Lock()

    def locate(self, index: int) -> tuple[str, int]:
        """Global record index -> (shard file, index inside the shard)."""
        if not 0 <= index < len(self):
            raise IndexError(f"record index {index} out of range [0, {len(self)})")
        import bisect

        k = bisect.bisect_right(self.offsets, index) - 1
        return self.files[k], index - self.offsets[k]

    def __getitem__(self, index: int) -> bytes:
        from array_record.python.array_record_module import ArrayRecordReader

        index = int(index)
        path, local = self.locate(index)
        try:
            with self._lock:
                r = self._readers.get(path)
                if r is None:
                    r = self._readers[path] = ArrayRecordReader(path, "readahead_buffer_size:0,max_parallelism:0")
                return r.read([local])[0]
        except Exception as e:
            raise ShardError(
                f"{path}: record {local} (data set index {index}) cannot be read ({type(e).__name__}: {e})"
            ) from e

    def decode(self, index: int, data: bytes | None = None) -> PairRecord:
        """Record `index` decoded; errors name the shard file and record index."""
        data = self[index] if data is None else data
        try:
            return decode_record(data)
        except RecordError as e:
            path, local = self.locate(index)
            raise ShardError(f"{path}: record {local} (data set index {index}) is corrupt: {e}") from e


def verify_dataset(data_dir: str | os.PathLike, *, decode: bool = True) -> dict:
    """Check every shard's sha256 against the manifest and (optionally) decode every record.

    Returns {"num_records", "bad_shards": [(file, reason)], "bad_records": [(file, index, reason)]}.
    """
    m = load_manifest(data_dir)
    bad_shards, bad_records, n = [], [], 0
    for s in m["shards"]:
        path = pathlib.Path(data_dir) / s["file"]
        if not path.is_file():
            bad_shards.append((str(path), "missing"))
            continue
        if _sha256(path) != s["sha256"]:
            bad_shards.append((str(path), "sha256 differs from the manifest"))
        if decode:
            try:
                src = PairRecordSource([path])
            except ShardError as e:
                bad_shards.append((str(path), str(e)))
                continue
            for i in range(len(src)):
                try:
                    src.decode(i)
                except ShardError as e:
                    bad_records.append((str(path), i, str(e)))
            n += len(src)
    return {"num_records": n, "bad_shards": bad_shards, "bad_records": bad_records}
