"""The studio's HTTP API against the library: tokens, loopback only, spec errors as the command line's,
hostile specs refused with nothing written, and previews equal to `trackedit edit-tracks` output."""

from __future__ import annotations

import json
import os
import pathlib
import urllib.error
import urllib.request

import numpy as np
import pytest

from trackedit_jax.cli import main as cli_main
from trackedit_jax.geometry.io import load_tracks
from trackedit_jax.geometry.projection import project

EDIT = """camera:
  - {op: arc, degrees: 20}
objects:
  - select: {box: [40, 30, 90, 100], frame: 0}
    ops:
      - {op: translate, offset: [0.3, 0, 0.1], ease: constant}
      - {op: rotate, degrees: 30}
"""


def request(server, path, body=None, *, token=True, headers=None):
    """(status, decoded JSON or bytes) of a request to the studio."""
    host, port = server.server_address[:2]
    req = urllib.request.Request(f"http://{host}:{port}{path}", method="POST" if body is not None else "GET")
    if token:
        req.add_header("X-Studio-Token", server.token)
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    data = None if body is None else json.dumps(body).encode()
    try:
        with urllib.request.urlopen(req, data=data, timeout=60) as r:
            status, raw, ctype = r.status, r.read(), r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        status, raw, ctype = e.code, e.read(), e.headers.get("Content-Type", "")
    return status, (json.loads(raw) if "json" in ctype else raw)


def tree(*folders) -> dict:
    """{path: (size, mtime)} of every file and folder under `folders` (to show nothing was written)."""
    out = {}
    for folder in folders:
        for p in pathlib.Path(folder).rglob("*"):
            st = p.stat()
            out[str(p)] = (st.st_size, st.st_mtime_ns)
    return out


def cli_error(tmp_path, text, capsys) -> str:
    """What `trackedit edit-tracks` prints for a spec file edit.yaml holding `text`, with the file's folder
    dropped from the message (the page names the spec edit.yaml)."""
    spec = tmp_path / "edit.yaml"
    spec.write_text(text)
    capsys.readouterr()
    rc = cli_main(["edit-tracks", "--tracks", str(tmp_path / "none.npz"), "--edit", str(spec), "--out", "x.npz"])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    prefix = "trackedit edit-tracks: error: "
    assert err.startswith(prefix) and "\n" not in err
    return err[len(prefix) :].replace(str(tmp_path) + os.sep, "")


@pytest.mark.parametrize(
    "path", ["/", "/api/scene", "/api/frame/0.png", "/static/studio.js", "/api/jobs/1", "/api/preview"]
)
def test_no_token_is_forbidden(studio, path):
    body = {"spec": EDIT} if path == "/api/preview" else None
    status, res = request(studio, path, body, token=False)
    assert status == 403 and "token" in res["error"]
    status, _ = request(studio, path, body, token=False, headers={"X-Studio-Token": studio.token[:-1] + "x"})
    assert status == 403


def test_token_in_query_and_header(studio):
    status, html = request(studio, f"/?token={studio.token}", token=False)
    assert status == 200 and studio.token.encode() in html and b"https://" not in html  # no CDN
    status, png = request(studio, "/api/frame/0.png")
    assert status == 200 and png[:8] == b"\x89PNG\r\n\x1a\n"


def test_foreign_host_header_is_forbidden(studio):
    status, res = request(studio, "/api/scene", headers={"Host": f"evil.example:{studio.server_address[1]}"})
    assert status == 403 and "Host" in res["error"]


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "::", "example.com"])
def test_non_loopback_bind_is_refused(studio, host, capsys):
    from trackedit_jax.studio.server import make_server

    with pytest.raises(ValueError, match="loopback"):
        make_server(studio.scene, host=host, port=0)
    assert cli_main(["studio", "--host", host, "--port", "0"]) == 2
    assert "loopback" in capsys.readouterr().err


def test_preview_equals_edit_tracks(studio, tmp_path, capsys):
    """The preview's target projections are those of the file `trackedit edit-tracks` writes for the spec."""
    status, res = request(studio, "/api/preview", {"spec": EDIT})
    assert status == 200, res
    spec = tmp_path / "edit.yaml"
    spec.write_text(EDIT)
    tgt = tmp_path / "tgt.npz"
    assert (
        cli_main(["edit-tracks", "--tracks", str(studio.scene.tracks_file), "--edit", str(spec), "--out", str(tgt)])
        == 0
    )
    tracks, camera = load_tracks(tgt)
    uv, depth = project(np.asarray(tracks.xyz, np.float64), camera)
    assert res["num_points"] == tracks.num_points
    front = np.asarray(res["target"]["front"], bool)
    np.testing.assert_array_equal(front, depth > 1e-3)
    np.testing.assert_allclose(np.asarray(res["target"]["uv"])[front], uv[front], atol=2e-3)
    np.testing.assert_allclose(np.asarray(res["extrinsics"]), camera.extrinsics, atol=1e-6)
    # the edit moved something: the target differs from the source projections
    src_uv = np.asarray(json.loads(studio.scene_body)["source"]["uv"])
    assert np.abs(np.asarray(res["target"]["uv"]) - src_uv).max() > 5
    assert res["report"]["text"].startswith("target: 17 frames x 512 points")
    assert res["spec"]["camera"] == [{"op": "arc", "degrees": 20}]


def _hostile(scene_dir: pathlib.Path) -> dict:
    outside = scene_dir.parent / "outside"
    outside.mkdir(exist_ok=True)
    (outside / "mask.png").write_bytes(b"not really a png")
    link = scene_dir / "link.png"
    if not link.exists():
        link.symlink_to(outside / "mask.png")
    mask = "objects:\n  - select: {{mask: {}}}\n    ops: [{{op: remove}}]\n"
    return {
        "unknown op": ("camera:\n  - {op: arcc, degrees: 20}\n", "unknown camera op 'arcc'; did you mean 'arc'?"),
        "NaN": ("camera:\n  - {op: arc, degrees: .nan}\n", "camera[0].degrees: expected a number"),
        "NaN in a list": (
            "objects:\n  - select: {box: [0, 0, .nan, 5]}\n    ops: [{op: remove}]\n",
            "objects[0].select.box",
        ),
        "absolute path outside": (mask.format("/etc/passwd"), "is outside the folders the studio may read"),
        "relative path outside": (mask.format("../outside/mask.png"), "is outside the folders the studio may read"),
        "link to outside": (mask.format("link.png"), "is outside the folders the studio may read"),
        "camera path outside": (
            "camera:\n  - {op: path, file: /etc}\n",
            "camera[0].file: /etc is outside the folders the studio may read",
        ),
        "billion laughs": (
            "a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n"
            + "".join(f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n" for p, c in zip("abcdefgh", "bcdefghi")),
            "",
        ),
        "not text": (["camera"], "the spec must be YAML/JSON text"),
        "syntax": ("camera: [\n", "syntax error"),
    }


def test_hostile_specs_give_one_line_and_write_nothing(studio, tmp_path, capsys):
    cases = _hostile(studio.scene.folder)
    before = tree(studio.scene.folder, studio.out_dir)
    for name, (text, expected) in cases.items():
        for path in ("/api/preview", "/api/jobs"):
            status, res = request(studio, path, {"spec": text, "steps": 1})
            assert status == 400, (name, path, res)
            assert "\n" not in res["error"] and expected in res["error"], (name, res)
            assert res["error"].startswith("edit.yaml"), (name, res)
    assert tree(studio.scene.folder, studio.out_dir) == before
    status, res = request(studio, "/api/jobs/1")
    assert status == 404  # no job was started


@pytest.mark.parametrize("name", ["unknown op", "NaN", "NaN in a list", "syntax"])
def test_spec_errors_equal_the_command_line(studio, tmp_path, capsys, name):
    text, _ = _hostile(studio.scene.folder)[name]
    _, res = request(studio, "/api/preview", {"spec": text})
    assert res["error"] == cli_error(tmp_path, text, capsys)


def test_bad_job_settings(studio):
    for body, msg in (({"steps": 0}, "steps must be"), ({"steps": "5"}, "steps must be"), ({"seed": 1.5}, "seed")):
        status, res = request(studio, "/api/jobs", {"spec": EDIT, **body})
        assert status == 400 and msg in res["error"]
    status, res = request(studio, "/api/preview", None)  # a GET
    assert status == 404 and "no such resource" in res["error"]


def test_a_one_step_model_refuses_more_steps_before_the_job_starts(studio, tmp_path):
    """A model exported with `sampling.one_step_only`: a job asking for 3 steps is refused at submission
    with the pipeline's one-line reason, reading only config.json."""
    from infer_assets import one_step_copy

    from trackedit_jax.infer.builtin import BUILTIN_MODEL
    from trackedit_jax.studio import api

    models = api.ModelCache(one_step_copy(BUILTIN_MODEL, tmp_path / "one_step"))
    with pytest.raises(api.StudioError, match="samples in one step; got 3 steps"):
        api.edit_work(studio.scene, EDIT, [], models, steps=3, seed=0)
    assert callable(api.edit_work(studio.scene, EDIT, [], models, steps=1, seed=0))
    assert models._pipe is None  # no weights were loaded


def test_concurrent_tabs_get_their_own_previews(studio):
    """Several tabs previewing at once: each answer is the one its own spec gives alone."""
    from concurrent.futures import ThreadPoolExecutor

    specs = [f"camera:\n  - {{op: arc, degrees: {d}}}\n" for d in (5, 10, 15, 20, 25, 30)]
    alone = [request(studio, "/api/preview", {"spec": s})[1]["extrinsics"] for s in specs]
    with ThreadPoolExecutor(6) as pool:
        together = list(pool.map(lambda s: request(studio, "/api/preview", {"spec": s})[1]["extrinsics"], specs))
    assert together == alone
    assert all(a != b for a, b in zip(alone, alone[1:]))
