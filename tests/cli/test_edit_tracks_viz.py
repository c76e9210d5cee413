"""`trackedit edit-tracks` and `trackedit viz` end to end (in-process through the dispatcher)."""

import textwrap

import numpy as np
import pytest

from trackedit_jax.cli import main
from trackedit_jax.geometry import Camera, Tracks, in_image, load_dycheck_cameras, load_track_file, project, save_tracks
from trackedit_jax.geometry import edits as E


def _scene(F=9, N=40, H=96, W=128, seed=0):
    rng = np.random.default_rng(seed)
    K = np.tile(np.array([[100.0, 0, W / 2], [0, 100, H / 2], [0, 0, 1]], np.float32), (F, 1, 1))
    Ex = np.tile(np.eye(4, dtype=np.float32), (F, 1, 1))
    Ex[:, 0, 3] = -np.linspace(0, 0.2, F)
    xyz = np.broadcast_to(rng.uniform([-1, -0.8, 3], [1, 0.8, 5], (N, 3)), (F, N, 3)).astype(np.float32).copy()
    return Tracks(xyz, np.ones((F, N), bool)), Camera(K, Ex, (H, W))


@pytest.fixture
def src_file(tmp_path):
    tr, cam = _scene()
    path = tmp_path / "src.npz"
    save_tracks(path, tr, cam)
    return path


def _spec(tmp_path, text, name="edit.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def test_edit_tracks_writes_target_in_order_with_source_ids(tmp_path, src_file, capsys):
    spec = _spec(
        tmp_path,
        """\
        camera:
          - {op: pan, degrees: 5}
        objects:
          - select: {ids: [3, 4, 5]}
            ops:
              - {op: translate, offset: [0.1, 0.0, 0.0]}
              - {op: duplicate, offset: [0.0, 0.2, 0.0]}
          - select: {ids: [7]}
            ops:
              - {op: remove, mode: drop}
        """,
    )
    out = tmp_path / "tgt.npz"
    assert main(["edit-tracks", "--tracks", str(src_file), "--edit", str(spec), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "behind the camera" in printed and f"wrote {out}" in printed
    tgt = load_track_file(out)
    src = load_track_file(src_file)
    expected_ids = np.concatenate([np.delete(np.arange(40), 7), [3, 4, 5]])
    np.testing.assert_array_equal(tgt.tracks.ids, expected_ids)
    moved = E.translate(src.tracks, E.select_ids(40, [3, 4, 5]), [0.1, 0, 0])
    np.testing.assert_allclose(tgt.tracks.xyz[:, :39], np.asarray(moved.xyz)[:, np.delete(np.arange(40), 7)], atol=1e-6)
    np.testing.assert_allclose(tgt.tracks.xyz[:, 39:], np.asarray(moved.xyz)[:, [3, 4, 5]] + [0, 0.2, 0], atol=1e-6)
    np.testing.assert_allclose(tgt.camera.extrinsics, E.pan(src.camera, 5).extrinsics, atol=1e-6)
    assert tgt.camera.image_size == src.camera.image_size


@pytest.mark.parametrize(
    "text,words",
    [
        ("camera:\n  - {op: spin, degrees: 3}\n", "edit.yaml:2: camera[0].op: unknown camera op 'spin'"),
        ("camera:\n  - {op: pan}\n", "edit.yaml:2: camera[0]: the camera op 'pan' needs field 'degrees'"),
        ("camera:\n  - {op: pan, degrees: [3]}\n", "edit.yaml:2: camera[0].degrees: expected a number"),
        ("camera:\n  - {op: path, file: missing.npz}\n", "edit.yaml:2: camera[0].file: file not found"),
    ],
)
def test_edit_tracks_errors_write_nothing(tmp_path, src_file, capsys, text, words):
    out = tmp_path / "tgt.npz"
    code = main(["edit-tracks", "--tracks", str(src_file), "--edit", str(_spec(tmp_path, text)), "--out", str(out)])
    assert code == 2
    assert words in capsys.readouterr().err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["edit.yaml", "src.npz"]


def test_edit_tracks_strict_refuses_risky_targets(tmp_path, src_file, capsys):
    spec = _spec(tmp_path, "camera:\n  - {op: pan, degrees: 170, ease: constant}\n")  # looks away from the scene
    out = tmp_path / "tgt.npz"
    assert main(["edit-tracks", "--tracks", str(src_file), "--edit", str(spec), "--out", str(out), "--strict"]) == 2
    captured = capsys.readouterr()
    assert "WARNING" in captured.out and "--strict" in captured.err and not out.exists()
    assert main(["edit-tracks", "--tracks", str(src_file), "--edit", str(spec), "--out", str(out)]) == 0
    assert out.exists()


def test_edit_tracks_and_viz_take_paths_relative_to_the_working_directory(tmp_path, src_file, monkeypatch, capsys):
    """Run from tmp_path/elsewhere with ../src.npz-style paths: outputs land where the paths say, and the
    messages name them absolute."""
    _spec(tmp_path, "camera:\n  - {op: pan, degrees: 5}\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["edit-tracks", "--tracks", "../src.npz", "--edit", "../edit.yaml", "--out", "../tgt.npz"]) == 0
    assert f"wrote {tmp_path / 'tgt.npz'} (" in capsys.readouterr().out
    assert load_track_file(tmp_path / "tgt.npz").tracks.num_points == load_track_file(src_file).tracks.num_points
    for out in ("viz.mp4", "cams.png"):
        assert main(["viz", "--tracks", "../src.npz", "--target", "../tgt.npz", "--out", out]) == 0
        assert f"wrote {elsewhere / out} (" in capsys.readouterr().out
    assert sorted(p.name for p in elsewhere.iterdir()) == ["cams.png", "viz.mp4"]


def test_edit_tracks_replaces_the_path_with_dycheck_cameras(tmp_path, windmill_dir):
    dy = load_dycheck_cameras(windmill_dir)
    tr, cam = _scene(F=dy.num_frames, N=8)
    save_tracks(tmp_path / "src.npz", tr, cam)
    spec = _spec(tmp_path, f"camera:\n  - {{op: path, file: '{windmill_dir}', align: none}}\n")
    out = tmp_path / "tgt.npz"
    assert main(["edit-tracks", "--tracks", str(tmp_path / "src.npz"), "--edit", str(spec), "--out", str(out)]) == 0
    tgt = load_track_file(out)
    np.testing.assert_allclose(tgt.camera.extrinsics, dy.extrinsics, atol=1e-6)
    np.testing.assert_array_equal(tgt.tracks.xyz, tr.xyz)


def test_list_ops(capsys):
    assert main(["edit-tracks", "--list-ops"]) == 0
    assert "keyframes" in capsys.readouterr().out


def _bright(frame, u, v, r=1):
    iu, iv = int(round(u)), int(round(v))
    return frame[max(iv - r, 0) : iv + r + 1, max(iu - r, 0) : iu + r + 1].max()


def test_viz_video_draws_points_where_tracks_project(tmp_path, src_file):
    from trackedit_jax.media import read_video

    tgt_spec = _spec(
        tmp_path,
        "objects:\n  - select: {ids: [0, 1, 2, 3, 4]}\n    ops:\n      - {op: translate, offset: [0.6, 0.0, 0.0]}\n",
    )
    tgt = tmp_path / "tgt.npz"
    assert main(["edit-tracks", "--tracks", str(src_file), "--edit", str(tgt_spec), "--out", str(tgt)]) == 0
    out = tmp_path / "viz.mp4"
    assert main(["viz", "--tracks", str(src_file), "--target", str(tgt), "--out", str(out), "--radius", "3"]) == 0
    frames, _ = read_video(out)
    src, dst = load_track_file(src_file), load_track_file(tgt)
    H, W = src.camera.image_size
    assert frames.shape == (9, H, 2 * W + 4, 3)  # two panels and a 4 px gap
    lum = frames.astype(np.int32).max(-1)
    for panel, tf, x0 in ((0, src, 0), (1, dst, W + 4)):
        uv, z = project(
            np.asarray(tf.tracks.xyz, np.float64),
            tf.camera.replace(
                intrinsics=np.asarray(tf.camera.intrinsics, np.float64),
                extrinsics=np.asarray(tf.camera.extrinsics, np.float64),
            ),
        )
        on = (z > 0) & in_image(uv, (H, W))
        for f in (0, 4, 8):
            pts = uv[f][on[f]]
            assert len(pts) > 10
            for u, v in pts:
                assert _bright(lum[f], u + x0, v) > 80, f"panel {panel} frame {f}: nothing drawn at ({u:.1f}, {v:.1f})"
            # pixels farther than 6 px from every drawn point stay black (no video: black background),
            # apart from the panel's label in the top rows
            yy, xx = np.mgrid[0:H, 0:W]
            dist = np.min(np.hypot(xx[..., None] - pts[:, 0], yy[..., None] - pts[:, 1]), axis=-1)
            assert lum[f][:, x0 : x0 + W][(dist > 6) & (yy > 18)].max() < 40


def test_viz_png_camera_paths_and_video_checks(tmp_path, src_file, capsys):
    import cv2

    from trackedit_jax.media import write_video

    png = tmp_path / "cams.png"
    assert main(["viz", "--tracks", str(src_file), "--out", str(png)]) == 0
    img = cv2.imread(str(png))
    assert img is not None and img.shape[0] > 300 and img.shape[1] > 300 and img.std() > 5
    vid = tmp_path / "in.mp4"
    write_video(vid, np.full((9, 48, 64, 3), 90, np.uint8), fps=5)  # half the camera's resolution
    out = tmp_path / "over.mp4"
    assert main(["viz", "--tracks", str(src_file), "--video", str(vid), "--out", str(out)]) == 0
    from trackedit_jax.media import read_video

    frames, fps = read_video(out)
    assert frames.shape == (9, 48, 64, 3) and fps == pytest.approx(5)
    write_video(vid, np.zeros((7, 48, 64, 3), np.uint8), fps=5)
    assert main(["viz", "--tracks", str(src_file), "--video", str(vid), "--out", str(tmp_path / "bad.mp4")]) == 2
    assert "frame count mismatch: tracks F=9, video F=7" in capsys.readouterr().err
    assert not (tmp_path / "bad.mp4").exists()
    assert main(["viz", "--tracks", str(src_file), "--out", str(tmp_path / "x.txt")]) == 2
