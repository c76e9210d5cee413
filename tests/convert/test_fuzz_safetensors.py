"""Fuzzing the safetensors reader (`open_checkpoint` + reading every tensor): malformed and random headers,
offsets past the end, wrong header lengths, truncated and bit-flipped files, broken index files, and a
header declaring a terabyte tensor (refused before allocating, checked under an address-space limit).
Every input must read or raise ValueError with one line naming the file."""

import json
import pathlib
import subprocess
import sys

import numpy as np
from fuzzing import EXAMPLES, FUZZ, outcome, report
from hypothesis import given
from hypothesis import strategies as st
from safetensors.numpy import save

from trackedit_jax.convert.checkpoint_files import open_checkpoint

VALID = save({"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(4, np.uint8)}, {"format": "pt"})
DTYPES = ["F32", "F16", "BF16", "U8", "I64", "BOOL", "F64", "X9", ""]


def with_header(header, data: bytes = b"", length: int | None = None) -> bytes:
    text = json.dumps(header).encode() if not isinstance(header, bytes) else header
    return (len(text) if length is None else length).to_bytes(8, "little") + text + data


entries = st.fixed_dictionaries(
    {
        "dtype": st.sampled_from(DTYPES),
        "shape": st.lists(st.integers(-1, 2**40), max_size=4),
        "data_offsets": st.lists(st.integers(-1, 2**41), min_size=0, max_size=3),
    }
)


@st.composite
def safetensors_bytes(draw):
    kind = draw(st.sampled_from(["header", "flip", "truncate", "length", "raw"]))
    if kind == "raw":
        return draw(st.binary(max_size=200))
    if kind == "truncate":
        return VALID[: draw(st.integers(0, len(VALID) - 1))]
    if kind == "flip":
        b = bytearray(VALID)
        for _ in range(draw(st.integers(1, 4))):
            b[draw(st.integers(0, len(b) - 1))] ^= draw(st.integers(1, 255))
        return bytes(b)
    if kind == "length":
        body = VALID[8:]
        return with_header(body, length=draw(st.one_of(st.integers(0, len(body) + 8), st.integers(0, 2**64 - 1))))
    header = draw(st.dictionaries(st.sampled_from(["a", "b", "__metadata__", "c"]), entries, max_size=3))
    return with_header(header, draw(st.binary(max_size=64)))


def read_all(path):
    with open_checkpoint(path) as reader:
        out = {}
        for key in reader.keys():
            reader.shape(key)
            out[key] = reader.get(key)
        return out


def test_valid_file_reads(tmp_path):
    p = tmp_path / "w.safetensors"
    p.write_bytes(VALID)
    got = read_all(p)
    np.testing.assert_array_equal(got["a"], np.arange(6, dtype=np.float32).reshape(2, 3))


def test_fuzz_safetensors_reader(tmp_path):
    path = tmp_path / "w.safetensors"

    @FUZZ
    @given(safetensors_bytes())
    def run(data):
        path.write_bytes(data)
        outcome("safetensors", read_all, path, names=str(path))

    run()
    counts = report("safetensors")
    assert counts["ok"] + counts["refused"] >= EXAMPLES
    assert counts["ok"] and counts["refused"]


def test_broken_index_files_are_refused_in_one_line(tmp_path):
    (tmp_path / "w.safetensors").write_bytes(VALID)
    index = tmp_path / "m.safetensors.index.json"
    for text in (
        "{",
        "[1, 2]",
        '{"weight_map": 3}',
        '{"weight_map": {"a": "../w.safetensors"}}',
        '{"weight_map": {"a": 7}}',
        "[" * 100_000,
        '{"weight_map": {"a": "missing.safetensors"}}',
    ):
        index.write_text(text)
        try:
            read_all(index)
        except (ValueError, FileNotFoundError) as e:
            assert "\n" not in str(e) and str(index) in str(e), str(e)
        else:
            raise AssertionError(text)


PROBE = """
import resource, sys
sys.path[:0] = [{repo!r}]
from trackedit_jax.convert.checkpoint_files import open_checkpoint
resource.setrlimit(resource.RLIMIT_AS, (1 << 31, 1 << 31))
try:
    with open_checkpoint(sys.argv[1]) as r:
        r.get("a")
except ValueError as e:
    print("REFUSED", e)
"""


def test_terabyte_tensor_header_is_refused_before_allocating(tmp_path):
    p = tmp_path / "tb.safetensors"
    p.write_bytes(with_header({"a": {"dtype": "F32", "shape": [2**38], "data_offsets": [0, 2**40]}}, b"\0" * 64))
    script = PROBE.format(repo=str(pathlib.Path(__file__).resolve().parents[2]))
    proc = subprocess.run([sys.executable, "-c", script, str(p)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("REFUSED") and str(p) in proc.stdout, proc.stdout
