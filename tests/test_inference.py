"""vlp.inference: one loader for every checkpoint kind and schema; the parts drop their own
training-only settings; the data spec is the run's, never a guessed default."""

import copy

import pytest
import torch

from tests.conftest import fit_tiny_checkpoint
from vlp.checkpointing import SCHEMA
from vlp.errors import VLPError
from vlp.inference import data_spec, inference_config, load, part_state, read_checkpoint

IMAGES = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def clip_run(tmp_path_factory):
    return fit_tiny_checkpoint("clip_tiny", tmp_path_factory.mktemp("clip"))


def test_load_rebuilds_the_trained_model_and_its_data_spec(clip_run):
    cli, path = clip_run
    loaded = load(path)
    trained = cli.model.eval()
    assert not loaded.module.training and loaded.module is not trained
    texts = loaded.data.texts(["a cat face", "a red apple"])
    assert texts.shape == (2, 16)  # the run's context length (TINY keeps clip_tiny's 16)
    with torch.no_grad():
        assert torch.equal(loaded.module.embed("image", IMAGES), trained.embed("image", IMAGES))
        assert torch.equal(loaded.module.embed("text", texts), trained.embed("text", texts))
    assert loaded.data.image_size == 32 and loaded.info["global_step"] == 2 and loaded.info["recipe"] == "clip_tiny"
    saved = read_checkpoint(path)["vlp"]
    assert saved["schema"] == SCHEMA and saved["model"]["towers"]["image"]["class_path"] == "vlp.towers.TimmImageTower"


def test_a_schema_2_checkpoint_loads_the_same(clip_run, tmp_path):
    """Before schema 3 the model and data config were Lightning's hyper-parameters."""
    _, path = clip_run
    ckpt = torch.load(path, weights_only=False)
    old = copy.deepcopy(ckpt)
    old["hyper_parameters"] = old["vlp"].pop("model")
    old["datamodule_hyper_parameters"] = old["vlp"].pop("data")
    del old["vlp"]["schema"]
    torch.save(old, tmp_path / "old.ckpt")
    a, b = load(path).module, load(tmp_path / "old.ckpt").module
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


def test_an_old_coca_checkpoint_has_its_decoder_as_a_head(tmp_path):
    """Schema 2: CoCa's CaptioningLoss owned the decoder (``objectives.1.decoder.*``, its shape in
    the objective's init_args)."""
    state = {"objectives.1.decoder.head.weight": torch.ones(3, 2), "objectives.0.logit_scale": torch.tensor(2.0)}
    hparams = {"towers": {}, "objectives": [
        {"class_path": "vlp.objectives.ContrastiveLoss"},
        {"class_path": "vlp.objectives.CaptioningLoss", "init_args": {"weight": 2.0, "layers": 2, "heads": 4}}]}
    torch.save({"state_dict": state, "hyper_parameters": hparams}, tmp_path / "coca.ckpt")
    ckpt = read_checkpoint(tmp_path / "coca.ckpt")
    assert set(ckpt["state_dict"]) == {"heads.decoder.head.weight", "objectives.0.logit_scale"}
    assert ckpt["state_dict"]["objectives.0.logit_scale"].shape == (1,)
    model = ckpt["vlp"]["model"]
    assert model["objectives"][1]["init_args"] == {"weight": 2.0}
    assert model["heads"]["decoder"] == {"class_path": "vlp.heads.CaptionDecoder",
                                         "init_args": {"layers": 2, "heads": 4}}
    assert torch.equal(part_state(tmp_path / "coca.ckpt", "heads.decoder")["head.weight"], torch.ones(3, 2))


def test_each_part_drops_its_own_training_only_settings():
    config = {"towers": {"image": {"class_path": "vlp.towers.TimmImageTower", "init_args": {
        "model_name": "vit_tiny_patch16_224", "init_from": "gone.ckpt", "lock": True, "unlocked_groups": 1,
        "head": "keep", "pretrained_path": "gone.pth", "embed_dim": 64}},
        "text": {"class_path": "vlp.towers.TextTransformer", "init_args": {"width": 64}}}}
    out = inference_config(config)
    assert out["towers"]["image"]["init_args"] == {"model_name": "vit_tiny_patch16_224", "init_from": None,
                                                   "lock": False, "unlocked_groups": 0, "head": "new",
                                                   "pretrained_path": None, "embed_dim": 64}
    assert out["towers"]["text"] == config["towers"]["text"]
    assert config["towers"]["image"]["init_args"]["lock"] is True  # the input is left as it was


def test_the_data_spec_is_the_run_s_or_a_clear_error():
    spec = data_spec({"image_size": 48, "tokenizer": {"class_path": "vlp.data.tokenizer.TextTokenizer",
                                                      "init_args": {"context_length": 12}}}, "checkpoint c.ckpt")
    assert spec.texts(["a cat"]).shape == (1, 12) and spec.image_size == 48
    assert data_spec({"image_size": 32, "context_length": 20, "tokenizer": None}, "c").texts(["x"]).shape == (1, 20)
    with pytest.raises(VLPError, match=r"^checkpoint c\.ckpt: the data config does not say its context_length"):
        data_spec({"image_size": 32, "tokenizer": None}, "checkpoint c.ckpt")  # no silent 77
    with pytest.raises(VLPError, match=r"^checkpoint c\.ckpt: data\.tokenizer: vlp\.data\.tokenizer\.TextTokenizer: "
                                       r"context_length: expected int, got twelve$"):
        data_spec({"image_size": 32, "tokenizer": {"class_path": "vlp.data.tokenizer.TextTokenizer",
                                                   "init_args": {"context_length": "twelve"}}}, "checkpoint c.ckpt")


def test_unreadable_and_foreign_checkpoints_are_clear_errors(tmp_path):
    with pytest.raises(VLPError, match="does not exist"):
        load(tmp_path / "none.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(VLPError, match="cannot be read"):
        load(tmp_path / "junk.ckpt")
    torch.save({"state_dict": {"w": torch.zeros(1)}}, tmp_path / "bare.ckpt")
    with pytest.raises(VLPError, match="holds no vlp model config"):
        load(tmp_path / "bare.ckpt")
    (tmp_path / "dir.ckpt").mkdir()
    with pytest.raises(VLPError, match="neither a DeepSpeed nor an FSDP2 checkpoint"):
        load(tmp_path / "dir.ckpt")


def test_any_part_starts_from_a_checkpoint_s_part(clip_run, tmp_path, tiny_module):
    """``model.init_from``: one way for any part (a tower, a head, an objective); a loaded model
    takes its weights from its own checkpoint, not from the file it started from."""
    from vlp.module import VLPModule
    from vlp.objectives import ContrastiveLoss

    _, path = clip_run
    trained = read_checkpoint(path)["state_dict"]
    torch.manual_seed(1)
    module = VLPModule(dict(tiny_module.towers), [ContrastiveLoss()],
                       init_from={"towers.text": str(path), "objectives.0": str(path)})
    assert all(torch.equal(v, trained[f"towers.text.{k}"]) for k, v in module.towers.text.state_dict().items())
    assert torch.equal(module.objectives[0].logit_scale, trained["objectives.0.logit_scale"])
    with pytest.raises(VLPError, match=r"model.init_from: the model has no part 'towers.audio'"):
        VLPModule(dict(tiny_module.towers), [ContrastiveLoss()], init_from={"towers.audio": str(path)})
    with pytest.raises(VLPError, match=r"model.init_from.heads.decoder: checkpoint .* holds no weights of heads"):
        VLPModule(dict(tiny_module.towers), [ContrastiveLoss()], heads={"decoder": torch.nn.Linear(2, 2)},
                  init_from={"heads.decoder": str(path)})
    config = read_checkpoint(path)["vlp"]["model"]
    assert inference_config({"class_path": "vlp.module.VLPModule",
                             "init_args": {**config, "init_from": {"towers.text": "gone.ckpt"}}})["init_args"][
        "init_from"] is None
