"""Session fixtures of the inference tests: one tiny random checkpoint written through `save_pretrained`
(with a text encoder) and one pipeline over it, shared so its compiled programs are reused."""

import pytest
from infer_assets import build_model, build_vae, text_assets, tiny_config

from trackedit_jax.infer.pretrained import save_pretrained


@pytest.fixture(scope="session")
def tiny_parts(tmp_path_factory):
    """(config, model, vae, text encoder, tokenizer path) of the tiny random edit model."""
    config = tiny_config()
    encoder, tokenizer = text_assets(tmp_path_factory.mktemp("text"))
    return config, build_model(config), build_vae(config), encoder, tokenizer


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_parts):
    config, model, vae, encoder, tokenizer = tiny_parts
    out = tmp_path_factory.mktemp("ckpt") / "tiny_edit_model"
    return save_pretrained(out, config, model, vae, encoder, tokenizer)


@pytest.fixture(scope="session")
def tiny_pipe(tiny_checkpoint):
    from trackedit_jax.infer.pipeline import EditPipeline

    return EditPipeline.from_pretrained(tiny_checkpoint)


@pytest.fixture(scope="session")
def sheep_frames(sheep_video):
    from trackedit_jax.media import read_video

    frames, fps = read_video(sheep_video)
    return frames, fps
