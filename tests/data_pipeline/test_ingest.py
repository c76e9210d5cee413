"""Ingest of real tracker outputs and data sets, built from real data: the DyCheck paper-windmill cameras
and frames of the real sheep video. Projections after conversion must agree with the 2D positions the
source file implies (TAPVid-3D: u = x/z fx + cx on its camera-frame points; TAPIP3D: cv2.projectPoints of
its world points). Bad inputs are refused with the file named and nothing left on disk."""

import json
import pathlib
import shutil

import cv2
import numpy as np
import pytest

from data_pipeline.real import (
    IngestError,
    PairOptions,
    ingest,
    read_dycheck,
    read_kubric,
    read_tapip3d,
    read_tapvid3d,
)
from data_pipeline.shards import PairRecordSource
from trackedit_jax.geometry import Camera, Tracks, dycheck_camera_ids, load_dycheck_cameras, project, save_tracks

T = 40  # frames; at 10 fps two 9-frame windows fit 1-3 s apart
SCALE = 0.25  # DyCheck 720x960 -> 180 wide, 240 high
OPTS = PairOptions(num_frames=9, gap_seconds=(1.0, 3.0), pairs_per_clip=3, min_tracks=40, max_tracks=80)


@pytest.fixture(scope="module")
def real(windmill_dir, sheep_video):
    from trackedit_jax.media import read_video

    ids = dycheck_camera_ids(windmill_dir, 0)[:T]
    cam = load_dycheck_cameras(windmill_dir, ids, image_scale=SCALE)
    H, W = cam.image_size
    frames, _ = read_video(sheep_video)
    video = np.stack([cv2.resize(f, (W, H), interpolation=cv2.INTER_AREA) for f in frames[:T]])
    # 300 static world points in front of the first camera, unprojected from random pixels
    rng = np.random.default_rng(0)
    n = 300
    uv = rng.uniform([0, 0], [W - 1, H - 1], size=(n, 2))
    z = rng.uniform(0.8, 2.5, n)
    K0 = cam.intrinsics[0].astype(np.float64)
    cam_pts = np.stack([(uv[:, 0] - K0[0, 2]) / K0[0, 0] * z, (uv[:, 1] - K0[1, 2]) / K0[1, 1] * z, z], -1)
    E = cam.extrinsics.astype(np.float64)
    R0, t0 = E[0, :3, :3], E[0, :3, 3]
    world = (cam_pts - t0) @ R0  # R^T (x - t)
    xyz = np.broadcast_to(world, (T, n, 3)).copy()
    xyz[:, ::3] += np.linspace(0, 0.3, T)[:, None, None] * np.array([1.0, 0.5, 0.0])  # a third of them move
    return dict(ids=ids, cam=cam, video=video, xyz=xyz, H=H, W=W)


def _visible(xyz, K, E, H, W):
    cam = np.einsum("fij,fnj->fni", E[:, :3, :3], xyz) + E[:, None, :3, 3]
    u = K[:, None, 0, 0] * cam[..., 0] / cam[..., 2] + K[:, None, 0, 2]
    v = K[:, None, 1, 1] * cam[..., 1] / cam[..., 2] + K[:, None, 1, 2]
    return (cam[..., 2] > 0) & (u >= -0.5) & (u <= W - 0.5) & (v >= -0.5) & (v <= H - 0.5)


def _jpegs(video):
    arr = np.empty(len(video), dtype=object)
    for i, f in enumerate(video):
        arr[i] = cv2.imencode(".jpg", f[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
    return arr


def write_tapvid3d(path, real, with_extrinsics=True, frames=None, xyz_override=None):
    K = real["cam"].intrinsics[0].astype(np.float64)
    E = real["cam"].extrinsics.astype(np.float64) if with_extrinsics else np.broadcast_to(np.eye(4), (T, 4, 4))
    xyz = real["xyz"] if xyz_override is None else xyz_override
    cam_xyz = np.einsum("fij,fnj->fni", E[:, :3, :3], xyz) + E[:, None, :3, 3]
    Ks = np.broadcast_to(K, (T, 3, 3))
    vis = _visible(xyz, Ks, E, real["H"], real["W"])
    video = real["video"] if frames is None else frames
    np.savez(
        path,
        images_jpeg_bytes=_jpegs(video),
        tracks_XYZ=cam_xyz,
        visibility=vis,
        fx_fy_cx_cy=np.array([K[0, 0], K[1, 1], K[0, 2], K[1, 2]]),
        queries_xyt=np.zeros((xyz.shape[1], 3)),
        **({"extrinsics_w2c": E} if with_extrinsics else {}),
    )
    u = cam_xyz[..., 0] / cam_xyz[..., 2] * K[0, 0] + K[0, 2]  # the colab's projection of the file
    v = cam_xyz[..., 1] / cam_xyz[..., 2] * K[1, 1] + K[1, 2]
    return np.stack([u, v], -1), vis


def write_tapip3d(path, real, coords=None):
    cam = real["cam"]
    coords = real["xyz"] if coords is None else coords
    K, E = cam.intrinsics.astype(np.float64), cam.extrinsics.astype(np.float64)
    vis = _visible(coords, K, E, real["H"], real["W"])
    video = real["video"].transpose(0, 3, 1, 2).astype(np.float32) / 255.0  # the trackers' layout
    np.savez(
        path,
        coords=coords.astype(np.float32),
        extrinsics=E.astype(np.float32),
        intrinsics=K.astype(np.float32),
        visibs=vis,
        video=video,
    )
    uv = np.stack(
        [
            cv2.projectPoints(coords[f].astype(np.float64), cv2.Rodrigues(E[f, :3, :3])[0], E[f, :3, 3], K[f], None)[0][
                :, 0
            ]
            for f in range(T)
        ]
    )
    return uv, vis


def _match(points, ref):
    """Index in ref (N, 3) of each of points (n, 3) (exact copies up to float32)."""
    d = np.linalg.norm(points[:, None] - ref[None].astype(np.float32), axis=-1)
    idx = d.argmin(1)
    assert d.min(1).max() < 1e-4
    return idx


def _check_records(out, file_uv, file_vis, file_xyz, fps=10.0):
    src = PairRecordSource(out)
    assert len(src) >= 1
    for i in range(len(src)):
        rec = src.decode(i)
        a, b = rec.metadata["source_start"], rec.metadata["target_start"]
        assert 1.0 <= abs(b - a) / fps <= 3.0 and abs(b - a) > 9, "windows must be non-contiguous, 1-3 s apart"
        idx = _match(rec.source_xyz[0], file_xyz[a])
        fa, fb = a + np.arange(9), b + np.arange(9)
        np.testing.assert_array_equal(rec.source_visibility, file_vis[fa][:, idx])
        np.testing.assert_array_equal(rec.target_visibility, file_vis[fb][:, idx])
        assert (rec.source_visibility.any(0) & rec.target_visibility.any(0)).all(), "tracked in both windows"
        assert 40 <= rec.num_tracks <= 80
        for xyz, K, E, fr in (
            (rec.source_xyz, rec.source_intrinsics, rec.source_extrinsics, fa),
            (rec.target_xyz, rec.target_intrinsics, rec.target_extrinsics, fb),
        ):
            uv, _ = project(xyz.astype(np.float64), Camera(K.astype(np.float64), E.astype(np.float64), rec.image_size))
            vis = file_vis[fr][:, idx]
            np.testing.assert_allclose(uv[vis], file_uv[fr][:, idx][vis], atol=2e-2)


def test_tapvid3d_from_real_data(real, tmp_path):
    for with_extr in (True, False):
        path = tmp_path / f"drivetrack_{with_extr}.npz"
        xyz = None
        if not with_extr:  # a static camera (PStudio-like): world = the first camera's frame
            E0 = real["cam"].extrinsics[0].astype(np.float64)
            xyz = real["xyz"] @ E0[:3, :3].T + E0[:3, 3]
        file_uv, file_vis = write_tapvid3d(path, real, with_extrinsics=with_extr, xyz_override=xyz)
        clip = read_tapvid3d(path, fps=10.0)
        uv, _ = project(np.asarray(clip.tracks.xyz, np.float64), clip.camera)
        np.testing.assert_allclose(uv[file_vis], file_uv[file_vis], atol=2e-3)
        np.testing.assert_array_equal(clip.tracks.visibility, file_vis)
        ref = np.stack(
            [
                cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
                for b in np.load(path, allow_pickle=True)["images_jpeg_bytes"]
            ]
        )  # test-side only
        np.testing.assert_array_equal(clip.video, ref)
        out = tmp_path / f"out_{with_extr}"
        m = ingest("tapvid3d", [path], out, options=OPTS, progress=False)
        assert m["num_records"] == 3 and m["edit_family_counts"] == {"real": 3}
        world = np.asarray(clip.tracks.xyz, np.float64)
        _check_records(out, file_uv, file_vis, world)


def test_tapip3d_from_real_data(real, tmp_path):
    path = tmp_path / "sheep.result.npz"
    file_uv, file_vis = write_tapip3d(path, real)
    clip = read_tapip3d(path, fps=10.0)
    uv, _ = project(np.asarray(clip.tracks.xyz, np.float64), clip.camera)
    np.testing.assert_allclose(uv[file_vis], file_uv[file_vis], atol=2e-3)
    assert np.abs(clip.video.astype(int) - real["video"]).max() <= 1  # float [0, 1] round trip
    out = tmp_path / "out"
    ingest("tapip3d", [path], out, options=OPTS, progress=False)
    _check_records(out, file_uv, file_vis, real["xyz"])


def test_dycheck_scene_with_track_file(real, windmill_dir, tmp_path):
    scene = tmp_path / "paper-windmill"
    (scene / "camera").mkdir(parents=True)
    (scene / "rgb" / "4x").mkdir(parents=True)
    for i, f in zip(real["ids"], real["video"]):
        shutil.copy(windmill_dir / "camera" / f"{i}.json", scene / "camera" / f"{i}.json")
        cv2.imwrite(str(scene / "rgb" / "4x" / f"{i}.png"), f[..., ::-1])
    shutil.copy(windmill_dir / "extra.json", scene / "extra.json")
    vis = _visible(
        real["xyz"],
        real["cam"].intrinsics.astype(np.float64),
        real["cam"].extrinsics.astype(np.float64),
        real["H"],
        real["W"],
    )
    save_tracks(scene / "tracks.npz", Tracks(real["xyz"].astype(np.float32), vis), real["cam"])
    clip = read_dycheck(scene)
    assert clip.fps == 30.0 and clip.num_frames == T
    np.testing.assert_array_equal(clip.video, real["video"])
    np.testing.assert_allclose(clip.camera.intrinsics, real["cam"].intrinsics, rtol=1e-6)
    np.testing.assert_allclose(clip.camera.extrinsics, real["cam"].extrinsics, atol=1e-6)
    out = tmp_path / "out"
    m = ingest(
        "dycheck",
        [scene],
        out,
        options=PairOptions(num_frames=5, gap_seconds=(0.3, 1.0), pairs_per_clip=2, min_tracks=40, max_tracks=80),
        progress=False,
    )
    assert m["num_records"] == 2


def _quat_wxyz(R):
    """Rotation matrices (T, 3, 3) -> unit quaternions (T, 4) (w, x, y, z); test-side converter."""
    out = []
    for M in R:
        w = np.sqrt(max(1e-12, 1 + M[0, 0] + M[1, 1] + M[2, 2])) / 2
        if w > 0.1:
            q = [w, (M[2, 1] - M[1, 2]) / (4 * w), (M[0, 2] - M[2, 0]) / (4 * w), (M[1, 0] - M[0, 1]) / (4 * w)]
        else:
            i = int(np.argmax(np.diag(M)))
            j, k = (i + 1) % 3, (i + 2) % 3
            s = np.sqrt(1 + M[i, i] - M[j, j] - M[k, k]) * 2
            q = np.zeros(4)
            q[0] = (M[k, j] - M[j, k]) / s
            q[1 + i], q[1 + j], q[1 + k] = s / 4, (M[j, i] + M[i, j]) / s, (M[k, i] + M[i, k]) / s
        out.append(np.asarray(q) / np.linalg.norm(q))
    return np.stack(out)


def test_kubric_conventions_against_exact_synthetic_scene(tmp_path):
    """A Kubric-format example rendered by our ray caster (OpenGL c2w camera, wxyz quaternions, ray-length
    depth): after ingest the cameras equal the renderer's, and lifted tracks lie on the surfaces of their
    objects in every frame (checked with the objects' implicit equations)."""
    from data_pipeline.synthetic.raycast import BOX, SPHERE
    from data_pipeline.synthetic.render import evaluate_clip, render_clip
    from data_pipeline.synthetic.scene import random_scene

    rng = np.random.default_rng(3)
    scene = random_scene(rng, num_rigid=3)
    scene = scene.replace(objects=tuple(o for o in scene.objects if not o.articulated))
    Tk, H, W = 8, 36, 48
    geom = evaluate_clip(scene, Tk, (H, W))
    r = render_clip(geom, dtype=np.float64)
    K = geom.intrinsics[0]
    ray = np.stack([*np.meshgrid(np.arange(W), np.arange(H)), np.ones((H, W))], -1) @ np.linalg.inv(K).T
    depth = r["depth"] * np.linalg.norm(ray, axis=-1)[None]  # ray length
    seg = np.where(r["pid"] >= 2, r["pid"] - 1, 0)  # rigid: prim 2 + k <-> instance k
    E = geom.extrinsics()
    c2w_cv = np.linalg.inv(E)
    R_gl = c2w_cv[:, :3, :3] @ np.diag([1.0, -1.0, -1.0])
    prims = geom.prims[2:]
    path = tmp_path / "movi_example.npz"
    np.savez(
        path,
        video=r["rgb"],
        depth=depth[..., None].astype(np.float32),
        segmentations=seg[..., None].astype(np.uint8),
        **{
            "camera/positions": c2w_cv[:, :3, 3],
            "camera/quaternions": _quat_wxyz(R_gl),
            "camera/focal_length": np.float64(K[0, 0] / W * 32.0),
            "camera/sensor_width": np.float64(32.0),
            "instances/positions": np.stack([p.pose.t for p in prims]),
            "instances/quaternions": np.stack([_quat_wxyz(p.pose.R) for p in prims]),
        },
    )
    clip = read_kubric(path, num_tracks=400, seed=0)
    np.testing.assert_allclose(clip.camera.extrinsics, E, atol=1e-5)
    np.testing.assert_allclose(clip.camera.intrinsics, geom.intrinsics, rtol=1e-6)
    xyz = np.asarray(clip.tracks.xyz, np.float64)
    vis = np.asarray(clip.tracks.visibility)
    # which object is each track on? the segment at its first visible pixel
    uv, _ = project(xyz, clip.camera)
    on_surface = total = 0
    for n in range(xyz.shape[1]):
        f0 = int(np.argmax(vis[:, n]))
        if not vis[f0, n]:
            continue
        x, y = np.clip(np.round(uv[f0, n]).astype(int), 0, [W - 1, H - 1])
        k = seg[f0, y, x]
        if k == 0:
            continue
        p = prims[k - 1]
        q = np.einsum("fji,fj->fi", p.pose.R, xyz[:, n] - p.pose.t)  # local coords in every frame
        if p.kind == SPHERE:
            resid = np.abs(np.linalg.norm(q, axis=-1) - p.size[0]) / p.size[0]
        elif p.kind == BOX:
            resid = np.abs(np.max(np.abs(q) / p.size, axis=-1) - 1)
        else:
            rad = np.hypot(q[:, 0], q[:, 1])
            resid = np.minimum(np.abs(rad - p.size[0]) / p.size[0], np.abs(np.abs(q[:, 2]) - p.size[2]) / p.size[2])
        total += 1
        on_surface += resid.max() < 1e-3
    assert total > 30 and on_surface / total > 0.95, (on_surface, total)
    out = tmp_path / "out"
    m = ingest(
        "kubric",
        [path],
        out,
        fps=4.0,
        options=PairOptions(num_frames=1, gap_seconds=(0.5, 1.0), pairs_per_clip=2, min_tracks=10, max_tracks=50),
        progress=False,
    )
    assert m["num_records"] == 2


# ----------------------------------------------------------------------------- bad input
def _nothing_written(out: pathlib.Path):
    return not out.exists() or not [p for p in out.rglob("*") if p.is_file() or p.name.startswith(".staging")]


def test_nan_tracks_rejected(real, tmp_path):
    coords = real["xyz"].copy()
    coords[7, 11, 1] = np.nan
    bad = tmp_path / "nan.npz"
    write_tapip3d(bad, real, coords=np.nan_to_num(coords, nan=0.0))
    d = dict(np.load(bad))
    d["coords"][7, 11, 1] = np.nan
    np.savez(bad, **d)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"nan\.npz.*NaN.*frame 7, point 11"):
        ingest("tapip3d", [bad], out, options=OPTS, progress=False)
    assert _nothing_written(out)
    vbad = tmp_path / "nan_tapvid.npz"
    xyz = real["xyz"].copy()
    xyz[3, 4] = np.inf
    write_tapvid3d(vbad, real, xyz_override=xyz)
    with pytest.raises(IngestError, match=r"nan_tapvid\.npz.*NaN/inf.*frame 3, track 4"):
        read_tapvid3d(vbad)


def test_mismatched_frame_counts_rejected(real, tmp_path):
    bad = tmp_path / "short.npz"
    write_tapvid3d(bad, real, frames=real["video"][:-1])
    with pytest.raises(IngestError, match=r"short\.npz: tracks_XYZ has 40 frames but images_jpeg_bytes has 39"):
        read_tapvid3d(bad)
    bad2 = tmp_path / "short_tapip3d.npz"
    write_tapip3d(bad2, real)
    d = dict(np.load(bad2))
    d["video"] = d["video"][:-2]
    np.savez(bad2, **d)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"short_tapip3d\.npz.*'video' has 38 frames but 'coords' has 40"):
        ingest("tapip3d", [bad2], out, options=OPTS, progress=False)
    assert _nothing_written(out)


def test_unknown_format_and_hostile_pickle_rejected(real, tmp_path):
    with pytest.raises(ValueError, match="unknown format 'mp4'"):
        ingest("mp4", [tmp_path / "x"], tmp_path / "out")

    class Evil:
        def __reduce__(self):
            return (shutil.rmtree, (str(tmp_path / "victim"),))

    (tmp_path / "victim").mkdir()
    path = tmp_path / "evil.npz"
    arr = np.empty(2, dtype=object)
    arr[0], arr[1] = b"x", Evil()
    np.savez(
        path,
        images_jpeg_bytes=arr,
        tracks_XYZ=np.ones((2, 1, 3)),
        visibility=np.ones((2, 1), bool),
        fx_fy_cx_cy=np.ones(4),
    )
    with pytest.raises(IngestError, match=r"evil\.npz.*refusing to unpickle"):
        read_tapvid3d(path)
    assert (tmp_path / "victim").is_dir()
    path2 = tmp_path / "pickled_tracks.npz"  # object arrays outside images_jpeg_bytes are never unpickled
    np.savez(
        path2,
        images_jpeg_bytes=_jpegs(real["video"][:2]),
        tracks_XYZ=np.array([None, None], dtype=object),
        visibility=np.ones((2, 1), bool),
        fx_fy_cx_cy=np.ones(4),
    )
    with pytest.raises(IngestError, match=r"pickled_tracks\.npz.*tracks_XYZ.*refused"):
        read_tapvid3d(path2)


def test_skip_and_count_bad_inputs_and_cli(real, tmp_path):
    from trackedit_jax.cli import main

    good = tmp_path / "good.npz"
    write_tapip3d(good, real)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    out = tmp_path / "out"
    m = ingest("tapip3d", [good, bad], out, options=OPTS, on_error="skip", progress=False)
    assert m["num_records"] == 3 and len(m["skipped_inputs"]) == 1 and "bad.npz" in m["skipped_inputs"][0]["file"]
    out2 = tmp_path / "out2"
    argv = ["ingest", "--format", "tapip3d", "--out", str(out2), "--frames", "9", "--gap-seconds", "1", "3"]
    argv += ["--min-tracks", "40", "--max-tracks", "80"]
    assert main([*argv, str(good), str(bad)]) == 2
    assert _nothing_written(out2)
    assert main([*argv, "--pairs-per-clip", "2", "--on-error", "skip", str(good), str(bad)]) == 0
    m2 = json.loads((out2 / "manifest.json").read_text())
    assert m2["num_records"] == 2 and "not an .npz" in m2["skipped_inputs"][0]["reason"]


def test_stabilize_static_background_tracks(real):
    from data_pipeline.real import stabilize_static_tracks

    rng = np.random.default_rng(1)
    xyz = real["xyz"] + rng.normal(scale=2e-3, size=real["xyz"].shape)  # tracker jitter
    tracks = Tracks(xyz.astype(np.float32), np.ones(xyz.shape[:2], bool))
    out, static = stabilize_static_tracks(tracks, real["cam"], threshold=0.01)
    moving = np.zeros(xyz.shape[1], bool)
    moving[::3] = True
    np.testing.assert_array_equal(static, ~moving)
    assert np.ptp(np.asarray(out.xyz)[:, static], axis=0).max() == 0  # exactly static now
    np.testing.assert_array_equal(np.asarray(out.xyz)[:, moving], np.asarray(tracks.xyz)[:, moving])


def test_make_data_cli(tmp_path):
    from trackedit_jax.cli import main

    out = tmp_path / "syn"
    assert (
        main(
            [
                "make-data",
                "synthetic",
                "--out",
                str(out),
                "--num-pairs",
                "2",
                "--frames",
                "5",
                "--size",
                "16x20",
                "--tracks",
                "16",
                "--families",
                "removal,duplication",
                "--with-warp",
            ]
        )
        == 0
    )
    m = json.loads((out / "manifest.json").read_text())
    assert m["num_records"] == 2 and m["edit_family_counts"] == {"duplication": 1, "removal": 1}
    assert m["generator"]["config"]["with_warp"]
    assert main(["make-data", "verify", str(out)]) == 0

    source = PairRecordSource(sorted(out.glob("*.array_record")))
    assert all(source.decode(i).video("warp").shape == (5, 16, 20, 3) for i in range(len(source)))
    with pytest.raises(SystemExit) as e:
        main(["make-data", "synthetic", "--out", str(out), "--num-pairs", "2", "--size", "16by20"])
    assert e.value.code == 2
