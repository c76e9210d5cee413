"""`EditPipeline`: a source video + paired source/target 3D tracks and cameras -> the edited video.

    pipe = EditPipeline.from_pretrained("edit_model/")           # a `trackedit export` directory
    out = pipe(video, src_tracks, src_cam, tgt_tracks, tgt_cam, prompt="", num_steps=50, guidance=5.0, seed=0)
    # out: (F, H, W, 3) uint8 on the model grid; `pipe.edit(...)` returns it with the prepared inputs

What happens, in order:

1. Validation (`geometry.validation`): finite tracks, N >= 1, sane intrinsics, rigid invertible
   extrinsics, equal frame counts of video, tracks and cameras; a `ValueError` names the problem.
2. Frames: the first `max_frames` frames are used (default: the model's training clip length,
   `config.num_frames`); that count is padded UP to the next 4k+1 by repeating the last frame (video,
   tracks and cameras alike) for the VAE, and the result is trimmed back, so the output has exactly as
   many frames as were used.
3. Space: frames are resized to the model grid (`config.height` x `config.width`, or `size=`).
   `resize="crop"` (default) keeps the aspect ratio: scale so the frame covers the grid, then take the
   centre window; `resize="stretch"` scales each axis independently. The intrinsics of both cameras
   are mapped the same way (pixel centres: u' = (u + 0.5) * s - 0.5 - offset), so the tracks project
   onto the resized frames exactly where they projected onto the originals. A camera whose
   `image_size` differs from the video's (a tracker run at another resolution) is mapped from its own
   grid, provided the aspect ratios agree.
4. Tracks: target point i pairs with source point `target_tracks.ids[i]` (edits that duplicate or drop
   points carry ids; without ids the counts must match). More than `max_tracks` pairs (default the
   training maximum) are reduced to a fixed random subset (numpy seed 0). A `warp_prior` model is also
   given the classical warp (`geometry.warp`) of the fitted frames with ALL the tracks, and with the
   source depth (`source_depth=`, (F, H, W) camera z of the input frames) when there is one.
5. The source video is encoded ONCE by the chunked causal VAE, the track condition is prepared once,
   and the model's noise-independent source path (`EditByTrack.encode_source`) is computed once.
6. The sampler (`diffusion.samplers.sample`, UniPC or Euler) runs the whole loop as one jitted program
   (with `progress=True`, the same program over chunks of steps with a tqdm bar). Classifier-free
   guidance is on text: the unconditional branch is the null text (all zeros, as training's text
   dropout); with no prompt and no prompt embedding there is no guidance (one model call per step).
7. The latents are decoded (chunked VAE) and returned as uint8 frames on the model grid
   (`output_size="input"` resizes them back to the input's scale: the input size for "stretch", the
   crop window's size in input pixels for "crop").
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from trackedit_jax.diffusion.flow import NUM_TRAIN_TIMESTEPS, velocity_from_output
from trackedit_jax.geometry.types import Camera, Tracks
from trackedit_jax.infer.edit_inputs import (
    EditInputs,
    EditOutput,
    as_tracks,
    as_uint8_video,
    fit_camera,
    fit_to_grid,
    fit_video,
    pad_frames,
    padded_frame_count,
    prior_warp,
)

OUTPUT_SIZES = ("model", "input")


# ------------------------------------------------------------------------------------------------ model calls


@dataclasses.dataclass(frozen=True)
class EditVelocity:
    """The sampler's `velocity_fn` for an edit model with graph `graphdef`, used as
    `jax.tree_util.Partial(EditVelocity(graphdef), state, cache)`: the weights and the source cache are
    bound (traced) arguments, never constants. Equal graphs compare equal, so pipelines of one
    architecture share the compiled sampling loop. The cache is repeated when the sampler stacks cond
    and uncond into one batch."""

    graphdef: Any
    prediction: str = "velocity"  # what the network outputs (diffusion.flow.PREDICTIONS)

    def __call__(self, state, cache, x_t, t, cond):
        # Fresh Variable objects in the current trace (the sampler's loop body): the bound ones were made
        # by the outer jit, and NNX transforms inside the model (the scanned blocks) refuse Variables from
        # another trace level.
        state = jax.tree.map(lambda a: a, state)
        model = nnx.merge(self.graphdef, state)
        reps = x_t.shape[0] // cache.source_tokens.shape[0]
        if reps > 1:
            cache = jax.tree.map(lambda a: jnp.concatenate([a] * reps, axis=0), cache)
        out = model(x_t, t, cond["context"], cache)
        return velocity_from_output(out, x_t, t / NUM_TRAIN_TIMESTEPS, self.prediction)


def cache_shardings(cache, mesh):
    """`NamedSharding`s of a `SourceCache` (arrays (B, L, D)) on `mesh`, from the rules table's activation
    names ("act_batch", "act_length", "act_embed"): split over the sequence on a context axis, over the
    batch on (data, fsdp) where it divides (`parallel.rules.fit_spec`), else replicated."""
    from jax.sharding import NamedSharding

    from trackedit_jax.parallel.rules import fit_spec

    axes = ("act_batch", "act_length", "act_embed")
    return jax.tree.map(lambda a: NamedSharding(mesh, fit_spec(a.shape, axes[: a.ndim], mesh)), cache)


@functools.partial(jax.jit, static_argnums=0)
def _vae_encode(graphdef, state, video):
    """(1, F, H, W, 3) in [-1, 1] -> normalised latents, chunked causal encoding (memory independent of F)."""
    vae = nnx.merge(graphdef, state)
    return vae.normalize_latents(vae.encode_frames(video, chunked=True))


@functools.partial(jax.jit, static_argnums=0)
def _vae_decode(graphdef, state, latents):
    """Normalised latents -> (1, F, H, W, 3) in [-1, 1], decoded one latent frame at a time."""
    vae = nnx.merge(graphdef, state)
    return vae.decode_frames(vae.denormalize_latents(latents), chunked=True)


@functools.partial(jax.jit, static_argnums=0)
def _encode_source(graphdef, state, latents, source, target, source_valid, target_valid, prior=None):
    model = nnx.merge(graphdef, state)
    return model.encode_source(latents, source, target, source_valid, target_valid, prior_latents=prior)


# ------------------------------------------------------------------------------------------------ pipeline


class EditPipeline:
    """The edit model, its VAE and (optionally) its text encoder, ready to edit videos.

    Args:
      model: `EditByTrack` (LoRA merged or not); vae: `WanVAE`; config: `PretrainedConfig`;
      text_encoder, tokenizer: optional `UMT5Encoder` + `PromptTokenizer` (needed for `prompt=` text).
      mesh: optional `jax.sharding.Mesh` (axes data, fsdp, context, tensor; `parallel.mesh.make_mesh`).
        The model's parameters are split over it by the training rules table (`parallel.sharding.
        state_shardings`: width over fsdp, heads and FFN over tensor), the source cache over the paired
        sequence on a context axis (`cache_shardings`), and every model call runs under the mesh, so the
        activation constraints of the model (`parallel.rules.shard_activation`) apply as in training.
        The VAE and text encoder are replicated. None: one device, as before.
    """

    def __init__(self, model, vae, config, text_encoder=None, tokenizer=None, *, mesh=None):
        self.config = config
        self.vae = vae
        self.mesh = mesh
        # jitted through (graphdef, state) like the model: nnx.jit on the module would recompile after
        # its state is written back between encode and decode calls
        self.vae_graphdef, self.vae_state = nnx.split(vae)
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.graphdef, self.state = nnx.split(model)
        if mesh is not None:
            from jax.sharding import NamedSharding
            from jax.sharding import PartitionSpec as P

            from trackedit_jax.parallel.sharding import state_shardings

            self.state = jax.device_put(self.state, state_shardings(self.state, mesh))
            self.vae_state = jax.device_put(self.vae_state, NamedSharding(mesh, P()))
        self.velocity_fn = EditVelocity(self.graphdef, getattr(config, "prediction", "velocity"))

    def _on_mesh(self):
        """The context model calls run in: the pipeline's mesh (`jax.set_mesh`) or nothing."""
        import contextlib

        return contextlib.nullcontext() if self.mesh is None else jax.set_mesh(self.mesh)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, dtype=None, mesh=None) -> EditPipeline:
        """Load a directory written by `trackedit export` / `save_pretrained` (sharded over `mesh` if given)."""
        from trackedit_jax.infer.pretrained import load_pretrained

        p = load_pretrained(path, dtype=dtype)
        return cls(p.model, p.vae, p.config, p.text_encoder, p.tokenizer, mesh=mesh)

    @property
    def model(self):
        return nnx.merge(self.graphdef, self.state)

    # -------------------------------------------------------------------------------- text
    def null_text(self) -> jax.Array:
        """(1, text_len, text_dim) zeros: the unconditional text (training's text dropout value)."""
        return jnp.zeros((1, self.config.text_len, self.config.wan.text_dim), jnp.float32)

    def encode_prompt(self, prompt: str) -> jax.Array:
        """(1, text_len, text_dim) float32 UMT5 embedding of `prompt` (padded positions zero)."""
        if self.text_encoder is None or self.tokenizer is None:
            raise ValueError(
                "this checkpoint has no text encoder (text_encoder/ + tokenizer/): pass prompt_embedding= "
                "(e.g. from `trackedit encode-text`) or export with --text-encoder and --tokenizer"
            )
        from trackedit_jax.models.wan.umt5 import encode_prompts

        emb, _ = encode_prompts(self.text_encoder, self.tokenizer, [prompt], batch_size=1)
        return jnp.asarray(emb, jnp.float32)

    def _text(self, prompt: str, prompt_embedding) -> jax.Array | None:
        if prompt_embedding is not None:
            if prompt:
                raise ValueError("give either prompt or prompt_embedding, not both")
            e = jnp.asarray(prompt_embedding, jnp.float32)
            if e.ndim == 2:
                e = e[None]
            D = self.config.wan.text_dim
            if e.ndim != 3 or e.shape[0] != 1 or e.shape[-1] != D:
                raise ValueError(f"prompt_embedding must be (L, {D}) or (1, L, {D}); got {tuple(e.shape)}")
            return e
        return self.encode_prompt(prompt) if prompt else None

    # -------------------------------------------------------------------------------- inputs
    def prepare(
        self,
        video,
        source_tracks,
        source_camera: Camera,
        target_tracks,
        target_camera: Camera,
        *,
        max_frames: int | None = None,
        size: tuple[int, int] | None = None,
        resize: str = "crop",
        max_tracks: int | None = None,
        source_depth=None,
    ) -> EditInputs:
        """Validate and bring the inputs onto the model grid (steps 1-4 of the module docstring)."""
        from trackedit_jax.geometry.validation import check_frame_counts, validate_inputs

        video = as_uint8_video(video)
        source_tracks = as_tracks(source_tracks, "source_tracks")
        target_tracks = as_tracks(target_tracks, "target_tracks")
        for name, cam in (("source_camera", source_camera), ("target_camera", target_camera)):
            if not isinstance(cam, Camera):
                raise ValueError(f"{name} must be a Camera; got {type(cam).__name__}")
        validate_inputs(source_tracks, source_camera, name="source tracks")
        validate_inputs(target_tracks, target_camera, name="target tracks")
        check_frame_counts(
            video=video.shape[0], source_tracks=source_tracks.num_frames, target_tracks=target_tracks.num_frames
        )
        if tuple(source_camera.image_size) != tuple(target_camera.image_size):
            raise ValueError(
                f"source and target cameras must share image_size; got {source_camera.image_size} "
                f"and {target_camera.image_size}"
            )

        # pairing: target point i <-> source point ids[i]
        Ns, Nt = source_tracks.num_points, target_tracks.num_points
        ids = None if target_tracks.ids is None else np.asarray(target_tracks.ids, np.int64)
        if ids is None and Nt != Ns:
            raise ValueError(
                f"target tracks have N={Nt} points and source tracks N={Ns}, and the target has no "
                "ids mapping its points to source points"
            )
        if ids is not None and (ids.shape != (Nt,) or ids.min() < 0 or ids.max() >= Ns):
            raise ValueError(
                f"target track ids must index the N={Ns} source points; got range [{ids.min()}, {ids.max()}]"
            )
        src_xyz = np.asarray(source_tracks.xyz, np.float32)
        src_vis = np.asarray(source_tracks.visibility, bool)
        if ids is not None:
            src_xyz, src_vis = src_xyz[:, ids], src_vis[:, ids]
        tgt_xyz = np.asarray(target_tracks.xyz, np.float32)
        tgt_vis = np.asarray(target_tracks.visibility, bool)
        limit = int(self.config.max_tracks if max_tracks is None else max_tracks)
        keep = None
        if limit < 1:
            raise ValueError(f"max_tracks must be >= 1; got {limit}")
        if Nt > limit:
            keep = np.sort(np.random.default_rng(0).choice(Nt, limit, replace=False))
            src_xyz, src_vis, tgt_xyz, tgt_vis = src_xyz[:, keep], src_vis[:, keep], tgt_xyz[:, keep], tgt_vis[:, keep]

        # frames
        F_in = video.shape[0]
        cap = int(self.config.num_frames if max_frames is None else max_frames)
        if cap < 1:
            raise ValueError(f"max_frames must be >= 1; got {cap}")
        n = min(F_in, cap)
        F_pad = padded_frame_count(n)

        # space
        h, w = (self.config.height, self.config.width) if size is None else (int(size[0]), int(size[1]))
        if h % 16 or w % 16 or h <= 0 or w <= 0:
            raise ValueError(f"size must be positive multiples of 16 (VAE x8, patch x2); got ({h}, {w})")
        fit = fit_to_grid(video.shape[1:3], (h, w), resize)
        frames = pad_frames(fit_video(video[:n], fit), F_pad)

        def fitted(c: Camera) -> Camera:  # the first n frames, mapped onto the grid
            return fit_camera(Camera(np.asarray(c.intrinsics)[:n], np.asarray(c.extrinsics)[:n], c.image_size), fit)

        def padded(c: Camera) -> Camera:  # fit_camera gives numpy arrays
            return Camera(pad_frames(c.intrinsics, F_pad), pad_frames(c.extrinsics, F_pad), c.image_size)

        src_cam, tgt_cam = fitted(source_camera), fitted(target_camera)

        def tracks_of(xyz, vis) -> Tracks:
            return Tracks(pad_frames(xyz[:n], F_pad), pad_frames(vis[:n], F_pad))

        prior = (frames[:n], source_tracks, target_tracks, src_cam, tgt_cam, fit, source_depth)
        warp, coverage = (pad_frames(v, F_pad) for v in prior_warp(*prior)) if self.config.warp_prior else (None, None)

        return EditInputs(
            video=frames,
            source_tracks=tracks_of(src_xyz, src_vis),
            source_camera=padded(src_cam),
            target_tracks=tracks_of(tgt_xyz, tgt_vis),
            target_camera=padded(tgt_cam),
            num_frames=n,
            fit=fit,
            point_indices=keep,
            warp=warp,
            warp_coverage=coverage,
        )

    # -------------------------------------------------------------------------------- generation
    def generate(
        self,
        inputs: EditInputs,
        prompt: str = "",
        *,
        prompt_embedding=None,
        num_steps: int | None = None,
        guidance: float = 5.0,
        seed: int = 0,
        solver: str = "unipc",
        shift: float | None = None,
        progress: bool = False,
    ) -> EditOutput:
        """Encode, sample, decode prepared inputs (module docstring, 5-7); steps/shift: the model's by default."""
        from trackedit_jax.diffusion.samplers import SOLVERS

        if solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}; got {solver!r}")
        num_steps = self.config.check_steps(self.config.sample_steps if num_steps is None else num_steps)
        if not math.isfinite(float(guidance)):
            raise ValueError(f"guidance must be finite; got {guidance}")
        shift = float(self.config.sample_shift if shift is None else shift)
        if not shift > 0:
            raise ValueError(f"shift must be positive; got {shift}")
        timings = {}

        t0 = time.perf_counter()
        text = self._text(prompt, prompt_embedding)
        timings["text"] = time.perf_counter() - t0

        with self._on_mesh():
            return self._generate(
                inputs,
                text,
                timings,
                num_steps=num_steps,
                guidance=guidance,
                seed=seed,
                solver=solver,
                shift=shift,
                progress=progress,
                prompt=prompt,
                prompt_embedding=prompt_embedding,
            )

    def _generate(
        self, inputs, text, timings, *, num_steps, guidance, seed, solver, shift, progress, prompt, prompt_embedding
    ) -> EditOutput:
        from trackedit_jax.diffusion.samplers import initial_noise, sample
        from trackedit_jax.geometry.conditioning import prepare_track_condition
        from trackedit_jax.media import from_model_range, to_model_range

        t0 = time.perf_counter()
        video = jnp.asarray(to_model_range(inputs.video))[None]
        latents = jax.block_until_ready(_vae_encode(self.vae_graphdef, self.vae_state, video))
        timings["vae_encode"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        cond = prepare_track_condition(
            inputs.source_tracks, inputs.source_camera, inputs.target_tracks, inputs.target_camera
        )
        encode = lambda c: _vae_encode(self.vae_graphdef, self.vae_state, jnp.asarray(to_model_range(c))[None])  # noqa: E731
        clips = inputs.prior_clips(self.config.warp_coverage) if self.config.warp_prior else []
        prior = jnp.concatenate([encode(c) for c in clips], axis=-1) if clips else None
        cache = _encode_source(
            self.graphdef,
            self.state,
            latents.astype(jnp.float32),
            cond.source[None],
            cond.target[None],
            cond.source_valid[None],
            cond.target_valid[None],
            prior,
        )
        if self.mesh is not None:
            cache = jax.device_put(cache, cache_shardings(cache, self.mesh))
        cache = jax.block_until_ready(cache)
        timings["source_cache"] = time.perf_counter() - t0

        use_cfg = text is not None and float(guidance) != 1.0
        context = self.null_text() if text is None else text
        velocity = jax.tree_util.Partial(self.velocity_fn, self.state, cache)
        noise = initial_noise(int(seed), tuple(latents.shape), jnp.float32)
        t0 = time.perf_counter()
        x0 = sample(
            velocity,
            noise,
            {"context": context},
            uncond={"context": jnp.zeros_like(context)} if use_cfg else None,
            guidance=float(guidance) if use_cfg else 1.0,
            solver=solver,
            num_steps=int(num_steps),
            shift=shift,
            progress=progress,
        )
        x0 = jax.block_until_ready(x0)
        timings["sampling"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        decoded = _vae_decode(self.vae_graphdef, self.vae_state, x0)
        frames = from_model_range(np.asarray(decoded[0]))[: inputs.num_frames]
        timings["vae_decode"] = time.perf_counter() - t0

        settings = {
            "num_steps": int(num_steps),
            "guidance": float(guidance) if use_cfg else 1.0,
            "guidance_requested": float(guidance),
            "cfg": use_cfg,
            "seed": int(seed),
            "solver": solver,
            "shift": shift,
            "prompt": prompt,
            "prompt_embedding": prompt_embedding is not None,
            "model_grid": [int(s) for s in inputs.video.shape[1:3]],
            "frames_used": inputs.num_frames,
            "frames_padded_to": int(inputs.video.shape[0]),
            "latent_shape": [int(s) for s in latents.shape],
            "num_tracks": int(inputs.target_tracks.num_points),
            "resize": {
                "in_size": list(inputs.fit.in_size),
                "resized": list(inputs.fit.resized),
                "offset": list(inputs.fit.offset),
            },
        }
        return EditOutput(video=frames, latents=x0, inputs=inputs, settings=settings, timings=timings)

    def edit(
        self,
        video,
        source_tracks,
        source_camera: Camera,
        target_tracks,
        target_camera: Camera,
        prompt: str = "",
        *,
        prompt_embedding=None,
        num_steps: int | None = None,
        guidance: float = 5.0,
        seed: int = 0,
        solver: str = "unipc",
        shift: float | None = None,
        max_frames: int | None = None,
        size: tuple[int, int] | None = None,
        resize: str = "crop",
        max_tracks: int | None = None,
        source_depth=None,
        progress: bool = False,
    ) -> EditOutput:
        """`prepare` then `generate`; returns the `EditOutput` (video, inputs, settings, timings)."""
        t0 = time.perf_counter()
        inputs = self.prepare(
            video,
            source_tracks,
            source_camera,
            target_tracks,
            target_camera,
            max_frames=max_frames,
            size=size,
            resize=resize,
            max_tracks=max_tracks,
            source_depth=source_depth,
        )
        t_prep = time.perf_counter() - t0
        out = self.generate(
            inputs,
            prompt,
            prompt_embedding=prompt_embedding,
            num_steps=num_steps,
            guidance=guidance,
            seed=seed,
            solver=solver,
            shift=shift,
            progress=progress,
        )
        out.timings = {"prepare": t_prep, **out.timings}
        out.settings.update(resize_mode=resize, max_frames=max_frames, max_tracks=max_tracks)
        return out

    def __call__(
        self,
        video,
        source_tracks,
        source_camera: Camera,
        target_tracks,
        target_camera: Camera,
        prompt: str = "",
        *,
        output_size: str = "model",
        **kwargs: Any,
    ) -> np.ndarray:
        """The edited video, (F, h, w, 3) uint8 on the model grid (F = frames used; see `edit` for the
        keyword arguments). output_size="input" resizes it back to the input's scale (module docstring)."""
        if output_size not in OUTPUT_SIZES:
            raise ValueError(f"output_size must be one of {OUTPUT_SIZES}; got {output_size!r}")
        out = self.edit(video, source_tracks, source_camera, target_tracks, target_camera, prompt, **kwargs)
        if output_size == "input":
            from trackedit_jax.media import resize_video

            return resize_video(out.video, out.inputs.fit.window_in_input)
        return out.video
