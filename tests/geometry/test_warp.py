"""The classical warp (source pixels moved with the tracks' 3D motion) on cases with a known answer."""

import numpy as np
from textures import smooth_texture

from trackedit_jax.eval import metrics as M
from trackedit_jax.geometry.projection import project, unproject
from trackedit_jax.geometry.types import Camera, Tracks
from trackedit_jax.geometry.warp import COVERED, FROM_OTHER_FRAME, INPAINTED, coverage_video, warp_video


def _camera(F, H, W, R):
    K = np.array([[40.0, 0, (W - 1) / 2], [0, 40.0, (H - 1) / 2], [0, 0, 1]])
    E = np.tile(np.eye(4), (F, 1, 1))
    E[:, :3, :3] = R
    return Camera(np.tile(K, (F, 1, 1)), E, (H, W))


def test_warp_is_near_perfect_for_a_pure_camera_rotation():
    """A rotation about the camera centre is a homography: depth and the tracks' placement do not matter."""
    import cv2

    F, H, W = 3, 48, 64
    tex = (smooth_texture(H, W, seed=5) * 255).astype(np.uint8)
    src_cam = _camera(F, H, W, np.eye(3))
    angle = np.radians(4.0)
    R = cv2.Rodrigues(np.array([0.0, angle, 0.0]))[0]
    tgt_cam = _camera(F, H, W, R)
    video = np.repeat(tex[None], F, 0)
    depth = np.full((F, H, W), 5.0) + np.random.default_rng(0).uniform(0, 3, (F, H, W))  # any depth
    rng = np.random.default_rng(6)
    uv = np.stack([rng.uniform(0, W - 1, 300), rng.uniform(0, H - 1, 300)], -1)
    xyz = unproject(np.repeat(uv[None], F, 0), np.full((F, 300), 6.0), src_cam)
    tracks = Tracks(xyz.astype(np.float32), np.ones((F, 300), bool))
    out = warp_video(video, tracks, src_cam, tracks, tgt_cam, source_depth=depth)
    # the exact answer: target pixel -> source pixel through the homography K R^T K^-1
    K = src_cam.intrinsics[0]
    Hm = K @ R.T @ np.linalg.inv(K)
    expected = cv2.warpPerspective(tex.astype(np.float32), Hm, (W, H), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
    inner = (slice(6, H - 6), slice(10, W - 10))  # away from the border the rotation brings in
    err = np.abs(out[0].astype(np.float32) - expected)[inner]
    assert M.psnr(out[:1, inner[0], inner[1]], expected[None, inner[0], inner[1]].round().astype(np.uint8)) > 28
    assert np.median(err) < 6
    # same with the depth taken from the tracks instead of a depth map
    out2 = warp_video(video, tracks, src_cam, tracks, tgt_cam)
    assert M.psnr(out2[:1, inner[0], inner[1]], expected[None, inner[0], inner[1]].round().astype(np.uint8)) > 28


def test_warp_moves_an_object_with_its_tracks():
    """A square translated by its tracks lands where the target tracks say; copy would not."""
    F, H, W = 2, 40, 40
    cam = _camera(F, H, W, np.eye(3))
    bg = np.full((H, W, 3), 40, np.uint8)
    video = np.repeat(bg[None], F, 0)
    video[:, 10:20, 10:20] = (220, 30, 30)
    depth = np.full((F, H, W), 10.0)
    depth[:, 10:20, 10:20] = 5.0
    ys, xs = np.mgrid[0:H:2, 0:W:2]
    uv = np.stack([xs.ravel(), ys.ravel()], -1).astype(np.float64)
    on = (uv[:, 0] >= 10) & (uv[:, 0] < 20) & (uv[:, 1] >= 10) & (uv[:, 1] < 20)
    d = np.where(on, 5.0, 10.0)
    xyz_s = unproject(np.repeat(uv[None], F, 0), np.repeat(d[None], F, 0), cam)
    shift = np.zeros_like(xyz_s)
    shift[:, on, 0] = 5.0 * 12 / 40.0  # 12 px to the right at depth 5 (focal 40)
    src = Tracks(xyz_s.astype(np.float32), np.ones(xyz_s.shape[:2], bool))
    tgt = Tracks((xyz_s + shift).astype(np.float32), np.ones(xyz_s.shape[:2], bool))
    out = warp_video(video, src, cam, tgt, cam, source_depth=depth)
    assert np.all(out[:, 12:18, 24:30] == (220, 30, 30))
    uv_t, _ = project((xyz_s + shift)[:, on], cam)
    assert np.allclose(uv_t[..., 0].min(), 22.0, atol=0.01)


def test_warp_reads_colours_between_pixels():
    """A sub-pixel camera rotation over a smooth texture: colours read at sub-pixel source positions match
    the exact homography to within a grey level or two (a nearest-pixel splat is off by up to half a pixel of
    texture gradient)."""
    import cv2

    F, H, W = 1, 48, 64
    tex = (smooth_texture(H, W, seed=3) * 255).astype(np.uint8)
    src_cam = _camera(F, H, W, np.eye(3))
    R = cv2.Rodrigues(np.array([0.004, 0.0093, 0.0]))[0]  # about 0.37 px right and 0.16 px down
    tgt_cam = _camera(F, H, W, R)
    depth = np.full((F, H, W), 6.0)
    rng = np.random.default_rng(2)
    uv = np.stack([rng.uniform(0, W - 1, 200), rng.uniform(0, H - 1, 200)], -1)
    tracks = Tracks(unproject(uv[None], np.full((F, 200), 6.0), src_cam).astype(np.float32), np.ones((F, 200), bool))
    out = warp_video(tex[None], tracks, src_cam, tracks, tgt_cam, source_depth=depth)
    K = src_cam.intrinsics[0]
    Hm = K @ R.T @ np.linalg.inv(K)
    expected = cv2.warpPerspective(tex.astype(np.float32), Hm, (W, H), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
    err = np.abs(out[0].astype(np.float32) - expected)[4:-4, 4:-4]
    assert np.sqrt(np.mean(err**2)) < 1.5, np.sqrt(np.mean(err**2))


def _moving_square_scene(F=5, H=32, W=48, size=8):
    """A square at depth 5 sliding right over a textured plane at depth 10 (static camera): (video, depth,
    background (H, W, 3), source tracks, the square's rows x0 per frame, camera, on-square track mask)."""
    cam = _camera(F, H, W, np.eye(3))
    bg = (smooth_texture(H, W, seed=8) * 255).astype(np.uint8)
    x0 = np.linspace(4, W - size - 4, F).round().astype(int)
    video = np.repeat(bg[None], F, 0)
    depth = np.full((F, H, W), 10.0)
    for f in range(F):
        video[f, 12 : 12 + size, x0[f] : x0[f] + size] = (230, 20, 200)
        depth[f, 12 : 12 + size, x0[f] : x0[f] + size] = 5.0
    ys, xs = np.mgrid[0:H:2, 0:W:2]
    bg_uv = np.stack([xs.ravel(), ys.ravel()], -1).astype(np.float64)
    sq_y, sq_x = np.mgrid[0:size:2, 0:size:2]
    sq_uv = np.stack([sq_x.ravel(), sq_y.ravel() + 12], -1).astype(np.float64)
    xyz = []
    for f in range(F):
        cam_f = Camera(cam.intrinsics[f : f + 1], cam.extrinsics[f : f + 1], (H, W))
        b = unproject(bg_uv[None], np.full((1, len(bg_uv)), 10.0), cam_f)[0]
        s = unproject((sq_uv + [x0[f], 0])[None], np.full((1, len(sq_uv)), 5.0), cam_f)[0]
        xyz.append(np.concatenate([b, s]))
    xyz = np.stack(xyz)
    on = np.arange(xyz.shape[1]) >= len(bg_uv)
    return video, depth, bg, Tracks(xyz.astype(np.float32), np.ones(xyz.shape[:2], bool)), x0, cam, on


def test_warp_fills_what_an_object_uncovers_from_the_other_frames():
    """The sliding square is moved out of view in the target: where it was, every frame shows the background
    it hides, which the other source frames saw. Filled from them it is the plane's texture; inpainting alone
    only smears the border."""
    video, depth, bg, src, x0, cam, on = _moving_square_scene()
    xyz_t = np.asarray(src.xyz, np.float64).copy()
    xyz_t[:, on, 0] += 100 * 5.0 / 40.0  # 100 px to the right at depth 5
    tgt = Tracks(xyz_t.astype(np.float32), src.visibility)
    uncovered = np.zeros(video.shape[:3], bool)
    for f, x in enumerate(x0):
        uncovered[f, 13:19, x + 1 : x + 7] = True  # the square's inside, away from its edges
    filled = warp_video(video, src, cam, tgt, cam, source_depth=depth)
    inpainted = warp_video(video, src, cam, tgt, cam, source_depth=depth, temporal_fill=False)
    truth = np.repeat(bg[None], len(x0), 0)
    assert M.masked_psnr(filled, truth, uncovered) > 38
    assert M.masked_psnr(inpainted, truth, uncovered) < 30
    assert not np.any(np.all(filled == (230, 20, 200), axis=-1))  # the square is gone


def test_warp_coverage_says_where_each_pixel_came_from():
    """On the sliding square moved out of view: what it uncovers is marked as filled from another frame
    (or, without the temporal fill, as inpainted), the rest of the plane as the frame's own pixels; the
    frame's own holes are the same set with or without the fill, and the frames are those of the plain call."""
    video, depth, _, src, x0, cam, on = _moving_square_scene()
    xyz_t = np.asarray(src.xyz, np.float64).copy()
    xyz_t[:, on, 0] += 100 * 5.0 / 40.0
    tgt = Tracks(xyz_t.astype(np.float32), src.visibility)
    filled, cov = warp_video(video, src, cam, tgt, cam, source_depth=depth, return_coverage=True)
    np.testing.assert_array_equal(filled, warp_video(video, src, cam, tgt, cam, source_depth=depth))
    _, cov_inpaint = warp_video(
        video, src, cam, tgt, cam, source_depth=depth, temporal_fill=False, return_coverage=True
    )
    assert cov.shape == video.shape[:3] and cov.dtype == np.uint8
    for f, x in enumerate(x0):
        assert np.all(cov[f, 13:19, x + 1 : x + 7] == FROM_OTHER_FRAME)
        assert np.all(cov_inpaint[f, 13:19, x + 1 : x + 7] == INPAINTED)
    assert np.all(cov[:, :10] == COVERED) and np.all(cov[:, 22:] == COVERED)  # rows the square never touched
    np.testing.assert_array_equal(cov != COVERED, cov_inpaint == INPAINTED)
    assert not np.any(cov_inpaint == FROM_OTHER_FRAME)
    clip = coverage_video(cov_inpaint)
    assert clip.shape == (*video.shape[:3], 3) and clip.dtype == np.uint8
    np.testing.assert_array_equal(clip[..., 0] == 255, cov_inpaint != COVERED)
    np.testing.assert_array_equal(clip[..., 1] == 255, cov_inpaint == INPAINTED)
    assert set(np.unique(clip[..., :2])) <= {0, 255} and not clip[..., 2].any()


def test_warp_displacement_is_how_far_each_source_pixel_moves():
    """The sliding square moved 2.5 px right (at depth 5, focal 40): its inside, whose 3D neighbours are all
    square tracks, moves exactly 2.5 px (20 eighths), the plane away from it not at all; moved 100 px it
    saturates. The frames and coverage are those of the plain call, and the clip carries it in channel 2."""
    video, depth, _, src, x0, cam, on = _moving_square_scene()
    for shift_px, inside in ((2.5, 20), (100.0, 255)):
        xyz_t = np.asarray(src.xyz, np.float64).copy()
        xyz_t[:, on, 0] += shift_px * 5.0 / 40.0
        tgt = Tracks(xyz_t.astype(np.float32), src.visibility)
        frames, cov, disp = warp_video(
            video, src, cam, tgt, cam, source_depth=depth, return_coverage=True, return_displacement=True
        )
        plain, plain_cov = warp_video(video, src, cam, tgt, cam, source_depth=depth, return_coverage=True)
        np.testing.assert_array_equal(frames, plain)
        np.testing.assert_array_equal(cov, plain_cov)
        assert disp.shape == video.shape[:3] and disp.dtype == np.uint8
        for f, x in enumerate(x0):
            assert np.all(disp[f, 13:19, x + 1 : x + 7] == inside)
        assert not disp[:, :10].any() and not disp[:, 22:].any()  # rows the square never touched
        np.testing.assert_array_equal(coverage_video(cov, disp)[..., 2], disp)
