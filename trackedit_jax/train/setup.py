"""The one training set-up: everything derived from a config and a mesh before any data or weights exist.

`TrainingSetup.create(config, mesh)` builds the model abstractly and derives every sharding from the
logical axis names; `jit_step` is THE jitted training step (explicit in/out shardings, the old state
donated). The training loop (`train.loop.train`) runs it on real arrays and the AOT planner
(`train.aot.plan_training_step`) lowers the same object on `abstract_arguments`, so what is planned is
what is trained.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from ml_collections import ConfigDict

from trackedit_jax.parallel.sharding import batch_sharding, state_shardings
from trackedit_jax.train import build
from trackedit_jax.train.checkpointing import abstract_like
from trackedit_jax.train.optimizer import make_optimizer
from trackedit_jax.train.step import TrainState, init_train_state, make_eval_step, make_train_step


@dataclasses.dataclass
class TrainingSetup:
    """The model's graph, abstract trainable/frozen states and their shardings, the optimiser, and the
    abstract `TrainState` with its shardings. Shared by the training loop and the AOT planner."""

    config: ConfigDict
    mesh: Any
    trainable: Any
    graphdef: Any
    abs_params: Any
    abs_frozen: Any
    params_sh: Any
    frozen_sh: Any
    tx: Any
    schedule: Any
    abs_state: TrainState
    state_sh: TrainState
    replicated: NamedSharding
    use_ema: bool

    @classmethod
    def create(cls, config: ConfigDict, mesh) -> TrainingSetup:
        seed = int(config.train.seed)
        trainable = build.trainable(config)
        abstract = nnx.eval_shape(lambda: build.build_edit_model(config, seed=seed))
        graphdef, abs_params, abs_frozen = nnx.split(abstract, trainable, ...)
        params_sh = state_shardings(abs_params, mesh)
        frozen_sh = state_shardings(abs_frozen, mesh)
        tx, schedule = make_optimizer(
            peak_lr=config.train.lr,
            warmup_steps=config.train.warmup_steps,
            total_steps=config.train.num_steps,
            weight_decay=config.train.weight_decay,
            clip_norm=config.train.clip_norm,
        )
        use_ema = config.train.ema_decay > 0
        abs_state = jax.eval_shape(lambda p: init_train_state(p, tx, seed, use_ema), abs_params)
        replicated = NamedSharding(mesh, P())
        state_sh = TrainState(
            step=replicated,
            params=params_sh,
            opt_state=_opt_state_shardings(tx, abs_state.opt_state, params_sh, replicated),
            rng=replicated,
            ema=params_sh if use_ema else None,
        )
        return cls(
            config,
            mesh,
            trainable,
            graphdef,
            abs_params,
            abs_frozen,
            params_sh,
            frozen_sh,
            tx,
            schedule,
            abs_state,
            state_sh,
            replicated,
            use_ema,
        )

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of the training clips."""
        return int(self.config.data.height), int(self.config.data.width)

    def init_params(self):
        """Freshly initialised (trainable, frozen) states, created directly on their shardings."""
        config, seed, trainable = self.config, int(self.config.train.seed), self.trainable

        def _init():
            _, p, f = nnx.split(build.build_edit_model(config, seed=seed), trainable, ...)
            return p, f

        with jax.set_mesh(self.mesh):
            return jax.jit(_init, out_shardings=(self.params_sh, self.frozen_sh))()

    def jit_step(self, vae_graphdef: nnx.GraphDef) -> Callable:
        """The jitted `(state, frozen, vae_state, batch) -> (state, metrics)` of `make_train_step`:
        state on `state_sh` (donated: updated in place), frozen on `frozen_sh`, the VAE replicated,
        the batch as given (split over (data, fsdp), see `abstract_batch`); metrics replicated."""
        step = make_train_step(
            self.graphdef, vae_graphdef, self.tx, self.schedule, self.config, self.image_size, self.trainable
        )
        return jax.jit(
            step,
            in_shardings=(self.state_sh, self.frozen_sh, self.replicated, None),
            out_shardings=(self.state_sh, self.replicated),
            donate_argnums=(0,),
        )

    def jit_eval(self, vae_graphdef: nnx.GraphDef) -> Callable:
        """The jitted `(params, frozen, vae_state, batch, key) -> () float32` validation loss."""
        return jax.jit(make_eval_step(self.graphdef, vae_graphdef, self.config, self.image_size))

    def abstract_batch(self) -> dict:
        """`jax.ShapeDtypeStruct`s of one global batch, split over (data, fsdp), as the paper-size run is
        fed: the loader's `batch_spec` with text embeddings (`text.text_len` x `model.wan.text_dim`) and
        precomputed latents (`build.latent_grid` x `model.wan.in_dim`) in place of the videos."""
        from data_pipeline.loader import LoaderConfig, batch_spec

        config = self.config
        loader = LoaderConfig.from_config(
            config.data,
            batch_size=int(config.train.batch_size),
            text_len=int(config.text.text_len),
            with_warp=build.warp_prior(config),
            with_coverage=build.warp_coverage(config),
        )
        spec = batch_spec(
            loader,
            text_dim=int(config.model.wan.text_dim),
            latent_shape=(*build.latent_grid(config), int(config.model.wan.in_dim)),
        )
        return {
            k: jax.ShapeDtypeStruct(shape, dtype, sharding=batch_sharding(self.mesh, len(shape)))
            for k, (shape, dtype) in spec.items()
        }

    def abstract_arguments(self, abs_vae_state: nnx.State) -> tuple:
        """The four arguments of `jit_step` as sharded `jax.ShapeDtypeStruct`s (nothing allocated):
        (state, frozen, vae_state, batch), for `jit_step(...).lower(*args)`."""
        vae = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=self.replicated), abs_vae_state)
        return (
            abstract_like(self.abs_state, self.state_sh),
            abstract_like(self.abs_frozen, self.frozen_sh),
            vae,
            self.abstract_batch(),
        )


def _opt_state_shardings(tx, abs_opt_state, params_sh, replicated):
    """Optimiser-state leaves shaped like parameters take the parameter's sharding; others replicate."""
    import optax

    return optax.tree_map_params(
        tx,
        lambda _, s: s,
        abs_opt_state,
        params_sh,
        transform_non_params=lambda _: replicated,
        is_leaf=lambda x: isinstance(x, nnx.Variable),
    )
