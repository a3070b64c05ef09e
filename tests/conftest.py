import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)

EMOJI_TRAIN = "builtin:emoji/google/train-*.tar"

# Overrides that shrink any ViT + text-transformer recipe to a test size
# (2 layers, width 64, 32-px images).
TINY = [
    "--data.batch_size", "8", "--data.num_workers", "0", "--data.image_size", "32",
    "--model.towers.image.embed_dim", "64",
    "--model.towers.image.model_kwargs", "{patch_size: 8, embed_dim: 64, depth: 2, num_heads: 2}",
    "--model.towers.text.width", "64", "--model.towers.text.layers", "2", "--model.towers.text.heads", "2",
    "--model.towers.text.embed_dim", "64",
]

# The same for recipes with an EfficientNet + BERT-like (transformers) pair (ALIGN).
TINY_ALIGN = [
    "--data.batch_size", "8", "--data.num_workers", "0", "--data.image_size", "32",
    "--model.towers.image.model_name", "efficientnet_b0", "--model.towers.image.embed_dim", "64",
    "--model.towers.text.embed_dim", "64",
    "--model.towers.text.config", "{model_type: bert, vocab_size: 8192, hidden_size: 64, num_hidden_layers: 2, "
    "num_attention_heads: 2, intermediate_size: 128, max_position_embeddings: 64}",
]


# The same for CLIPPO recipes: one image tower reads images and rendered captions (no text tower).
TINY_CLIPPO = [arg for i, arg in enumerate(TINY)
               if not (arg.startswith("--model.towers.text") or TINY[i - 1].startswith("--model.towers.text"))]


def tiny_overrides(recipe: str) -> list[str]:
    return TINY_ALIGN if recipe.startswith("align") else TINY_CLIPPO if recipe.startswith("clippo") else TINY


@pytest.fixture(autouse=True)
def _restore_torch_state():
    dtype = torch.get_default_dtype()
    yield
    torch.set_default_dtype(dtype)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


@pytest.fixture
def tiny_module():
    from vlp.module import VLPModule
    from vlp.objectives import ContrastiveLoss
    from vlp.towers import TextTransformer, TimmImageTower

    torch.manual_seed(0)
    image = TimmImageTower("vit_tiny_patch16_224", embed_dim=64, image_size=32,
                           model_kwargs=dict(patch_size=8, embed_dim=64, depth=2, num_heads=2))
    text = TextTransformer(context_length=16, width=64, layers=2, heads=2, embed_dim=64)
    return VLPModule({"image": image, "text": text}, [ContrastiveLoss()])


def fit_tiny_checkpoint(recipe: str, tmp):
    """A 2-step run of ``recipe`` at test size and its checkpoint: ``(cli, path)``."""
    from vlp.cli import run_cli

    cli = run_cli(["fit", "--recipe", recipe, *TINY, "--trainer.max_steps", "2", "--trainer.logger", "false",
                   "--trainer.callbacks", "[]", "--trainer.enable_checkpointing", "false",
                   "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp)])
    path = tmp / "run" / "checkpoints" / "last.ckpt"
    cli.trainer.save_checkpoint(path)
    return cli, path
