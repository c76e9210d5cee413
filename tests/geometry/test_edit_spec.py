"""The edit spec: the issue's spellings, messages that name file:line and key, application, the report."""

import json
import textwrap

import cv2
import numpy as np
import pytest

from trackedit_jax.geometry import Tracks, in_image, project
from trackedit_jax.geometry import edits as E
from trackedit_jax.geometry.edit_spec import (
    CAMERA_OPS,
    OBJECT_OPS,
    EditSpecError,
    apply_edit_spec,
    load_edit_spec,
    parse_edit_spec,
    spec_reference,
)
from trackedit_jax.geometry.report import edit_report

ISSUE_EXAMPLE = """\
camera:
  - {op: arc, degrees: 30, axis: [0, -1, 0], pivot: centroid}   # pivot: centroid or [x, y, z] (world)
  - {op: dolly, distance: 0.5}                                  # along the camera's viewing axis
  - {op: static, frame: 0}
  - {op: path, file: cams.npz}                                  # or a DyCheck camera folder
objects:
  - select: {box: [20, 10, 100, 80], frame: 0}                  # pixels; or {mask: m.png, frame: 0}, {ids: [..]}
    ops:
      - {op: translate, offset: [0.2, 0.0, 0.0]}                # world units, ramped in over the clip
      - {op: rotate, degrees: 90, axis: [0, 1, 0]}              # about the selection's centroid
      - {op: remove}
      - {op: duplicate, offset: [0.5, 0.0, 0.0]}
      - {op: retime, speed: 0.5}
  - select: {mask: m.png, frame: 0}
    ops:
      - {op: translate, offset: [0.0, -0.1, 0.0]}
  - select: {ids: [0, 1, 2]}
    ops:
      - {op: duplicate, offset: [0.0, 0.0, 0.3]}
"""


def _write(tmp_path, text, name="edit.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def _error(tmp_path, text, name="edit.yaml"):
    with pytest.raises(EditSpecError) as e:
        load_edit_spec(_write(tmp_path, text, name))
    return str(e.value)


def test_issue_example_parses_and_applies(tmp_path, make_tracks, make_camera):
    tr, cam = make_tracks(F=9, N=120), make_camera(F=9)
    np.savez(tmp_path / "cams.npz", extrinsics=E.pan(cam, 10).extrinsics)
    mask = np.zeros(cam.image_size, np.uint8)
    mask[40:90, 60:120] = 255
    cv2.imwrite(str(tmp_path / "m.png"), mask)
    spec = load_edit_spec(_write(tmp_path, ISSUE_EXAMPLE))
    assert [op.name for op in spec.camera] == ["arc", "dolly", "static", "path"]
    assert [op.name for op in spec.objects[0].ops] == ["translate", "rotate", "remove", "duplicate", "retime"]
    res = apply_edit_spec(spec, tr, cam)
    sel = E.select_box(tr, cam, [20, 10, 100, 80], 0)
    n_dup = int(sel.sum()) + 3
    assert res.tracks.num_points == 120 + n_dup
    np.testing.assert_array_equal(res.tracks.ids[:120], np.arange(120))  # point order preserved
    np.testing.assert_array_equal(res.tracks.ids[120:], np.concatenate([np.flatnonzero(sel), [0, 1, 2]]))
    # the removed originals are off screen in every target frame
    uv, z = project(res.tracks.xyz[:, :120], res.camera)
    assert not ((z > 0) & in_image(uv, cam.image_size))[:, sel].any()
    # the path op replaced the camera: target = source frame 0 followed by the file's relative motion
    np.testing.assert_allclose(
        res.camera.extrinsics,
        E.pan(cam, 10).extrinsics
        @ np.linalg.inv(np.asarray(E.pan(cam, 10).extrinsics[0]))
        @ np.asarray(cam.extrinsics[0]),
        atol=1e-5,
    )


def test_json_spec_and_scientific_floats(tmp_path):
    spec = load_edit_spec(
        _write(tmp_path, json.dumps({"camera": [{"op": "dolly", "distance": 1e-1}]}, indent=2), "e.json")
    )
    assert spec.camera[0].params["distance"] == pytest.approx(0.1)
    spec = load_edit_spec(_write(tmp_path, "camera:\n  - {op: truck, distance: 2e-1}\n"))
    assert spec.camera[0].params["distance"] == pytest.approx(0.2)
    msg = _error(tmp_path, '{\n  "camera": [\n    {"op": "dolly", "distance": "far"}\n  ]\n}\n', "bad.json")
    assert msg.startswith(f"{tmp_path / 'bad.json'}:3: camera[0].distance: expected a number")


@pytest.mark.parametrize(
    "text,line,key,words",
    [
        ("camera:\n  - {op: pann, degrees: 3}\n", 2, "camera[0].op", "unknown camera op 'pann'; did you mean 'pan'"),
        (
            "camera:\n  - {op: dolly, distance: 1}\n  - op: arc\n    axis: [0, 1, 0]\n",
            3,
            "camera[1]",
            "needs field 'degrees'",
        ),
        (
            "objects:\n  - select: {ids: [1]}\n    ops:\n      - op: rotate\n        degrees: ninety\n",
            5,
            "objects[0].ops[0].degrees",
            "expected a number, got str 'ninety'",
        ),
        (
            "objects:\n  - select: {bx: [0, 0, 1, 1]}\n    ops: []\n",
            2,
            "objects[0].select.bx",
            "unknown field for the selection; did you mean 'box'",
        ),
        (
            "objects:\n  - select: {ids: [1]}\n    ops:\n      - {op: translate, offset: [1, 2]}\n",
            4,
            "objects[0].ops[0].offset",
            "expected a list of 3 numbers",
        ),
        (
            "objects:\n  - select: {ids: [1]}\n    ops:\n      - {op: translate}\n",
            4,
            "objects[0].ops[0]",
            "exactly one of ['offset', 'path']",
        ),
        (
            "objects:\n  - select: {ids: [1]}\n    ops:\n      - {op: remove, mode: delete}\n",
            4,
            "objects[0].ops[0].mode",
            "expected one of ['offscreen', 'drop']",
        ),
        ("objects:\n  - select: {frame: 2}\n    ops: []\n", 2, "objects[0].select", "needs at least one of"),
        ("objects:\n  - select: {ids: [1]}\n", 2, "objects[0]", "missing key 'ops'"),
        (
            "camera:\n  - {op: dolly, distance: 1}\nobject:\n  - {}\n",
            3,
            "object",
            "unknown top-level key; did you mean 'objects'",
        ),
        (
            "camera:\n  - {op: keyframes, keys: [{frame: 0}, {frame: 4, pan: true}]}\n",
            2,
            "camera[0].keys[1].pan",
            "expected a number, got bool True",
        ),
        ("camera:\n  - {op: zoom, factor: -2}\n", 2, "camera[0].factor", "must be > 0"),
        ("camera:\n  op: pan\n", 1, "camera", "expected a list of camera ops"),
        ("camera:\n  - {op: pan, degrees: 3, degrees: 4}\n", 2, "camera[0].degrees", "duplicate key"),
        ("camera:\n  - {op: pan, degrees: 3\n", 3, "", "syntax error"),
    ],
)
def test_spec_errors_name_line_and_key(tmp_path, text, line, key, words):
    msg = _error(tmp_path, text)
    path = tmp_path / "edit.yaml"
    assert msg.startswith(f"{path}:{line}: {key}"), msg
    assert words in msg, msg


def test_apply_errors_name_the_op(tmp_path, make_tracks, make_camera):
    tr, cam = make_tracks(F=5), make_camera(F=5)
    cases = [
        (
            "camera:\n  - {op: dolly, distance: 1}\n  - {op: path, file: nowhere.npz}\n",
            3,
            "camera[1].file",
            "file not found: nowhere.npz",
        ),
        (
            "objects:\n  - select: {box: [0, 0, 1, 1], frame: 0}\n    ops: [{op: remove}]\n",
            2,
            "objects[0].select",
            "selects no points",
        ),
        (
            "objects:\n  - select: {ids: [1], frame: 9}\n    ops: [{op: remove}]\n",
            2,
            "objects[0].select.frame",
            "past the clip's last frame 4",
        ),
        ("camera:\n  - {op: pan, degrees: 4, end: 12}\n", 2, "camera[0]", "start <= end <= F-1 = 4"),
        (
            "objects:\n  - select: {ids: [1, 500]}\n    ops: [{op: remove}]\n",
            2,
            "objects[0].select.ids",
            "ids must be in [0, 79]",
        ),
        (
            "objects:\n  - select: {all: true}\n    ops: [{op: remove, mode: drop}]\n",
            1,
            "objects",
            "every point was removed",
        ),
    ]
    for text, line, key, words in cases:
        spec = load_edit_spec(_write(tmp_path, text))
        with pytest.raises(EditSpecError) as e:
            apply_edit_spec(spec, tr, cam)
        assert str(e.value).startswith(f"{tmp_path / 'edit.yaml'}:{line}: {key}"), str(e.value)
        assert words in str(e.value), str(e.value)


def test_parts_keep_transfer_and_groups_through_the_spec(make_camera, rigid_scene):
    tr, truth = rigid_scene(noise=0.0)
    cam = make_camera(F=17, moving=False)
    b1, b2 = np.flatnonzero(truth == 1), np.flatnonzero(truth == 2)
    spec = parse_edit_spec(
        {
            "objects": [
                {
                    "select": {"group": 2, "threshold": 0.03},
                    "ops": [{"op": "transfer", "from": {"group": 1, "threshold": 0.03}, "mode": "rigid"}],
                },
                {
                    "select": {"ids": b1.tolist()},
                    "ops": [
                        {
                            "op": "parts",
                            "parts": [
                                {
                                    "select": {"ids": b1[:10].tolist()},
                                    "ops": [{"op": "scale", "factor": 2.0, "ease": "constant"}],
                                }
                            ],
                        },
                        {"op": "keep", "select": {"ids": b1[:20].tolist()}},
                    ],
                },
                {
                    "select": {"ids": [0, 1]},
                    "ops": [
                        {
                            "op": "duplicate",
                            "offset": [0, 0, 1],
                            "ops": [{"op": "translate", "offset": [1, 0, 0], "ease": "constant"}],
                        }
                    ],
                },
            ]
        }
    )
    res = apply_edit_spec(spec, tr, cam)
    # body 2 got body 1's rigid motion
    ref = E.transfer_motion(tr, truth == 2, tr.xyz[:, truth == 1], mode="rigid")
    keep_ids = np.concatenate([np.setdiff1d(np.arange(205), b1[20:]), [0, 1]])
    np.testing.assert_array_equal(res.tracks.ids, keep_ids)
    pos = {int(i): k for k, i in enumerate(res.tracks.ids[:-2])}
    np.testing.assert_allclose(res.tracks.xyz[:, [pos[i] for i in b2]], ref.xyz[:, b2], atol=1e-9)
    # the part was scaled about its own centroid; the rest of body 1 beyond id 20 dropped
    part = tr.xyz[:, b1[:10]]
    c = part.mean(1, keepdims=True)
    np.testing.assert_allclose(res.tracks.xyz[:, [pos[i] for i in b1[:10]]], c + 2 * (part - c), atol=1e-9)
    # copies: offset and their own translate
    np.testing.assert_allclose(res.tracks.xyz[:, -2:], tr.xyz[:, [0, 1]] + [1, 0, 1], atol=1e-12)


def test_reference_lists_every_op_and_field():
    ref = spec_reference()
    for table in (CAMERA_OPS, OBJECT_OPS):
        for name, od in table.items():
            assert f"  {name}" in ref
            for field in od.fields:
                assert f"{field}:" in ref


def test_report_fractions_jumps_and_nan(make_camera):
    cam = make_camera(F=5, moving=False)
    xyz = np.zeros((5, 4, 3))
    xyz[:, 0] = [0, 0, 4]  # on screen
    xyz[:, 1] = [0, 0, -2]  # behind
    xyz[:, 2] = [50, 0, 4]  # far right, off screen
    xyz[:, 3] = [0, 0, 4]
    xyz[3, 3] = [0.7, 0, 4]  # a 17.5 px jump and back
    rep = edit_report(Tracks(xyz, np.ones((5, 4), bool)), cam, jump_fraction_of_diagonal=0.1)
    assert rep.behind_fraction == pytest.approx(0.25)
    assert rep.offscreen_fraction == pytest.approx(1 / 3)
    assert rep.max_jump_px == pytest.approx(0.7 / 4 * 100, rel=1e-6)
    assert rep.jump_pairs == 2 and any("jumps exceed" in w for w in rep.warnings)
    assert "behind the camera: 25.0%" in rep.format()
    xyz[2, 0] = np.nan
    rep = edit_report(xyz, cam)
    assert rep.nan_count == 1 and any("NaN" in w for w in rep.warnings)
    calm = np.broadcast_to(np.array([[0, 0, 4.0], [0.2, 0.1, 5]]), (5, 2, 3))
    assert edit_report(calm, cam).ok
