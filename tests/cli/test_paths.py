"""Every command makes its path arguments absolute right after parsing (`trackedit_jax.cli.PATH_ARGS`), so
relative paths mean the same to every library call (orbax refuses relative ones). The commands run end to
end with relative paths in tests/cli/test_edit_tracks_viz.py and tests/infer/test_export.py."""

import argparse
import importlib
import os

import pytest

from trackedit_jax import cli
from trackedit_jax.cli import COMMANDS, build_parser, main

# command line with relative paths -> the argparse dest of each path and the path it names
CASES = {
    "train": (["train", "--config", "tiny_cpu", "--workdir", "runs/tiny"], {"workdir": "runs/tiny"}),
    "plan": (["plan", "--config", "tiny_cpu"], {}),
    "edit-tracks": (
        ["edit-tracks", "--tracks", "s.npz", "--edit", "e.yaml", "--out", "t.npz"],
        {"tracks": "s.npz", "edit": "e.yaml", "out": "t.npz"},
    ),
    "viz": (
        ["viz", "--tracks", "s.npz", "--target", "t.npz", "--video", "v.mp4", "--out", "o.mp4"],
        {"tracks": "s.npz", "target": "t.npz", "video": "v.mp4", "out": "o.mp4"},
    ),
    "make-data": (["make-data", "synthetic", "--out", "data", "--num-pairs", "1"], {"out": "data"}),
    "ingest": (
        ["ingest", "--format", "tapip3d", "--out", "pairs", "a.npz", "b/c.npz", "--tracks-file", "t.npz"],
        {"out": "pairs", "inputs": ["a.npz", "b/c.npz"], "tracks_file": "t.npz"},
    ),
    "convert": (["convert", "in.pth", "out.safetensors"], {"input": "in.pth", "output": "out.safetensors"}),
    "encode-text": (
        ["encode-text", "--encoder", "te", "--tokenizer", "tok", "--prompt-file", "p.txt", "--out", "e.safetensors"],
        {"encoder": "te", "tokenizer": "tok", "prompt_file": "p.txt", "out": "e.safetensors"},
    ),
    "export": (
        [
            "export",
            "--workdir",
            "runs/tiny",
            "--out",
            "model",
            "--text-encoder",
            "te",
            "--tokenizer",
            "tok",
            "--wan-path",
            "wan",
            "--vae-path",
            "vae",
        ],
        {
            "workdir": "runs/tiny",
            "out": "model",
            "text_encoder": "te",
            "tokenizer": "tok",
            "wan_path": "wan",
            "vae_path": "vae",
        },
    ),
    "edit": (
        [
            "edit",
            "--video",
            "v.mp4",
            "--tracks",
            "s.npz",
            "--edit",
            "e.yaml",
            "--checkpoint",
            "../m",
            "--out",
            "o.mp4",
            "--prompt-embedding",
            "p.safetensors",
        ],
        {
            "video": "v.mp4",
            "tracks": "s.npz",
            "edit": "e.yaml",
            "checkpoint": "../m",
            "out": "o.mp4",
            "prompt_embedding": "p.safetensors",
        },
    ),
    "eval": (["eval", "--checkpoint", "m", "--data", "d", "--out", "r"], {"checkpoint": "m", "data": "d", "out": "r"}),
    "demo": (["demo"], {"out": "demo_out"}),  # the default, relative too
    "studio": (
        ["studio", "--video", "v.mp4", "--tracks", "t.npz", "--checkpoint", "m", "--allow", "a", "--allow", "../b"],
        {"video": "v.mp4", "tracks": "t.npz", "checkpoint": "m", "out": "studio_out", "allow": ["a", "../b"]},
    ),
}


def _dests(parser) -> set[str]:
    """Every argument dest of `parser` and of its sub-parsers (make-data synthetic|verify)."""
    dests = set()
    for action in parser._actions:
        dests.add(action.dest)
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                dests |= _dests(sub)
    return dests


def test_path_args_name_real_arguments():
    (commands,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    parsers = commands.choices
    assert set(CASES) == set(COMMANDS)
    for name, module in COMMANDS.items():
        mod = importlib.import_module(f"trackedit_jax.cli.{module}")
        assert set(mod.PATH_ARGS) <= _dests(parsers[name]), name


@pytest.mark.parametrize("command", sorted(CASES))
def test_relative_paths_reach_the_command_absolute(command, tmp_path, monkeypatch):
    argv, expected = CASES[command]
    seen = []

    def fake_run(args) -> int:
        seen.append(args)
        return 0

    mod = importlib.import_module(f"trackedit_jax.cli.{COMMANDS[command]}")
    monkeypatch.setattr(mod, "run", fake_run)
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 0
    (args,) = seen
    absolute = lambda rel: os.path.normpath(tmp_path / rel)  # noqa: E731
    for dest, rel in expected.items():
        want = [absolute(r) for r in rel] if isinstance(rel, list) else absolute(rel)
        assert getattr(args, dest) == want, dest
    for dest in set(mod.PATH_ARGS) - set(expected):
        assert getattr(args, dest, None) is None, dest  # unset optional paths stay None


def test_home_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cli.absolute_path("~/runs/x") == str(tmp_path / "runs" / "x")
    assert cli.absolute_path("/abs/./a/../b") == "/abs/b"
