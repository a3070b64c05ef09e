"""Zero-shot classification (vlp.eval.zeroshot): the classifier is the renormalised mean of the
normalised template embeddings; the contrastive scorer ranks classes by cosine with it, the
decoder scorer by the mean template log-likelihood of a caption decoder."""

import pytest
import torch
import torch.nn.functional as F

from tests.eval.shards import eval_image, eval_shard
from vlp.data.eval_set import EvalData
from vlp.data.tokenizer import TextTokenizer
from vlp.errors import VLPError
from vlp.eval.metrics import classification_metrics
from vlp.eval.zeroshot import ZeroShotClassification, zeroshot_classifier


def test_zeroshot_classifier_is_renormalised_mean_of_template_embeddings():
    def encode(tokens):  # fake text encoder: token ids -> vector
        return tokens[:, :3].float()

    def tokenizer(texts):
        table = {"a cat": [1, 0, 0], "cat!": [1, 1, 0], "a dog": [0, 0, 1], "dog!": [0, 2, 1]}
        return torch.tensor([table[t] for t in texts])

    w = zeroshot_classifier(encode, tokenizer, ["cat", "dog"], ["a {}", "{}!"])
    cat = F.normalize(torch.tensor([1.0, 0, 0]), dim=0) + F.normalize(torch.tensor([1.0, 1, 0]), dim=0)
    assert torch.allclose(w[0], F.normalize(cat / 2, dim=0), atol=1e-6)
    assert torch.allclose(w.norm(dim=-1), torch.ones(2))


def test_zeroshot_scored_by_the_decoder_is_the_mean_template_log_likelihood(tmp_path):
    """Both scorers on 7 samples of 3 classes against the scores computed by hand: the decoder's
    mean log-likelihood of the filled templates, and the cosine of the image embedding with the
    renormalised mean of the normalised template embeddings."""
    from tests.test_generation import tiny_coca
    from vlp.generation import Captioner

    tok = TextTokenizer(context_length=10)
    module = tiny_coca(tok.spec, width=32)
    shards = eval_shard(tmp_path / "s.tar", 7)
    data = EvalData(tok, 32)
    templates = ["{}", "a {} thing"]
    task = ZeroShotClassification(shards, "label", None, templates, scorer="decoder")
    result = task.run(module, data, batch_size=3)
    # by hand: every image against every filled template, averaged per class
    images = torch.stack([data.transform()(eval_image(i)) for i in range(7)])
    classes = ["c0", "c1", "c2"]
    labels = torch.tensor([i % 3 for i in range(7)])
    ll = Captioner(module).log_likelihood(images, tok([t.format(c) for c in classes for t in templates]))
    scores = ll.view(7, 3, 2).mean(2)
    expected = classification_metrics(scores, labels)
    assert result["metrics"] == pytest.approx(expected)
    assert result["num_samples"] == 7 and result["details"]["scorer"] == "decoder"
    contrastive = ZeroShotClassification(shards, "label", None, templates).run(module, data, batch_size=3)
    module.eval()
    with torch.no_grad():
        image = F.normalize(module.embed("image", images), dim=-1)
        prompts = F.normalize(module.embed("text", tok([t.format(c) for c in classes for t in templates])), dim=-1)
    classifier = F.normalize(prompts.view(3, 2, -1).mean(1), dim=-1)
    assert contrastive["metrics"] == pytest.approx(classification_metrics(image @ classifier.T, labels), abs=1e-6)
    assert contrastive["num_samples"] == 7 and contrastive["details"] == {"num_classes": 3}
    with pytest.raises(VLPError, match="unknown zero-shot scorer"):
        ZeroShotClassification(shards, "label", scorer="captions")


def test_zeroshot_decoder_scorer_needs_a_caption_decoder(tiny_module, tmp_path):
    task = ZeroShotClassification(eval_shard(tmp_path / "s.tar", 3), "label", templates="name", scorer="decoder")
    with pytest.raises(VLPError, match="a caption decoder named 'decoder' in model.heads"):
        task.run(tiny_module, EvalData(TextTokenizer(context_length=16), 32))
