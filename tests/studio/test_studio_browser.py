"""The studio page in Debian's Chromium (headless, through the Playwright client): select a box of tracks
on frame 0, drag it, add a camera arc; the spec the page shows and downloads reproduces, through
`trackedit edit-tracks`, the target tracks the page draws (within 1 px). Then an edit job runs (the
built-in model, 1 step) and one is cancelled.

Needs a `chromium` binary (`apt-get install chromium`; `.ci/run` installs it) and `pip install playwright`
(the client only: no browser is downloaded).
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil

import numpy as np
import pytest
import yaml

from trackedit_jax.cli import main as cli_main
from trackedit_jax.geometry.io import load_tracks
from trackedit_jax.geometry.projection import in_image, project

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser")) if p), None)
pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (apt-get install -y chromium)"),
    pytest.mark.xdist_group("studio_browser"),  # one browser and one server for the module under -n
]
SCREENSHOT = os.environ.get("TRACKEDIT_STUDIO_SCREENSHOT")  # also copy the screenshot there


@pytest.fixture(scope="module")
def page(studio):
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the client)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        pg = browser.new_page(viewport={"width": 1400, "height": 900}, accept_downloads=True)
        errors = []
        pg.on("pageerror", lambda e: errors.append(str(e)))
        pg.goto(studio.url)
        pg.wait_for_selector("body[data-ready='1']", timeout=30_000)
        yield pg
        browser.close()
        assert not errors, errors


def wait_preview(pg):
    pg.wait_for_function(
        "document.body.dataset.previewState === 'ready' && studio.previewYaml() === studio.yaml()", timeout=30_000
    )


def to_page(pg, x, y):
    """Image pixel (x, y) of the scene -> page coordinates on the source canvas."""
    box = pg.locator("#source").bounding_box()
    scale = float(pg.evaluate("studio.state.scale"))
    width = float(pg.evaluate("document.getElementById('source').width"))
    k = box["width"] / width
    return box["x"] + (x + 0.5) * scale * k, box["y"] + (y + 0.5) * scale * k


def drag(pg, a, b):
    pg.mouse.move(*to_page(pg, *a))
    pg.mouse.down()
    pg.mouse.move(*to_page(pg, *b), steps=6)
    pg.mouse.up()


def test_box_drag_arc_spec_reproduces_the_drawn_tracks(page, studio, tmp_path):
    pg = page
    scene = studio.scene
    # a box around rigid group 1 (a moving object) at frame 0, from the library's own labels
    info = json.loads(studio.scene_body)
    labels = np.asarray(info["groups"])
    uv0 = np.asarray(info["source"]["uv"])[0]
    front0 = np.asarray(info["source"]["front"], bool)[0]
    members = uv0[(labels == 1) & front0]
    x0, y0 = members.min(0) - 1.5
    x1, y1 = members.max(0) + 1.5
    pg.check("input[name=mode][value=box]")
    drag(pg, (x0, y0), (x1, y1))
    wait_preview(pg)
    pg.check("input[name=mode][value=move]")
    cx, cy = members.mean(0)
    drag(pg, (cx, cy), (cx + 18, cy + 4))
    wait_preview(pg)
    pg.locator("#c-arc").evaluate("el => { el.value = 20; el.dispatchEvent(new Event('input')); }")
    wait_preview(pg)

    shown = pg.input_value("#spec")
    with pg.expect_download() as dl:
        pg.click("#download")
    downloaded = pathlib.Path(dl.value.path()).read_text()
    assert downloaded == shown  # (a) the file is the YAML on the page
    spec = yaml.safe_load(shown)
    assert spec == pg.evaluate("studio.spec()")
    assert spec["camera"] == [{"op": "arc", "degrees": 20}]
    (obj,) = spec["objects"]
    assert obj["select"]["frame"] == 0 and len(obj["select"]["box"]) == 4
    assert obj["ops"][0]["op"] == "translate" and np.linalg.norm(obj["ops"][0]["offset"]) > 0

    edit = tmp_path / "edit.yaml"
    edit.write_text(downloaded)
    tgt = tmp_path / "tgt.npz"
    args = ["edit-tracks", "--tracks", str(scene.tracks_file), "--edit", str(edit), "--out", str(tgt)]
    assert cli_main(args) == 0
    tracks, camera = load_tracks(tgt)
    uv, depth = project(np.asarray(tracks.xyz, np.float64), camera)
    shown_on = (depth > 1e-3) & in_image(uv, camera.image_size)
    src_uv, _ = project(np.asarray(scene.tracks.xyz, np.float64), scene.camera)
    for f in (0, scene.tracks.num_frames // 2, scene.tracks.num_frames - 1):
        pg.evaluate(f"studio.setFrame({f})")
        canvas = pg.locator("#preview")
        assert canvas.get_attribute("data-frame") == str(f)
        scale = float(canvas.get_attribute("data-scale"))
        drawn = np.asarray(json.loads(canvas.get_attribute("data-drawn")))
        ids = drawn[:, 0].astype(int)
        # (b) what the page draws is the library's projection, point for point, within 1 px
        assert sorted(ids) == sorted(np.flatnonzero(shown_on[f]))
        np.testing.assert_allclose(drawn[:, 1:] / scale - 0.5, uv[f, ids], atol=1.0)
        moved = np.linalg.norm(uv[f, ids] - src_uv[f, ids], axis=-1)
        assert moved.max() > 5  # the drag and the arc moved the drawn points
    shot = tmp_path / "studio.png"
    pg.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000
    if SCREENSHOT:
        shutil.copy(shot, SCREENSHOT)


def test_bad_yaml_shows_the_command_line_error(page, studio, tmp_path, capsys):
    text = "camera:\n  - {op: arc, degrees: .nan}\n"
    pg = page
    pg.fill("#spec", text)
    pg.click("#apply-yaml")
    pg.wait_for_function("document.body.dataset.previewState === 'error'")
    shown = pg.inner_text("#error")
    (tmp_path / "edit.yaml").write_text(text)
    capsys.readouterr()
    args = ["edit-tracks", "--tracks", str(studio.scene.tracks_file), "--edit", str(tmp_path / "edit.yaml")]
    assert cli_main([*args, "--out", str(tmp_path / "t.npz")]) == 2
    cli = capsys.readouterr().err.strip().removeprefix("trackedit edit-tracks: error: ")
    assert shown == cli.replace(str(tmp_path) + os.sep, "")
    assert not (tmp_path / "t.npz").exists()


def test_run_and_cancel_edit_jobs(page, studio):
    pg = page
    pg.click("#reset")
    pg.locator("#c-arc").evaluate("el => { el.value = 15; el.dispatchEvent(new Event('input')); }")
    wait_preview(pg)
    pg.fill("#steps", "1")
    pg.click("#run")
    pg.wait_for_function("document.body.dataset.jobState === 'done'", timeout=240_000)
    assert pg.locator("#result-view").is_visible()
    done = [p for p in studio.out_dir.iterdir() if p.name.startswith("edit-")]
    assert len(done) == 1
    assert sorted(p.name for p in done[0].iterdir()) == [
        "edit.yaml",
        "edited.mp4",
        "report.txt",
        "side_by_side.mp4",
        "target.npz",
    ]
    assert (done[0] / "edit.yaml").read_text() == pg.input_value("#spec")
    # a long job, cancelled while sampling: nothing is left behind
    pg.fill("#steps", "200")
    pg.click("#run")
    pg.wait_for_function("document.getElementById('job-status').textContent.includes('sampling')", timeout=120_000)
    pg.click("#cancel")
    pg.wait_for_function("document.body.dataset.jobState === 'cancelled'", timeout=120_000)
    assert [p.name for p in studio.out_dir.iterdir() if p.name != "sample_scene"] == [done[0].name]
