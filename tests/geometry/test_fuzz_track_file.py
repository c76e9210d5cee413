"""Fuzzing the track-file reader (`load_track_file`, the TAPIP3D / SpatialTrackerV2 `.npz` layout): wrong and
missing keys, every dtype (object arrays included), wrong shapes, NaN/inf, truncated and bit-flipped files
and `.npy` headers that declare far more than the file holds. Every file must load or raise ValueError
with one line naming the file; a header declaring a huge array is refused before anything is allocated."""

import io
import pathlib
import subprocess
import sys
import zipfile

import numpy as np
from fuzzing import EXAMPLES, FUZZ, outcome, report
from hypothesis import given
from hypothesis import strategies as st

from trackedit_jax.geometry.io import load_track_file

KEYS = ["coords", "extrinsics", "intrinsics", "visibs", "video", "depths", "image_size", "source_ids", "other"]
DTYPES = ["float32", "float64", "float16", "int32", "uint8", "int64", "bool", "complex64", "<U3", "S2", "object"]


def valid_arrays(T=3, N=4, H=6, W=8):
    rng = np.random.default_rng(0)
    E = np.tile(np.eye(4, dtype=np.float32), (T, 1, 1))
    E[:, 2, 3] = 2.0
    K = np.tile(np.array([[8, 0, 4], [0, 8, 3], [0, 0, 1]], np.float32), (T, 1, 1))
    return {
        "coords": rng.normal(size=(T, N, 3)).astype(np.float32),
        "extrinsics": E,
        "intrinsics": K,
        "visibs": rng.uniform(size=(T, N)) < 0.7,
        "video": rng.integers(0, 256, (T, H, W, 3), dtype=np.uint8),
        "image_size": np.array([H, W], np.int32),
    }


def npz_bytes(arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # object arrays are pickled by np.save (allow_pickle defaults to True on write)
    return buf.getvalue()


@st.composite
def arrays(draw):
    dtype = draw(st.sampled_from(DTYPES))
    shape = tuple(draw(st.lists(st.integers(0, 5), max_size=4)))
    size = int(np.prod(shape))
    if dtype == "object":
        return np.array([object()] * size + [None], dtype=object)[:size].reshape(shape)
    if dtype in ("<U3", "S2"):
        return np.full(shape, "ab", dtype=dtype)
    special = draw(st.sampled_from([0.0, np.nan, np.inf, -np.inf, 1e300, -1.5, 7.0]))
    a = np.full(shape, special if dtype.startswith(("float", "complex")) else 1).astype(dtype)
    if size:
        a.reshape(-1)[: draw(st.integers(0, size))] = draw(st.integers(0, 3))
    return a


def _lie_about_shape(data: bytes, member: str, shape: tuple) -> bytes:
    """The npz with `member`'s .npy header rewritten to declare `shape` (the data bytes unchanged)."""
    src = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            raw = src.read(info)
            if info.filename == f"{member}.npy":
                header_len = int.from_bytes(raw[8:10], "little")
                header = raw[10 : 10 + header_len].decode("latin1")
                start, end = header.index("'shape': (") + len("'shape': ("), header.index(")")
                new = (
                    header[:start] + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + header[end:]
                ).rstrip()
                new = new.ljust(((10 + len(new) + 1 + 63) // 64) * 64 - 10 - 1) + "\n"
                raw = raw[:8] + len(new).to_bytes(2, "little") + new.encode("latin1") + raw[10 + header_len :]
            dst.writestr(info.filename, raw)
    return out.getvalue()


@st.composite
def track_files(draw):
    kind = draw(st.sampled_from(["fields", "mutated_field", "bytes", "huge_header"]))
    if kind == "fields":
        keys = draw(st.lists(st.sampled_from(KEYS), unique=True, max_size=6))
        return npz_bytes({k: draw(arrays()) for k in keys})
    base = valid_arrays(T=draw(st.integers(1, 3)), N=draw(st.integers(1, 4)))
    if kind == "mutated_field":
        key = draw(st.sampled_from(KEYS))
        if draw(st.booleans()) and key in base:
            del base[key]
        else:
            base[key] = draw(arrays())
        return npz_bytes(base)
    data = npz_bytes(base)
    if kind == "huge_header":
        member = draw(st.sampled_from(sorted(base)))
        dims = draw(st.lists(st.integers(0, 2**40), min_size=1, max_size=4))
        return _lie_about_shape(data, member, tuple(dims))
    b = bytearray(data[: draw(st.integers(0, len(data)))])
    for _ in range(draw(st.integers(0, 8)) if b else 0):
        b[draw(st.integers(0, len(b) - 1))] = draw(st.integers(0, 255))
    return bytes(b)


def test_valid_file_loads(tmp_path):
    p = tmp_path / "t.npz"
    p.write_bytes(npz_bytes(valid_arrays()))
    f = load_track_file(p)
    np.testing.assert_array_equal(f.tracks.xyz, valid_arrays()["coords"])
    assert f.video.shape == (3, 6, 8, 3) and f.camera.image_size == (6, 8)


def test_fuzz_track_file_reader(tmp_path):
    path = tmp_path / "tracks.npz"

    @FUZZ
    @given(track_files())
    def run(data):
        path.write_bytes(data)
        outcome("track file", load_track_file, path, names=str(path))

    run()
    counts = report("track file")
    assert counts["ok"] + counts["refused"] >= EXAMPLES
    assert counts["ok"] and counts["refused"]


ALLOCATION_PROBE = """
import resource, sys
import numpy as np
sys.path[:0] = [{repo!r}]
from trackedit_jax.geometry.io import load_track_file
resource.setrlimit(resource.RLIMIT_AS, (1 << 31, 1 << 31))  # 2 GiB of address space from here on
try:
    load_track_file(sys.argv[1])
except ValueError as e:
    print("REFUSED", e)
"""


def test_huge_declared_array_is_refused_before_allocating(tmp_path):
    """A 1 TB `coords` header over 48 bytes of data: refused under a 2 GiB address-space limit (numpy's own
    reader would first allocate the declared size and fail with MemoryError)."""
    huge = tmp_path / "huge.npz"
    huge.write_bytes(_lie_about_shape(npz_bytes(valid_arrays()), "coords", (2**36, 4, 3)))
    script = ALLOCATION_PROBE.format(repo=str(pathlib.Path(__file__).resolve().parents[2]))
    proc = subprocess.run([sys.executable, "-c", script, str(huge)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("REFUSED") and "declares shape (68719476736, 4, 3)" in proc.stdout, proc.stdout
    with zipfile.ZipFile(huge) as z, z.open("coords.npy") as f:  # numpy's header reader sees the same lie
        np.lib.format.read_magic(f)
        assert np.lib.format.read_array_header_1_0(f)[0] == (2**36, 4, 3)
