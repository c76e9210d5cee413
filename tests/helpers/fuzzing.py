"""Hypothesis profiles and the outcome check shared by the reader fuzz tests (tests/**/test_fuzz_*.py).

Profiles (environment variable TRACKEDIT_FUZZ):
  bounded (default, `make test`): 2,000 examples per reader, derandomized (the same inputs every run).
  long (`make fuzz`): 50,000 examples per reader from the seed pytest gets (`--hypothesis-seed`, printed
       by the Makefile target).
"No hang" is the per-example deadline, 20 s: far above the slowest bounded example (a damaged mp4, about
1 s alone on a 2-core AMD EPYC, 6 s beside the other pytest worker's multi-process training tests) and far
below a hang. Every example must end in a result or in one of the reader's documented errors with a
one-line message (anything else fails the example).
"""

from __future__ import annotations

import datetime
import os

from hypothesis import HealthCheck, settings

_COMMON = dict(
    deadline=datetime.timedelta(seconds=20),
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
    print_blob=True,
)
settings.register_profile("bounded", max_examples=2_000, derandomize=True, **_COMMON)
settings.register_profile("long", max_examples=50_000, **_COMMON)

PROFILE = os.environ.get("TRACKEDIT_FUZZ", "bounded")
if PROFILE not in ("bounded", "long"):
    raise ValueError(f"TRACKEDIT_FUZZ must be 'bounded' or 'long'; got {PROFILE!r}")
FUZZ = settings(settings.get_profile(PROFILE))
EXAMPLES = settings.get_profile(PROFILE).max_examples

# Outcome counts per reader, reported by tests/helpers/fuzz_report (docs/reliability.md figures).
OUTCOMES: dict[str, dict[str, int]] = {}


def outcome(reader: str, fn, *args, errors: tuple[type[BaseException], ...] = (ValueError,), names: str | None = None):
    """Call fn(*args): return its result, or None when it raises one of `errors` with a one-line message
    (that contains `names`, the file or field it must name, when given). Other exceptions propagate."""
    counts = OUTCOMES.setdefault(reader, {"ok": 0, "refused": 0})
    try:
        result = fn(*args)
    except errors as e:
        msg = str(e)
        assert msg and "\n" not in msg, f"{type(e).__name__} message is not one line: {msg!r}"
        if names is not None:
            assert names in msg, f"the message does not name {names!r}: {msg!r}"
        counts["refused"] += 1
        _progress(reader, counts)
        return None
    counts["ok"] += 1
    _progress(reader, counts)
    return result


def _progress(reader: str, counts: dict) -> None:
    """In the long profile, the counts so far every 5,000 examples (a run cut short still has figures)."""
    if PROFILE == "long" and (counts["ok"] + counts["refused"]) % 5_000 == 0:
        _write(reader, counts, partial=True)


def report(reader: str) -> dict[str, int]:
    """The outcome counts of `reader` so far; appended as a JSON line to $TRACKEDIT_FUZZ_REPORT if set."""
    counts = OUTCOMES.get(reader, {"ok": 0, "refused": 0})
    _write(reader, counts, partial=False)
    return counts


def _write(reader: str, counts: dict, partial: bool) -> None:
    import json
    import time

    path = os.environ.get("TRACKEDIT_FUZZ_REPORT")
    if path:
        line = {"reader": reader, "profile": PROFILE, **counts, "partial": partial, "time": time.strftime("%H:%M:%S")}
        with open(path, "a") as f:
            f.write(json.dumps(line) + "\n")
