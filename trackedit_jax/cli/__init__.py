"""The `trackedit` command line: one module per sub-command in this package.

Each sub-command module defines ``HELP`` (one line), ``add_arguments(parser)``, ``run(args) -> int`` and
``PATH_ARGS``, the ``dest`` names of its file and folder arguments: `main` makes those absolute right after
parsing, so paths are resolved once, here at the edge (orbax, for one, refuses relative paths). A command
parses, calls one library function and reports. Errors a user can fix (bad input, missing files) are
printed as one line and exit with code 2; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys

# name -> module under trackedit_jax.cli. Modules import lazily so `trackedit --help` is instant.
COMMANDS: dict[str, str] = {
    "train": "train",
    "plan": "plan",
    "edit-tracks": "edit_tracks",
    "viz": "viz",
    "make-data": "make_data",
    "ingest": "ingest",
    "convert": "convert",
    "encode-text": "encode_text",
    "export": "export",
    "edit": "edit",
    "eval": "eval",
    "demo": "demo",
    "studio": "studio",
}


class UserError(Exception):
    """An error caused by the user's input; printed without a traceback."""


def is_url(path: str) -> bool:
    """True for a `scheme://...` location (gs://, s3://, ...): storage that orbax and TensorBoard reach
    themselves, so it is passed on as written."""
    return re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", path) is not None


def absolute_path(path: str) -> str:
    """`path` with `~` expanded, made absolute against the working directory, `..` folded (links kept);
    a URL (`is_url`) is returned unchanged."""
    if is_url(path):
        return path
    return os.path.abspath(os.path.expanduser(path))


def absolute_paths(args: argparse.Namespace, names: tuple[str, ...]) -> None:
    """Make the path arguments `names` of `args` absolute in place; unset (None) ones and names this
    (sub-)command lacks are skipped, lists (nargs="+") are converted item by item."""
    for name in names:
        value = getattr(args, name, None)
        if isinstance(value, (list, tuple)):
            setattr(args, name, [absolute_path(v) for v in value])
        elif value is not None:
            setattr(args, name, absolute_path(value))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trackedit", description="Edit-by-Track: video motion editing with 3D point tracks (JAX)."
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in COMMANDS.items():
        mod = importlib.import_module(f"trackedit_jax.cli.{module}")
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run, _path_args=tuple(getattr(mod, "PATH_ARGS", ())))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 0 if not argv else 2
    args.extra = rest  # e.g. `--config.key=value` overrides for `train`
    if rest and not getattr(args, "_accepts_overrides", False):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    absolute_paths(args, args._path_args)
    try:
        return int(args._run(args) or 0)
    except (UserError, ValueError, OSError) as e:  # OSError: missing files, permissions, a full disk
        if args.debug:
            raise
        message = " ".join(str(e).split())  # one line, whatever the library's message holds
        print(f"trackedit {args.command}: error: {message}", file=sys.stderr)
        return 2


def console_main() -> int:
    """The `trackedit` executable: `main` in a process whose freed host memory stays in the heap
    (`trackedit_jax.host_memory`; set TRACKEDIT_KEEP_FREED_MEMORY=0 to leave glibc's defaults)."""
    if os.environ.get("TRACKEDIT_KEEP_FREED_MEMORY", "1") != "0":
        from trackedit_jax.host_memory import keep_freed_host_memory

        keep_freed_host_memory()
    return main()


if __name__ == "__main__":
    sys.exit(console_main())
