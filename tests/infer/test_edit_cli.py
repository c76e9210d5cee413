"""`trackedit edit` end to end on the real sheep video, and every bad input it must refuse in one line
without leaving files behind."""

import json

import numpy as np
import pytest
from infer_assets import scene

from trackedit_jax.cli import main
from trackedit_jax.geometry.io import load_track_file, save_tracks
from trackedit_jax.geometry.types import Tracks
from trackedit_jax.media import read_video


@pytest.fixture(scope="module")
def track_files(tmp_path_factory, sheep_frames):
    frames, _ = sheep_frames
    root = tmp_path_factory.mktemp("tracks")
    tracks, camera = scene(frames.shape[0], frames.shape[1:3], num_points=40, seed=4)
    save_tracks(root / "source.npz", tracks, camera)
    moved = Tracks(np.asarray(tracks.xyz) + np.array([0.0, -0.3, 0.2], np.float32), tracks.visibility)
    save_tracks(root / "target.npz", moved, camera)
    (root / "orbit.yaml").write_text(
        "camera:\n  - {op: arc, degrees: 15, axis: [0, -1, 0]}\n"
        "objects:\n  - select: {box: [362, 0, 724, 406], frame: 0}\n"
        "    ops:\n      - {op: translate, offset: [0.3, 0.0, 0.0]}\n"
    )
    return root


def _edit(args, **kw):
    base = dict(steps="2", quiet=True)
    base.update(kw)
    argv = ["edit", *args]
    for k, v in base.items():
        flag = "--" + k.replace("_", "-")
        argv += [flag] if v is True else [flag, str(v)]
    return main(argv)


def test_edit_with_an_edit_spec_writes_three_files(sheep_video, tiny_checkpoint, track_files, tmp_path, capsys):
    out = tmp_path / "result" / "sheep_orbit.mp4"
    code = _edit(
        [
            "--video",
            str(sheep_video),
            "--tracks",
            str(track_files / "source.npz"),
            "--edit",
            str(track_files / "orbit.yaml"),
            "--checkpoint",
            str(tiny_checkpoint),
            "--out",
            str(out),
        ]
    )
    assert code == 0, capsys.readouterr().err
    video, fps = read_video(out)
    assert video.shape == (9, 32, 32, 3) and fps == pytest.approx(10.0)
    sbs, _ = read_video(out.with_name("sheep_orbit_side_by_side.mp4"))
    assert sbs.shape == (9, 32, 4 * 32 + 3 * 4, 3)
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["settings"]["num_steps"] == 2 and meta["settings"]["solver"] == "unipc"
    assert meta["settings"]["frames_used"] == 9 and meta["settings"]["resize_mode"] == "crop"
    assert meta["inputs"]["edit_log"][0] == "camera: arc" and meta["inputs"]["video_shape"] == [120, 406, 724, 3]
    assert meta["versions"]["jax"] and meta["timings_seconds"]["sampling"] > 0
    assert meta["checkpoint"]["grid"] == [9, 32, 32]
    assert sorted(p.name for p in out.parent.iterdir()) == [
        "sheep_orbit.json",
        "sheep_orbit.mp4",
        "sheep_orbit_side_by_side.mp4",
    ]


def test_edit_with_target_tracks_prompt_and_input_size(sheep_video, tiny_checkpoint, track_files, tmp_path, capsys):
    out = tmp_path / "moved.mp4"
    code = _edit(
        [
            "--video",
            str(sheep_video),
            "--tracks",
            str(track_files / "source.npz"),
            "--target-tracks",
            str(track_files / "target.npz"),
            "--checkpoint",
            str(tiny_checkpoint),
            "--out",
            str(out),
        ],
        prompt="a sheep",
        guidance=4.0,
        seed=2,
        max_frames=5,
        output_size="input",
        resize="stretch",
    )
    assert code == 0, capsys.readouterr().err
    video, _ = read_video(out)
    assert video.shape == (5, 406, 724, 3)  # 5 frames, back at the input's size (stretch)
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["settings"]["cfg"] and meta["settings"]["guidance"] == 4.0 and meta["settings"]["prompt"] == "a sheep"
    assert meta["settings"]["frames_used"] == 5 and meta["settings"]["frames_padded_to"] == 5


def _bad_inputs(root, sheep_video):
    """name -> (argv pieces replacing the good ones, expected message fragment)."""
    (root / "not_a_video.mp4").write_text("this is text, not a video")
    (root / "truncated.npz").write_bytes((root / "source.npz").read_bytes()[:300])  # a broken download
    np.savez(root / "no_coords.npz", extrinsics=np.zeros((3, 4, 4)))
    src = load_track_file(root / "source.npz")
    xyz = np.asarray(src.tracks.xyz).copy()
    xyz[10, 3] = np.nan
    np.savez(
        root / "nan.npz",
        coords=xyz,
        extrinsics=src.camera.extrinsics,
        intrinsics=src.camera.intrinsics,
        visibs=src.tracks.visibility,
        image_size=np.array(src.camera.image_size),
    )
    short, cam = scene(50, (406, 724), num_points=10)
    save_tracks(root / "short.npz", short, cam)
    return {
        "unreadable video": (["--video", str(root / "not_a_video.mp4")], "cannot decode video"),
        "missing video": (["--video", str(root / "missing.mp4")], "video not found"),
        "missing tracks": (["--tracks", str(root / "missing.npz")], "track file not found"),
        "malformed tracks": (["--tracks", str(root / "truncated.npz")], "not a readable .npz track file"),
        "tracks without coords": (["--tracks", str(root / "no_coords.npz")], "missing key(s) ['coords'"),
        "NaN tracks": (["--tracks", str(root / "nan.npz")], "NaN"),
        "frame-count mismatch": (
            ["--tracks", str(root / "short.npz")],
            "frame count mismatch: video F=120, tracks F=50",
        ),
        "checkpoint not found": (["--checkpoint", str(root / "no_model")], "checkpoint not found"),
        "checkpoint not a model": (["--checkpoint", str(root)], "no config.json"),
        "malformed edit spec": (["--edit", str(root / "missing.yaml")], "edit spec not found"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "unreadable video",
        "missing video",
        "missing tracks",
        "malformed tracks",
        "tracks without coords",
        "NaN tracks",
        "frame-count mismatch",
        "checkpoint not found",
        "checkpoint not a model",
        "malformed edit spec",
    ],
)
def test_bad_input_fails_in_one_line_without_output(case, sheep_video, tiny_checkpoint, track_files, tmp_path, capsys):
    cases = _bad_inputs(track_files, sheep_video)
    replace, message = cases[case]
    good = {
        "--video": str(sheep_video),
        "--tracks": str(track_files / "source.npz"),
        "--target-tracks": str(track_files / "target.npz"),
        "--checkpoint": str(tiny_checkpoint),
    }
    if replace[0] == "--edit":
        del good["--target-tracks"]
    good[replace[0]] = replace[1]
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    args = [x for kv in good.items() for x in kv] + ["--out", str(out_dir / "edited.mp4")]
    assert _edit(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("trackedit edit: error: ") and message in err, err
    assert list(out_dir.iterdir()) == []


def test_debug_shows_the_traceback(sheep_video, tiny_checkpoint, track_files, tmp_path):
    args = [
        "--video",
        str(sheep_video),
        "--tracks",
        str(tmp_path / "missing.npz"),
        "--target-tracks",
        str(track_files / "target.npz"),
        "--checkpoint",
        str(tiny_checkpoint),
        "--out",
        str(tmp_path / "o.mp4"),
    ]
    with pytest.raises(FileNotFoundError, match="track file not found"):
        main(["edit", "--debug", *args])
    assert list(tmp_path.iterdir()) == []


def test_failure_after_sampling_leaves_no_file(
    sheep_video, tiny_checkpoint, track_files, tmp_path, monkeypatch, capsys
):
    """An error while writing the second output removes the first one too."""
    import trackedit_jax.media as media

    real = media.write_video
    written = []

    def flaky(path, frames, fps=16.0):
        if written:
            raise ValueError("disk full (simulated)")
        written.append(path)
        return real(path, frames, fps)

    monkeypatch.setattr(media, "write_video", flaky)
    out = tmp_path / "x.mp4"
    code = _edit(
        [
            "--video",
            str(sheep_video),
            "--tracks",
            str(track_files / "source.npz"),
            "--target-tracks",
            str(track_files / "target.npz"),
            "--checkpoint",
            str(tiny_checkpoint),
            "--out",
            str(out),
        ]
    )
    assert code == 2 and "disk full" in capsys.readouterr().err
    assert written and list(tmp_path.iterdir()) == []
