"""CLIPPO end to end: captions rendered in the data workers, one tower for both, eval on rendered text."""

import json

import pytest
import torch

from tests.conftest import EMOJI_TRAIN, TINY, TINY_CLIPPO
from tests.test_cli import _error_line
from vlp.cli import main, run_cli
from vlp.data.datamodule import VLPDataModule
from vlp.data.render import TextRenderer
from vlp.errors import VLPError
from vlp.eval.tasks import load_task

def eval_callback(cli):
    from vlp.callbacks import EvalTasks

    return next(cb for cb in cli.trainer.callbacks if isinstance(cb, EvalTasks))


RENDERER = "{class_path: vlp.data.render.TextRenderer, init_args: {image_size: 32}}"


def test_the_data_workers_render_the_captions():
    renderer = TextRenderer(image_size=32)
    dm = VLPDataModule(train_shards=EMOJI_TRAIN, batch_size=4, num_workers=1, image_size=32, seed=0,
                       text_renderer=renderer)
    assert dm.tokenizer is None
    batch = next(iter(dm.train_dataloader()))
    assert batch["text"].shape == (4, 3, 32, 32) and batch["text"].dtype == torch.float32
    assert torch.equal(batch["text"], renderer(batch["caption"]))
    assert dm.example_batch()["text"].shape == (1, 3, 32, 32)
    with pytest.raises(VLPError, match="leave data.tokenizer unset"):
        from vlp.data.tokenizer import TextTokenizer

        VLPDataModule(train_shards=EMOJI_TRAIN, text_renderer=renderer, tokenizer=TextTokenizer())


def test_caption_keys_draw_one_language_per_sample_reproducibly():
    langs = ["en", "zh", "ja", "ko", "de", "fr", "es", "ru", "hi"]

    def captions():
        dm = VLPDataModule(train_shards=EMOJI_TRAIN, batch_size=32, num_workers=0, image_size=16, seed=3,
                           caption_keys=[f"labels.{lang}" for lang in langs])
        loader = iter(dm.train_dataloader())
        return [c for _ in range(2) for c in next(loader)["caption"]]

    first = captions()
    assert first == captions()  # the draw follows the data seed
    scripts = {"latin": any(c.isascii() for c in first), "han": any("\u4e00" <= ch <= "\u9fff" for c in first for ch in c),
               "hangul": any("\uac00" <= ch <= "\ud7a3" for c in first for ch in c),
               "cyrillic": any("\u0400" <= ch <= "\u04ff" for c in first for ch in c),
               "devanagari": any("\u0900" <= ch <= "\u097f" for c in first for ch in c)}
    assert all(scripts.values()), scripts


def test_a_text_tower_cannot_read_rendered_text(capsys):
    line = _error_line(capsys, ["fit", "--recipe", "clip_tiny", *TINY, "--data.text_renderer", RENDERER,
                                "--trainer.max_steps", "1", "--trainer.logger", "false"])
    assert line.startswith("vlp: error: model.towers.text reads token ids, but data.text_renderer draws the "
                           "captions as images")


@pytest.fixture(scope="module")
def clippo_run(tmp_path_factory):
    """clippo_tiny at test size, 3 steps through the CLI with its end-of-run evaluation."""
    tmp = tmp_path_factory.mktemp("clippo")
    tasks = "[emoji_google_test_retrieval, emoji_google_test_retrieval_zh, emoji_google_test_category]"
    callbacks = f"[{{class_path: vlp.callbacks.EvalTasks, init_args: {{tasks: {tasks}, batch_size: 128}}}}]"
    cli = run_cli(["fit", "--recipe", "clippo_tiny", *TINY_CLIPPO, "--trainer.max_steps", "3",
                   "--trainer.callbacks", callbacks, "--trainer.enable_progress_bar", "false",
                   "--trainer.logger.init_args.save_dir", str(tmp)])
    path = tmp / "last.ckpt"
    cli.trainer.save_checkpoint(path)
    return cli, path


def test_tiny_clippo_trains_with_one_tower_and_evaluates_rendered_text(clippo_run):
    cli, _ = clippo_run
    assert cli.trainer.global_step == 3 and torch.isfinite(cli.trainer.callback_metrics["train/loss"])
    assert list(cli.model.towers) == ["image"] and cli.model.share == {"text": "image"}
    assert cli.datamodule.tokenizer is None and cli.datamodule.text_renderer.image_size == 32
    results = {r["task"]: r for r in eval_callback(cli).results}
    assert set(results) == {"emoji_google_test_retrieval", "emoji_google_test_retrieval_zh",
                            "emoji_google_test_category"}
    assert results["emoji_google_test_retrieval"]["details"]["num_texts"] == 385
    # the end-of-run evaluation gives the numbers of the trained model evaluated here
    category = load_task("emoji_google_test_category").run(cli.model, cli.datamodule.eval_data(0), batch_size=128)
    assert results["emoji_google_test_category"]["metrics"] == pytest.approx(category["metrics"], abs=1e-6)
    # the text name runs the image tower on rendered text
    module = cli.model.eval()
    rendered = cli.datamodule.text_renderer(["grinning face"])
    with torch.no_grad():
        assert torch.allclose(module.embed("text", rendered), module.embed("image", rendered))


def test_vlp_eval_rebuilds_the_renderer_from_the_checkpoint(clippo_run, tmp_path, capsys):
    cli, ckpt = clippo_run
    main(["eval", "--ckpt", str(ckpt), "--task", "emoji_google_test_retrieval_zh", "--out", str(tmp_path),
          "--batch_size", "128"])
    capsys.readouterr()
    record = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert record["model"]["recipe"] == "clippo_tiny" and record["model"]["text_tower"] is None
    ref = load_task("emoji_google_test_retrieval_zh").run(cli.model, cli.datamodule.eval_data(0), batch_size=128)
    assert record["metrics"] == pytest.approx(ref["metrics"], abs=1e-6)
    # and the same numbers as the end-of-run evaluation of `vlp fit`
    end = {r["task"]: r for r in eval_callback(cli).results}["emoji_google_test_retrieval_zh"]
    assert record["metrics"] == pytest.approx(end["metrics"], abs=1e-6)


def test_clippo_with_siglip_loss_and_flip_masking_learns(tmp_path):
    """CLIPPO combines with the other parts: SigLIP's loss on the shared tower, FLIP masking
    (of images and rendered texts alike); the loss falls on a fixed batch."""
    cli = run_cli(["--recipe", "clippo_tiny", *TINY_CLIPPO, "--trainer.logger", "false",
                   "--model.objectives", "[{class_path: vlp.objectives.SigmoidLoss}]",
                   "--model.towers.image.init_args.mask_ratio", "0.5"], run=False)
    module = cli.model.train()
    assert type(module.objectives[0]).__name__ == "SigmoidLoss" and module.share == {"text": "image"}
    module.log = lambda *a, **k: None
    batch = next(iter(cli.datamodule.train_dataloader()))
    assert batch["text"].shape[1:] == (3, 32, 32)  # rendered captions
    opt = torch.optim.AdamW(module.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        loss = module.objective_loss(module(batch), batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses
