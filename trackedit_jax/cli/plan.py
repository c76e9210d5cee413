"""`trackedit plan`: compile a training step ahead of time for a (simulated) mesh; report per-device memory."""

from __future__ import annotations

HELP = "compile a config's training step ahead of time (no weights, no data) and report per-device memory"
PATH_ARGS = ()  # --config is a preset name or a file; load_config resolves it


def add_arguments(p) -> None:
    p.add_argument("--config", required=True, help="configs/NAME.py or a preset name")
    p.add_argument("--simulate-devices", type=int, help="simulate this many host CPU devices (planning a pod on a CPU)")
    p.set_defaults(_accepts_overrides=True)


def run(args) -> int:
    import jax

    if args.simulate_devices:
        # must happen before the first backend use; jax may be imported already, that is fine
        jax.config.update("jax_num_cpu_devices", int(args.simulate_devices))
        jax.config.update("jax_platforms", "cpu")
    from trackedit_jax.configuration import load_config
    from trackedit_jax.train.aot import plan_training_step

    config = load_config(args.config, args.extra)
    plan = plan_training_step(config)
    print(plan.table())
    return 0
