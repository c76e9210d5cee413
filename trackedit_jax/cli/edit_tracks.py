"""`trackedit edit-tracks`: apply an edit spec (YAML/JSON) to source tracks and cameras."""

from __future__ import annotations

import argparse
import pathlib

HELP = "turn source tracks + cameras into target ones with an edit spec (YAML/JSON); prints a warning report"
PATH_ARGS = ("tracks", "edit", "out")  # made absolute by cli.main


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tracks", help="source track file (.npz, TAPIP3D / SpatialTrackerV2 layout)")
    parser.add_argument("--edit", help="edit spec (.yaml/.yml/.json); see `--list-ops` or docs/edits.md")
    parser.add_argument("--out", help="target track file to write (.npz); written atomically, never partially")
    parser.add_argument("--strict", action="store_true", help="treat report warnings as errors (nothing is written)")
    parser.add_argument("--list-ops", action="store_true", help="print every op and field of the edit spec and exit")


def run(args) -> int:
    from trackedit_jax.cli import UserError
    from trackedit_jax.geometry.edit_spec import apply_edit_spec, load_edit_spec, spec_reference
    from trackedit_jax.geometry.io import load_track_file, save_tracks
    from trackedit_jax.geometry.report import edit_report

    if args.list_ops:
        print(spec_reference())
        return 0
    missing = [f"--{n}" for n in ("tracks", "edit", "out") if not getattr(args, n)]
    if missing:
        raise UserError(f"missing {', '.join(missing)} (usage: --tracks SRC.npz --edit EDIT.yaml --out TGT.npz)")
    out = pathlib.Path(args.out)
    if out.suffix.lower() != ".npz":
        raise UserError(f"--out must be an .npz file; got {out}")
    if out.resolve() == pathlib.Path(args.tracks).resolve():
        raise UserError("--out is the source track file; write the target to another file")
    spec = load_edit_spec(args.edit)  # spec errors come before reading any big file
    src = load_track_file(args.tracks)
    result = apply_edit_spec(spec, src.tracks, src.camera)
    for line in result.log:
        print(line)
    report = edit_report(result.tracks, result.camera)
    print(report.format())
    if args.strict and report.warnings:
        raise UserError(f"{len(report.warnings)} warning(s) with --strict; nothing written")
    save_tracks(out, result.tracks, result.camera)
    print(
        f"wrote {out} ({result.tracks.num_frames} frames, {result.tracks.num_points} points; "
        f"source_ids maps each point to its source point)"
    )
    return 0
