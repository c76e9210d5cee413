"""Background edit jobs: one worker thread runs them in order, with progress counters, cancellation and
atomic outputs.

A job writes into a temporary folder `.NAME.tmp-*` beside its final folder and renames it into place
when everything is written; cancellation, an error or a shutdown (Ctrl-C) removes the temporary folder,
so the output folder only ever holds complete results. Progress is a tqdm-like counter: a stage name,
`done` of `total` units, and the seconds since the job started.
"""

from __future__ import annotations

import dataclasses
import itertools
import pathlib
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Callable

STATES = ("queued", "running", "done", "error", "cancelled")


class Cancelled(Exception):
    """Raised inside a job's work when it was cancelled."""


@dataclasses.dataclass
class Job:
    """One job. `work(job, tmp_dir)` fills tmp_dir and may keep in-memory results in `job.result`."""

    id: str
    name: str
    work: Callable
    state: str = "queued"
    stage: str = "queued"
    done: int = 0
    total: int = 0
    error: str | None = None
    out_dir: pathlib.Path | None = None
    files: list = dataclasses.field(default_factory=list)
    result: dict = dataclasses.field(default_factory=dict)
    started: float | None = None
    finished: float | None = None
    cancel_event: threading.Event = dataclasses.field(default_factory=threading.Event)

    def progress(self, stage: str, done: int = 0, total: int = 0) -> None:
        """Report progress; raises `Cancelled` when the job was cancelled (so each report is a stop point)."""
        self.stage, self.done, self.total = stage, int(done), int(total)
        self.check()

    def check(self) -> None:
        if self.cancel_event.is_set():
            raise Cancelled(self.id)

    def status(self) -> dict:
        now = self.finished or time.monotonic()
        return {
            "id": self.id,
            "state": self.state,
            "stage": self.stage,
            "done": self.done,
            "total": self.total,
            "elapsed_s": round(now - self.started, 2) if self.started else 0.0,
            "error": self.error,
            "out_dir": str(self.out_dir) if self.out_dir else None,
            "files": list(self.files),
        }


class JobManager:
    """Runs jobs one at a time (they share one model and the CPU/accelerator) in a worker thread."""

    def __init__(self, out_root: str | pathlib.Path):
        self.out_root = pathlib.Path(out_root)
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._queue: queue.Queue = queue.Queue()
        self._ids = itertools.count(1)
        self._closed = False
        self._worker = threading.Thread(target=self._loop, name="studio-jobs", daemon=True)
        self._worker.start()

    def submit(self, work: Callable, prefix: str = "edit") -> Job:
        with self._lock:
            if self._closed:
                raise RuntimeError("the studio is shutting down")
            n = next(self._ids)
            job = Job(id=str(n), name=f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}-{n}", work=work)
            self._jobs[job.id] = job
        self._queue.put(job)
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def cancel(self, job_id: str) -> Job | None:
        job = self.get(job_id)
        if job is not None and job.state in ("queued", "running"):
            job.cancel_event.set()
        return job

    def shutdown(self, timeout: float | None = 60.0) -> None:
        """Cancel every job, wait for the running one to stop (its temporary folder is removed)."""
        with self._lock:
            self._closed = True
            jobs = list(self._jobs.values())
        for job in jobs:
            job.cancel_event.set()
        self._queue.put(None)
        self._worker.join(timeout)

    def _loop(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            self._run(job)

    def _run(self, job: Job) -> None:
        job.started = time.monotonic()
        if job.cancel_event.is_set():
            job.state = job.stage = "cancelled"
            job.finished = time.monotonic()
            return
        job.state = "running"
        tmp = None
        outcome = "error"
        try:
            self.out_root.mkdir(parents=True, exist_ok=True)
            tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{job.name}.tmp-", dir=self.out_root))
            job.work(job, tmp)
            job.check()
            final = self.out_root / job.name
            tmp.rename(final)
            job.out_dir = final
            job.files = sorted(p.name for p in final.iterdir())
            outcome = "done"
        except Cancelled:
            outcome = "cancelled"
        except Exception as e:  # the page shows it; the server keeps serving
            from trackedit_jax.studio.api import one_line

            job.error = one_line(e)
        finally:
            if tmp is not None and tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
            job.finished = time.monotonic()
            # the final state last: whoever sees it finished also sees the temporary folder gone
            job.state = outcome
            if outcome != "error":
                job.stage = outcome
