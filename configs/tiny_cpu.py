"""A tiny Edit-by-Track that trains on a CPU in minutes: random-initialised Wan-shaped DiT and VAE,
17 frames at 64x64, up to 256 tracks, synthetic pairs generated on first use.

    trackedit train --config configs/tiny_cpu.py --workdir /tmp/tiny
"""

from configs.common import base_config


def get_config():
    c = base_config()
    c.model.wan.update(
        dim=64,
        num_heads=2,
        num_layers=2,
        ffn_dim=128,
        freq_dim=32,
        text_dim=32,
        dtype="float32",
        remat_policy="none",
    )
    c.model.conditioner.update(dim=32, heads=2, temporal_layers=1, num_freqs=6)
    c.lora.update(rank=8, alpha=8.0, mode="full")  # no pretrained base here: everything trains
    c.vae.update(preset="tiny", base_dim=8, z_dim=16)
    c.text.update(text_len=16, dropout=0.1)
    c.diffusion.update(distribution="logit_normal", shift=1.0)
    c.train.update(num_steps=200, batch_size=2, lr=3e-4, warmup_steps=10, log_every=5, val_every=100, val_batches=2)
    c.checkpoint.update(every_steps=50, max_to_keep=2)
    c.mesh.update(data=-1, fsdp=1)
    c.data.update(num_frames=17, height=64, width=64, max_tracks=256, min_tracks=64, synthetic_pairs=32)
    c.init.update(allow_random_base=True)
    return c
