"""The shared shape of every training/inference configuration (a `ml_collections.ConfigDict`).

Every preset fills the same fields, so `--config.<key>=<value>` overrides work uniformly. Fields:

model.wan          WanConfig fields (dim, num_heads, num_layers, ffn_dim, ..., param_dtype, dtype,
                   remat_policy, attention_impl); its text_len is text.text_len (set there only)
model.conditioner  ConditionerConfig fields (dim, heads, temporal_layers, num_freqs, track_dims,
                   sampling, z_embedding, gaussian_sigma)
model.rope_mode    "sequential": target RoPE frames follow the source frames (f..2f-1);
                   "shared": same positions plus a learned source/target embedding
model.source_skip  the output is the source latents plus the network's (zero-initialised) change;
                   needs diffusion.prediction "sample" (off in the paper presets)
model.warp_prior   the model is also given the classical warp of the source into the target view
                   (`geometry.warp`), and a source_skip model adds its change to the warp instead of
                   the source; the data carries the warp (off in the paper presets)
model.warp_coverage  a warp_prior model also reads the warp's coverage clip (where the warp filled a pixel
                   from another frame or inpainted it, and how far it moved each source pixel,
                   `geometry.warp.coverage_video`); the data carries it
model.source_gate  a source_skip + warp_prior model also learns, for every output value, how much of the
                   source to take instead of the warp (a sigmoid gate from a second head)
model.gate_coverage  the source gate also reads the coverage clip directly (a zero-initialised linear map
                   of its patches added to the gate), so it can choose pixel by pixel
lora               rank, alpha, mode ("lora": LoRA + conditioner train; "full": everything trains)
vae                preset ("wan21" | "tiny" | "space_to_depth"), base_dim/z_dim overrides for tiny;
                   spatial_factor/temporal_factor/scale for space_to_depth (a fixed, exact pixel folding)
text               text_len (the one prompt length: text embeddings, WanConfig.text_len), dropout
                   (classifier-free guidance), guidance-free null = zeros
diffusion          timestep distribution ("uniform" | "logit_normal"), logit_mean/std, shift, prediction
                   ("velocity": the network outputs v, as Wan; "sample": it outputs x0, see diffusion/flow.py),
                   weighting (per-example loss weight: "none" as Wan; "x0": the clean-sample error),
                   pure_noise_fraction (share of samples trained at sigma = 1, where sampling starts; 1 = all of
                   them: the exported model then samples in one step only);
                   edit_weight (weight of a second loss term: the mean over the edit region, the latent
                   pixels whose target differs from the source by more than edit_threshold; 0 = off);
                   temporal_weight (weight of a third term: the frame-to-frame change of the decoded
                   clean-sample error, `flow.temporal_difference_error`; 0 = off);
                   gate_weight (`model.source_gate` models: weight of the gate's cross-entropy against
                   whichever of source and warp is nearer the target, `flow.gate_choice_loss`; 0 = off);
                   optional sample_shift / sample_steps: the exported model's sampler defaults
train              num_steps, seed, batch_size, grad_accum, lr, warmup_steps, weight_decay, clip_norm,
                   ema_decay (0 = off), log_every, val_every, val_batches, fingerprint_data (log a CRC
                   of every batch: checks exact resume)
checkpoint         every_steps, max_to_keep, async_save
mesh               data, fsdp, context, tensor (-1 = the rest of the devices)
data               train_path, val_path, num_frames, height, width, max_tracks, min_tracks, workers,
                   synthetic_pairs (generated when train_path is empty and the preset allows it; validation
                   gets min(64, max(2, synthetic_pairs // 8)) more), synthetic_workers (generator processes)
init               wan_path (frozen Wan base), vae_path, allow_random_base, require_init_from (stage 2)
init_from          a stage-1 workdir or checkpoint directory to start from (stage 2)
hardware           peak_flops_per_device (for MFU; 0 = measure it at start with a matmul probe in the
                   model's compute dtype)
"""

from __future__ import annotations

from ml_collections import ConfigDict


def base_config() -> ConfigDict:
    c = ConfigDict()
    c.model = ConfigDict()
    c.model.wan = ConfigDict(
        dict(
            dim=1536,
            num_heads=12,
            num_layers=30,
            ffn_dim=8960,
            freq_dim=256,
            in_dim=16,
            out_dim=16,
            text_dim=4096,
            patch_size=(1, 2, 2),
            eps=1e-6,
            param_dtype="float32",
            dtype="bfloat16",
            remat_policy="full",
            attention_impl="auto",
        )
    )
    c.model.conditioner = ConfigDict(
        dict(
            dim=512,
            heads=8,
            temporal_layers=2,
            num_freqs=8,
            track_dims=3,
            sampling="cross_attn",
            z_embedding=True,
            gaussian_sigma=1.0,
        )
    )
    c.model.rope_mode = "sequential"
    c.model.source_skip = False
    c.model.warp_prior = False
    c.model.warp_coverage = False
    c.model.source_gate = False
    c.model.gate_coverage = False
    c.lora = ConfigDict(dict(rank=64, alpha=64.0, mode="lora"))
    c.vae = ConfigDict(dict(preset="wan21", base_dim=96, z_dim=16, spatial_factor=4, temporal_factor=4, scale=0.5))
    c.text = ConfigDict(dict(text_len=512, dropout=0.1))
    c.diffusion = ConfigDict(
        dict(
            distribution="logit_normal",
            logit_mean=0.0,
            logit_std=1.0,
            shift=3.0,
            prediction="velocity",
            weighting="none",
            pure_noise_fraction=0.0,
            edit_weight=0.0,
            edit_threshold=0.2,
            temporal_weight=0.0,
            gate_weight=0.0,
        )
    )
    c.train = ConfigDict(
        dict(
            num_steps=4000,
            seed=0,
            batch_size=16,
            grad_accum=1,
            lr=1e-4,
            warmup_steps=200,
            weight_decay=0.01,
            clip_norm=1.0,
            ema_decay=0.0,
            log_every=10,
            val_every=500,
            val_batches=4,
            fingerprint_data=False,
        )
    )
    c.checkpoint = ConfigDict(dict(every_steps=250, max_to_keep=3, async_save=True))
    c.mesh = ConfigDict(dict(data=1, fsdp=-1, context=1, tensor=1))
    c.data = ConfigDict(
        dict(
            train_path="",
            val_path="",
            num_frames=81,
            height=384,
            width=672,
            max_tracks=1000,
            min_tracks=500,
            workers=0,
            synthetic_pairs=0,
            synthetic_workers=1,
        )
    )
    c.init = ConfigDict(dict(wan_path="", vae_path="", allow_random_base=False, require_init_from=False))
    c.init_from = ""
    c.hardware = ConfigDict(dict(peak_flops_per_device=0.0))
    return c
