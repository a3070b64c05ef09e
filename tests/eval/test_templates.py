"""Prompt templates (vlp.eval.templates): the named sets, files of templates, both class-name
slots, and the errors for a template without a slot and an unknown set."""

import pytest

from vlp.errors import VLPError
from vlp.eval.templates import IMAGENET80, fill, resolve_templates


def test_template_sets_and_files(tmp_path):
    assert len(IMAGENET80) == len(set(IMAGENET80)) == 80 and all("{}" in t for t in IMAGENET80)
    assert fill("a photo of a {c}.", "cat") == "a photo of a cat." == fill("a photo of a {}.", "cat")
    (tmp_path / "t.txt").write_text("a {} here\n\nan {c} there\n")
    assert resolve_templates("t.txt", tmp_path) == ["a {} here", "an {c} there"]
    with pytest.raises(VLPError, match="has no"):
        resolve_templates(["no slot"])
    with pytest.raises(VLPError, match="neither a template set"):
        resolve_templates("imagenet81")
