"""TAPVid-3D's restricted unpickler (`load_bytes_object_array`, used by `read_tapvid3d` for the one pickled
member of the format): gadget pickles that call os.system, builtins.eval, importlib or subprocess are
refused without running anything, and fuzzed pickles (bit flips, truncations, random opcodes, random
globals) end in an array of byte strings or `pickle.UnpicklingError`. Whole files go through
`read_tapvid3d` and end in a clip or a one-line `IngestError` naming the file."""

import builtins
import importlib
import io
import os
import pickle
import subprocess

import cv2
import numpy as np
from fuzzing import EXAMPLES, FUZZ, outcome, report
from hypothesis import given
from hypothesis import strategies as st

from data_pipeline.real.clip import IngestError
from data_pipeline.real.readers import load_bytes_object_array, read_tapvid3d


def jpegs(T=2, H=8, W=8):
    rng = np.random.default_rng(0)
    return [cv2.imencode(".jpg", rng.integers(0, 256, (H, W, 3), dtype=np.uint8))[1].tobytes() for _ in range(T)]


def object_array_payload(arr: np.ndarray, protocol: int = 3) -> bytes:
    """The pickle numpy writes after the .npy header of an object array."""
    return pickle.dumps(arr, protocol=protocol)


VALID_ARRAY = np.array(jpegs(), dtype=object)
VALID = {p: object_array_payload(VALID_ARRAY, p) for p in (2, 3, 4, 5)}


class Gadget:
    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def gadgets(marker):
    cmd = f"touch {marker}"
    return {
        "os.system": Gadget(os.system, cmd),
        "builtins.eval": Gadget(builtins.eval, f"__import__('os').system({cmd!r})"),
        "builtins.exec": Gadget(builtins.exec, f"open({str(marker)!r}, 'w')"),
        "importlib.import_module": Gadget(importlib.import_module, "antigravity"),
        "subprocess.call": Gadget(subprocess.call, ["touch", str(marker)]),
        "getattr": Gadget(getattr, Gadget(importlib.import_module, "os"), "system"),
        "inside the array": np.array([b"ok", Gadget(os.system, cmd)], dtype=object),
    }


def test_valid_payloads_of_every_protocol_load():
    for p, data in VALID.items():
        got = load_bytes_object_array(data)
        assert got.dtype == object and list(got) == list(VALID_ARRAY), p


def test_gadget_pickles_are_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    for name, obj in gadgets(marker).items():
        for protocol in (2, 3, 5):
            data = pickle.dumps(obj, protocol=protocol)
            try:
                load_bytes_object_array(data)
            except pickle.UnpicklingError as e:
                assert "refusing" in str(e), (name, str(e))
            else:
                raise AssertionError(f"{name} (protocol {protocol}) was accepted")
    assert not marker.exists()
    stack_global = b"\x80\x04\x8c\x03os\n\x94\x8c\x06system\x94\x93."  # a module name with a line break
    try:
        load_bytes_object_array(stack_global)
    except pickle.UnpicklingError as e:
        assert "refusing" in str(e) and "\n" not in str(e), str(e)
    else:
        raise AssertionError("STACK_GLOBAL accepted")


def test_gadget_inside_a_tapvid3d_file_is_refused_in_one_line(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "clip.npz"
    arr = np.empty(1, dtype=object)
    arr[0] = Gadget(os.system, f"touch {marker}")
    np.savez(
        path,
        images_jpeg_bytes=arr,
        tracks_XYZ=np.zeros((1, 2, 3)),
        visibility=np.ones((1, 2)),
        fx_fy_cx_cy=np.array([8.0, 8, 4, 4]),
    )
    try:
        read_tapvid3d(path)
    except IngestError as e:
        assert str(path) in str(e) and "refusing" in str(e) and "\n" not in str(e)
    else:
        raise AssertionError("accepted")
    assert not marker.exists()


OPCODES = list(
    b"()01NIJKLFSTUVXabcdehijklmnoqrstuGB\x80\x81\x82\x83\x84\x85\x86\x87\x88\x89\x8a\x8b\x8c\x8d\x8e\x8f\x90\x91\x92\x93\x94\x95\x96\x97\x98"
)
GLOBALS = [
    b"numpy\nndarray\n",
    b"numpy\ndtype\n",
    b"os\nsystem\n",
    b"builtins\neval\n",
    b"_codecs\nencode\n",
    b"numpy._core.multiarray\n_reconstruct\n",
    b"importlib\nimport_module\n",
    b"posix\nsystem\n",
]


@st.composite
def pickles(draw):
    kind = draw(st.sampled_from(["flip", "truncate", "splice", "random_ops"]))
    base = VALID[draw(st.sampled_from(sorted(VALID)))]
    if kind == "truncate":
        return base[: draw(st.integers(0, len(base) - 1))]
    if kind == "flip":
        b = bytearray(base)
        for _ in range(draw(st.integers(1, 4))):
            b[draw(st.integers(0, len(b) - 1))] = draw(st.integers(0, 255))
        return bytes(b)
    if kind == "splice":  # a GLOBAL of another module/name, or a random chunk, inside a valid pickle
        i = draw(st.integers(0, len(base)))
        chunk = b"c" + draw(st.sampled_from(GLOBALS)) if draw(st.booleans()) else draw(st.binary(max_size=12))
        return base[:i] + chunk + base[i:]
    ops = draw(st.lists(st.tuples(st.sampled_from(OPCODES), st.binary(max_size=9)), max_size=30))
    return b"\x80\x03" + b"".join(bytes([op]) + arg for op, arg in ops) + b"."


def check_loaded(data):
    arr = load_bytes_object_array(data)
    assert isinstance(arr, np.ndarray) and arr.dtype == object
    assert all(isinstance(b, bytes) for b in arr.ravel())
    return arr


def test_fuzz_restricted_unpickler(tmp_path):
    @FUZZ
    @given(pickles())
    def run(data):
        outcome("TAPVid-3D unpickler", check_loaded, data, errors=(pickle.UnpicklingError,))

    run()
    counts = report("TAPVid-3D unpickler")
    assert counts["ok"] + counts["refused"] >= EXAMPLES
    assert counts["ok"] and counts["refused"]


def test_fuzzed_pickle_members_through_read_tapvid3d(tmp_path):
    """A few hundred whole files: the fuzzed payload as the images_jpeg_bytes member."""
    path = tmp_path / "clip.npz"
    good = io.BytesIO()
    np.save(good, VALID_ARRAY)
    header = good.getvalue()[: len(good.getvalue()) - len(object_array_payload(VALID_ARRAY))]
    rest = dict(tracks_XYZ=np.ones((2, 3, 3)), visibility=np.ones((2, 3)), fx_fy_cx_cy=np.array([8.0, 8, 4, 4]))

    @FUZZ.__class__(FUZZ, max_examples=max(200, EXAMPLES // 10))
    @given(pickles())
    def run(data):
        import zipfile

        np.savez(path, **rest)
        with zipfile.ZipFile(path, "a") as z:
            z.writestr("images_jpeg_bytes.npy", header + data)
        outcome("TAPVid-3D file", read_tapvid3d, path, errors=(IngestError,), names=str(path))

    run()
    report("TAPVid-3D file")
