"""Image-text retrieval recall@k (vlp.eval.retrieval) by hand, with several texts per image, and
the same for any block size."""

import torch
import torch.nn.functional as F

from vlp.eval.retrieval import retrieval_metrics


def test_retrieval_recall_by_hand():
    # 3 images, 4 texts; texts 0,1 belong to image 0, text 2 to image 1, text 3 to image 2.
    image = torch.eye(3)
    text = torch.tensor([[0.1, 1.0, 0.0],   # closest to image 1 (wrong), then image 0
                         [0.9, 0.1, 0.0],   # image 0 (right)
                         [0.0, 0.1, 1.0],   # image 2 (wrong), then image 1
                         [0.0, 0.2, 0.9]])  # image 2 (right)
    owner = torch.tensor([0, 0, 1, 2])
    m = retrieval_metrics(image, text, owner, ks=(1, 2), chunk=2)
    # image->text top-1: img0 -> text1 (own), img1 -> text0 (not own), img2 -> text2 (not own)
    assert m["image_to_text_R@1"] == 1 / 3
    # top-2: img1 -> {text0, text3}: miss; img2 -> {text2, text3}: hit
    assert m["image_to_text_R@2"] == 2 / 3
    # text->image top-1: t0 -> img1 (miss), t1 -> img0 (hit), t2 -> img2 (miss), t3 -> img2 (hit)
    assert m["text_to_image_R@1"] == 2 / 4
    # top-2: t0 -> {1, 0}: hit; t2 -> {2, 1}: hit
    assert m["text_to_image_R@2"] == 1.0


def test_retrieval_chunking_does_not_change_results():
    g = torch.Generator().manual_seed(0)
    image = F.normalize(torch.randn(50, 8, generator=g), dim=-1)
    text = F.normalize(torch.randn(100, 8, generator=g), dim=-1)
    owner = torch.arange(100) // 2
    assert retrieval_metrics(image, text, owner, chunk=7) == retrieval_metrics(image, text, owner, chunk=1000)
