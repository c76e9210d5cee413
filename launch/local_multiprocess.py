"""Run a `trackedit` command as N local JAX processes (gloo collectives), e.g. to rehearse multi-host.

    python launch/local_multiprocess.py --processes 2 --devices-per-process 4 -- \
        trackedit train --config configs/tiny_cpu.py --workdir /tmp/run

Each process gets `--coordinator-address/--num-processes/--process-id` appended and simulated CPU
devices via XLA_FLAGS. Exit code: the first non-zero child exit code, else 0.
"""

from __future__ import annotations

import argparse
import os
import shlex
import socket
import subprocess
import sys


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--devices-per-process", type=int, default=4)
    p.add_argument("--timeout", type=float, default=3600)
    p.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    args = p.parse_args()
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd:
        p.error("give the command to run after --")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices_per_process}"
    procs = []
    for i in range(args.processes):
        full = cmd + [
            f"--coordinator-address=127.0.0.1:{port}",
            f"--num-processes={args.processes}",
            f"--process-id={i}",
        ]
        print(f"[launch] process {i}: {shlex.join(full)}", flush=True)
        procs.append(subprocess.Popen(full, env=env))
    codes = [proc.wait(timeout=args.timeout) for proc in procs]
    return next((c for c in codes if c), 0)


if __name__ == "__main__":
    sys.exit(main())
