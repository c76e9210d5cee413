"""Sharded editing: `EditPipeline(mesh=...)` and `trackedit edit --mesh` split the model by the training
rules table over the 8 simulated devices and give the 1-device edit."""

import json

import jax
import numpy as np
import pytest
from infer_assets import scene
from jax.sharding import NamedSharding

from trackedit_jax.cli import main
from trackedit_jax.geometry.io import save_tracks
from trackedit_jax.geometry.types import Tracks
from trackedit_jax.infer.pipeline import EditPipeline
from trackedit_jax.parallel.mesh import make_mesh, parse_mesh_spec
from trackedit_jax.parallel.rules import MESH_AXES


@pytest.fixture(scope="module")
def edit_scene(sheep_frames):
    frames, _ = sheep_frames
    tracks, camera = scene(frames.shape[0], frames.shape[1:3], num_points=40, seed=2)
    moved = Tracks(np.asarray(tracks.xyz) + np.array([0.3, 0.0, 0.1], np.float32), tracks.visibility)
    return frames, tracks, camera, moved


@pytest.fixture(scope="module")
def single_device_edit(tiny_parts, edit_scene):
    config, model, vae, _, _ = tiny_parts
    frames, tracks, camera, moved = edit_scene
    pipe = EditPipeline(model, vae, config)
    emb = jax.random.normal(jax.random.PRNGKey(3), (1, config.text_len, config.wan.text_dim))
    inputs = pipe.prepare(frames, tracks, camera, moved, camera)
    out = pipe.generate(inputs, prompt_embedding=emb, guidance=4.0, num_steps=3, seed=5)
    return inputs, emb, out


def _split_axes(state) -> set[str]:
    """Mesh axes that split at least one parameter."""
    used = set()
    for leaf in jax.tree.leaves(state):
        spec = leaf.sharding.spec if isinstance(leaf.sharding, NamedSharding) else ()
        for entry in spec:
            used.update(entry if isinstance(entry, tuple) else (entry,) if entry else ())
    return used


@pytest.mark.xdist_group("sharded_edit")  # both meshes on one worker: the one-device edit is built once
@pytest.mark.parametrize("mesh_spec", ["fsdp=8", "fsdp=4,context=2"])
def test_sharded_edit_equals_the_one_device_edit(tiny_parts, single_device_edit, mesh_spec):
    config, model, vae, _, _ = tiny_parts
    inputs, emb, want = single_device_edit
    mesh = make_mesh(parse_mesh_spec(mesh_spec))
    pipe = EditPipeline(model, vae, config, mesh=mesh)
    sizes = parse_mesh_spec(mesh_spec)
    assert _split_axes(pipe.state) == {"fsdp"}  # the width of every projection, by the rules table
    widest = max(jax.tree.leaves(pipe.state), key=lambda a: a.size)
    assert widest.addressable_shards[0].data.size == widest.size // sizes["fsdp"]
    got = pipe.generate(inputs, prompt_embedding=emb, guidance=4.0, num_steps=3, seed=5)
    assert got.settings == want.settings
    assert len(got.latents.sharding.device_set) == 8  # computed on the mesh
    np.testing.assert_allclose(np.asarray(got.latents), np.asarray(want.latents), atol=2e-5, rtol=0)
    assert np.abs(got.video.astype(int) - want.video.astype(int)).max() <= 1


def test_edit_cli_with_a_mesh(sheep_video, tiny_checkpoint, edit_scene, tmp_path, capsys):
    frames, tracks, camera, moved = edit_scene
    save_tracks(tmp_path / "source.npz", tracks, camera)
    save_tracks(tmp_path / "target.npz", moved, camera)
    args = ["edit", "--video", str(sheep_video), "--tracks", str(tmp_path / "source.npz")]
    args += ["--target-tracks", str(tmp_path / "target.npz"), "--checkpoint", str(tiny_checkpoint)]
    args += ["--steps", "2", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "sharded.mp4"), "--mesh", "fsdp=8"]) == 0, capsys.readouterr().err
    sharded = json.loads((tmp_path / "sharded.json").read_text())
    assert sharded["settings"]["mesh"] == dict(zip(MESH_AXES, (1, 8, 1, 1)))
    assert sharded["outputs"]["video_shape"] == [9, 32, 32, 3]

    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "bad.mp4"), "--mesh", "fsdp=16"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--mesh fsdp=16 needs 16 devices" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "bad.mp4").exists()
