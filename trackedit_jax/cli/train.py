"""`trackedit train`: run or resume training from a config preset."""

from __future__ import annotations

HELP = "train (or resume) Edit-by-Track from a config preset; --config.key=value overrides"
PATH_ARGS = ("workdir",)  # made absolute by cli.main; --config is a preset name or a file


def add_arguments(p) -> None:
    p.add_argument("--config", required=True, help="configs/NAME.py or a preset name (tiny_cpu, wan1_3b_stage1, ...)")
    p.add_argument(
        "--workdir", required=True, help="run directory: checkpoints/, metrics, loss curve; resumes if present"
    )
    p.add_argument(
        "--coordinator-address", help="multi-process: host:port of process 0 (TPU pods and Slurm are auto-detected)"
    )
    p.add_argument("--num-processes", type=int)
    p.add_argument("--process-id", type=int)
    p.add_argument(
        "--max-steps", type=int, help="stop after this many steps in this invocation (the run stays resumable)"
    )
    p.set_defaults(_accepts_overrides=True)


def run(args) -> int:
    from trackedit_jax.parallel import distributed

    # before anything touches a backend
    distributed.initialize(args.coordinator_address, args.num_processes, args.process_id)
    from trackedit_jax.configuration import load_config
    from trackedit_jax.train.loop import train

    config = load_config(args.config, args.extra)
    result = train(config, args.workdir, max_steps=args.max_steps)
    if result.interrupted:
        print(f"[trackedit train] stopped by SIGTERM at step {result.step}; checkpoint saved", flush=True)
    else:
        print(
            f"[trackedit train] done at step {result.step}: loss {result.metrics.get('loss', float('nan')):.4f}; "
            f"outputs in {result.workdir}",
            flush=True,
        )
    distributed.shutdown()
    return 0
