"""Shared studio fixtures: the sample scene and a running server (module scope: the scene costs seconds)."""

from __future__ import annotations

import threading

import pytest


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    """A studio server on 127.0.0.1 (a free port) for the sample scene, serving in a thread."""
    from trackedit_jax.studio.api import sample_scene
    from trackedit_jax.studio.server import make_server

    root = tmp_path_factory.mktemp("studio")
    scene = sample_scene(root / "scene")
    server = make_server(scene, port=0, out_dir=root / "out")
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.close()
    thread.join(10)
