"""Stage 2 of the paper: real video pairs with estimated tracks, 8K steps, started from stage 1.

    trackedit train --config configs/wan1_3b_stage2.py --workdir W2 --config.init_from=W1 \
        --config.init.wan_path=Wan2.1-T2V-1.3B --config.data.train_path=real_shards/
"""

from configs.common import base_config


def get_config():
    c = base_config()
    c.train.update(num_steps=8000, batch_size=16, lr=5e-5)
    c.init.require_init_from = True  # stage 2 never starts from scratch
    return c
