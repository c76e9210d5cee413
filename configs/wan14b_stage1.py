"""Stage 1 with the Wan2.1-T2V-14B backbone (dim 5120, 40 layers, 40 heads, ffn 13824)."""

from configs.wan1_3b_stage1 import get_config as _stage


def get_config():
    c = _stage()
    c.model.wan.update(dim=5120, num_heads=40, num_layers=40, ffn_dim=13824)
    c.model.conditioner.update(dim=1024, heads=16)
    c.mesh.update(data=1, fsdp=-1, tensor=1)
    return c
