"""`trackedit plan`: compile a config's training step or edit sampling loop ahead of time for a (simulated)
mesh; report per-device memory, FLOPs and the predicted step time on an accelerator kind.

    trackedit plan --config wan1_3b_stage1 --devices 16 --device v5p
    trackedit plan --config wan14b_stage1 --mode edit --devices 8 --mesh fsdp=8 --device h100 \\
        --config.data.height=480 --config.data.width=832

Exits 0 when the step fits the device's memory (or no --device is given), 1 when it does not, after
printing what to change (more fsdp / context parallelism, remat, a smaller batch per device).
"""

from __future__ import annotations

import sys

HELP = "compile a training step or an edit ahead of time (no weights, no data): per-device memory, FLOPs, time"
PATH_ARGS = ()  # --config is a preset name or a file; load_config resolves it


def add_arguments(p) -> None:
    p.add_argument("--config", required=True, help="configs/NAME.py or a preset name")
    p.add_argument(
        "--devices",
        "--simulate-devices",
        dest="devices",
        type=int,
        default=None,
        help="plan for N devices, simulated as N host CPU devices (default: the devices of this host)",
    )
    p.add_argument(
        "--mesh", default=None, help="mesh sizes, e.g. data=1,fsdp=8,context=2,tensor=1 (default: the config's mesh)"
    )
    p.add_argument("--device", default=None, help="accelerator kind to size for: v5p, v6e, h100, h200, a100")
    p.add_argument("--mode", choices=("train", "edit"), default="train", help="a training step or an edit")
    p.add_argument("--steps", type=int, default=50, help="sampling steps of an edit (--mode edit; default 50)")
    p.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilisation for the predicted time")
    p.set_defaults(_accepts_overrides=True)


def run(args) -> int:
    import jax

    from trackedit_jax.cli import UserError
    from trackedit_jax.parallel.devices import device_kind
    from trackedit_jax.parallel.mesh import parse_mesh_spec

    try:
        device = None if args.device is None else device_kind(args.device)
        mesh_sizes = None if args.mesh is None else parse_mesh_spec(args.mesh)
        if args.devices is not None and args.devices < 1:
            raise ValueError(f"--devices must be >= 1; got {args.devices}")
        if not 0 < args.mfu <= 1:
            raise ValueError(f"--mfu must be in (0, 1]; got {args.mfu}")
        if args.steps < 1:
            raise ValueError(f"--steps must be >= 1; got {args.steps}")
    except ValueError as e:
        raise UserError(str(e)) from None
    if args.devices:
        # must happen before the first backend use; jax may be imported already, that is fine
        jax.config.update("jax_num_cpu_devices", int(args.devices))
        jax.config.update("jax_platforms", "cpu")
    from trackedit_jax.configuration import load_config
    from trackedit_jax.train.build import ConfigError

    config = load_config(args.config, args.extra)
    if mesh_sizes is not None:
        config.mesh.update(mesh_sizes)
    try:
        if args.mode == "train":
            from trackedit_jax.train.aot import plan_training_step

            plan = plan_training_step(config, device=device, mfu=args.mfu)
        else:
            from trackedit_jax.infer.aot import plan_edit_step
            from trackedit_jax.parallel.mesh import make_mesh

            try:
                mesh = make_mesh(dict(config.mesh))
            except ValueError as e:
                raise ConfigError(str(e)) from None
            plan = plan_edit_step(config, num_steps=args.steps, device=device, mfu=args.mfu, mesh=mesh)
    except ConfigError as e:
        raise UserError(str(e)) from None
    print(plan.table())
    if plan.fits is False:
        need = plan.peak_bytes / 1024**3
        print(
            f"does not fit: {need:.1f} GiB per device > {device.hbm_bytes / 1024**3:.0f} GiB of {device.name}. "
            "Try: " + "; ".join(plan.suggestions()),
            file=sys.stderr,
        )
        return 1
    return 0
