"""`vlp caption` and the captioning eval kind on a coca_tiny checkpoint."""

import json

import pytest

from tests.conftest import fit_tiny_checkpoint
from vlp.cli import main
from vlp.eval.tasks import load_task, task_summary


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-step coca_tiny run at test size (32-px images) and its checkpoint."""
    return fit_tiny_checkpoint("coca_tiny", tmp_path_factory.mktemp("coca"))


def _png(tmp_path):
    from vlp.data.shards import expand_shards
    from vlp.data.tar_reader import tar_samples

    sample = next(tar_samples(expand_shards("builtin:emoji/twitter/test-000000.tar")[0]))
    path = tmp_path / "emoji.png"
    path.write_bytes(sample["png"])
    return path, sample["__key__"]


def test_caption_prints_the_captions_of_the_in_memory_model(trained, tmp_path, capsys):
    from vlp.generation import Captioner

    cli, ckpt = trained
    png, key = _png(tmp_path)
    main(["caption", "--ckpt", str(ckpt), str(png), "builtin:emoji/twitter/test-000000.tar", "--strategy", "greedy",
          "--max_length", "4", "--batch_size", "64"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 + 385
    source, text = lines[0].split("\t")
    assert source == str(png) and lines[1].split("\t")[0].endswith(f"test-000000.tar:{key}")
    assert lines[1].split("\t")[1] == text  # the same image from the file and from the shard
    data = cli.datamodule.eval_data(0)
    from vlp.data.decode import decode_image

    image = data.transform()(decode_image(png.read_bytes()))[None]
    expected = data.tokenizer.decode(Captioner(cli.model).generate(image, "greedy", max_length=4).ids)[0]
    assert text == expected


def test_caption_writes_json_lines_and_refuses_a_missing_image(trained, tmp_path, capsys):
    """One JSON line per image: its source, the in-memory model's beam caption (beam search is
    the default strategy) and that caption's score rounded to 4 decimals."""
    from vlp.data.decode import decode_image
    from vlp.generation import Captioner

    cli, ckpt = trained
    png, _ = _png(tmp_path)
    out = tmp_path / "captions.jsonl"
    main(["caption", "--ckpt", str(ckpt), str(png), str(png), "--out", str(out), "--num_beams", "2",
          "--max_length", "4"])
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["source"] for r in records] == [str(png)] * 2 and records[0] == records[1]
    data = cli.datamodule.eval_data(0)
    image = data.transform()(decode_image(png.read_bytes()))[None]
    expected = Captioner(cli.model).generate(image, "beam", num_beams=2, max_length=4)
    assert records[0]["caption"] == data.tokenizer.decode(expected.ids)[0]
    assert records[0]["score"] == pytest.approx(expected.scores[0].item(), abs=1e-4) and records[0]["score"] < 0
    with pytest.raises(SystemExit):
        main(["caption", "--ckpt", str(ckpt), str(tmp_path / "nope.png")])
    assert capsys.readouterr().err.strip().endswith("caption: image file not found: " + str(tmp_path / "nope.png"))


def test_captioning_eval_task_through_vlp_eval(trained, tmp_path, capsys):
    cli, ckpt = trained
    main(["eval", "--ckpt", str(ckpt), "--task", "emoji_google_test_captioning", "--out", str(tmp_path),
          "--batch_size", "128"])
    record = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert record["kind"] == "captioning" and record["num_samples"] == 385
    # the in-memory model's captions and scores, and its first five captions as examples
    ref = load_task("emoji_google_test_captioning").run(cli.model, cli.datamodule.eval_data(0), batch_size=128)
    assert set(record["metrics"]) == {"cider", "bleu4", "exact_match"}
    assert record["metrics"] == pytest.approx(ref["metrics"], abs=1e-9)
    assert record["details"] == ref["details"] and len(record["details"]["examples"]) == 5
    assert f" {task_summary(record)}  (" in capsys.readouterr().out


def test_zeroshot_scored_by_the_decoder_through_vlp_eval(trained, tmp_path):
    """The built-in decoder-scored zero-shot task, on a tenth of its samples (its own hold-out) to
    stay quick, gives through `vlp eval` the in-memory model's metrics."""
    import yaml

    from vlp.data.eval_set import set_samples
    from vlp.data.holdout import Holdout
    from vlp.data.shards import expand_shards
    from vlp.eval.tasks import tasks_root

    cli, ckpt = trained
    spec = yaml.safe_load((tasks_root() / "emoji_google_test_category_decoder.yaml").read_text())
    spec["init_args"]["holdout"] = {"fraction": 0.1, "seed": 0}
    task_file = tmp_path / "decoder_tenth.yaml"
    task_file.write_text(yaml.safe_dump(spec))
    main(["eval", "--ckpt", str(ckpt), "--task", str(task_file), "--out", str(tmp_path / "out"), "--batch_size", "128"])
    record = json.loads(next((tmp_path / "out").glob("*.json")).read_text())
    assert record["kind"] == "zeroshot" and record["details"] == {"num_classes": 9, "scorer": "decoder"}
    held = list(set_samples(expand_shards(spec["init_args"]["shards"]), Holdout(0.1, 0)))
    assert 20 < record["num_samples"] == len(held) < 60
    ref = load_task(str(task_file)).run(cli.model, cli.datamodule.eval_data(0), batch_size=128)
    assert record["metrics"] == pytest.approx(ref["metrics"], abs=1e-6)
