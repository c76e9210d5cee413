"""Stage 1 of the paper: Wan2.1-T2V-1.3B + LoRA 64 + track conditioner on synthetic pairs, 4K steps.

384x672, 81 frames, N in [500, 1000] tracks. Needs the Wan weights and a synthetic shard directory:
    trackedit train --config configs/wan1_3b_stage1.py --workdir W \
        --config.init.wan_path=Wan2.1-T2V-1.3B --config.data.train_path=synthetic_shards/
"""

from configs.common import base_config


def get_config():
    c = base_config()
    c.train.update(num_steps=4000, batch_size=16)
    return c
