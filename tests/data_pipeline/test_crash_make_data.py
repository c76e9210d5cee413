"""`trackedit make-data` killed in the middle and run out of disk: SIGKILL after two shards are done, a
re-run under a file-size limit (RLIMIT_FSIZE, a full disk as the process sees it) that fails in one line
and leaves the finished shards intact, then a plain re-run that completes the data set. The result is
byte-identical to an uninterrupted run and its manifest matches its shards."""

import json

from crashes import cli, kill_when, one_line_error, run

from data_pipeline.shards import verify_dataset

ARGS = ["--num-pairs", "10", "--frames", "5", "--size", "16x16", "--tracks", "32", "--records-per-shard", "1"]


def make_data(out):
    return cli("make-data", "synthetic", "--out", str(out), *ARGS)


def shard_files(out):
    return sorted(p.name for p in out.glob("shard-*.array_record"))


def test_make_data_survives_sigkill_and_a_full_disk(tmp_path):
    ref = tmp_path / "reference"
    assert run(make_data(ref)).returncode == 0
    reference = json.loads((ref / "manifest.json").read_text())

    out = tmp_path / "crashed"
    parts = out / ".parts"
    status = kill_when(make_data(out), lambda: (parts / "shard-00001.json").exists())
    assert status == -9
    assert not (out / "manifest.json").exists()
    done = {p.name: p.read_bytes() for p in out.glob("shard-*.array_record")}
    assert len(done) >= 2

    full = run(make_data(out), fsize=2_000)  # every shard of these pairs is larger than 2 kB
    msg = one_line_error(full, "make-data")
    assert "File too large" in msg and "shard-" in msg, msg
    assert not (out / "manifest.json").exists()
    for name, data in done.items():  # the shards finished before the kill are untouched
        assert (out / name).read_bytes() == data
    assert not list(out.glob(".shard-*.tmp-*"))  # the failed write removed its temporary file

    assert run(make_data(out)).returncode == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["sha256"] for s in manifest["shards"]] == [s["sha256"] for s in reference["shards"]]
    assert shard_files(out) == shard_files(ref)
    report = verify_dataset(out)
    assert report["num_records"] == 10 and not report["bad_shards"] and not report["bad_records"]
