"""Fuzzing the video reader (`media.read_video`): random bytes, truncated and bit-flipped mp4/gif files.
Every file must decode to (F, H, W, 3) uint8 or raise ValueError with one line naming the file; the
decoded-size bound is checked before the frames are allocated."""

import numpy as np
import pytest
from fuzzing import EXAMPLES, FUZZ, outcome, report
from hypothesis import given
from hypothesis import strategies as st

from trackedit_jax import media


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("clips")
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    return {s: media.write_video(d / f"c{s}", frames, fps=8).read_bytes() for s in (".mp4", ".gif")}


@st.composite
def video_bytes(draw, clips):
    suffix = draw(st.sampled_from(sorted(clips)))
    kind = draw(st.sampled_from(["raw", "truncate", "flip_header", "flip"]))
    if kind == "raw":
        return suffix, draw(st.binary(max_size=300))
    data = clips[suffix]
    if kind == "truncate":
        return suffix, data[: draw(st.integers(0, len(data) - 1))]
    b = bytearray(data)
    end = 64 if kind == "flip_header" else len(b)  # container headers, then anywhere (mostly frame data)
    for _ in range(draw(st.integers(1, 6))):
        b[draw(st.integers(0, end - 1))] = draw(st.integers(0, 255))
    return suffix, bytes(b)


def checked_read(path):
    frames, fps = media.read_video(path)
    assert frames.dtype == np.uint8 and frames.ndim == 4 and frames.shape[-1] == 3 and len(frames) >= 1
    return frames


def test_fuzz_video_reader(tmp_path, clips):
    @FUZZ
    @given(video_bytes(clips))
    def run(case):
        suffix, data = case
        path = tmp_path / f"in{suffix}"
        path.write_bytes(data)
        outcome("video", checked_read, path, names=str(path))

    run()
    counts = report("video")
    assert counts["ok"] + counts["refused"] >= EXAMPLES
    assert counts["ok"] and counts["refused"]


def test_decoding_bound_refuses_before_reading(tmp_path, clips):
    p = tmp_path / "c.mp4"
    p.write_bytes(clips[".mp4"])
    frames, _ = media.read_video(p)
    assert frames.shape == (3, 16, 16, 3)
    with pytest.raises(ValueError, match="decoding bound") as e:
        media.read_video(p, max_bytes=2 * 16 * 16 * 3)
    assert str(p) in str(e.value) and "\n" not in str(e.value)
