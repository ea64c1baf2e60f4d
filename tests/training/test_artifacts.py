"""A damaged run directory gives a clear error naming the file, never a traceback."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from cxrfuse.fusion import build_head
from cxrfuse.problems import CxrfuseError
from cxrfuse.training.artifacts import SIDECAR_FORMAT, load_head


def test_malformed_or_mismatched_sidecar_names_the_file(tmp_path):
    head = build_head("concat-mlp", modalities=["text"], n_outputs=1, text_dim=4)
    save_file(head.state_dict(), str(tmp_path / "model.safetensors"))
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(CxrfuseError, match=r"model\.json: not valid JSON"):
        load_head(tmp_path)
    sidecar = {"format": SIDECAR_FORMAT, "head": {"kind": "concat-mlp", "kwargs": {"bogus": 1}}}
    (tmp_path / "model.json").write_text(json.dumps(sidecar))
    with pytest.raises(CxrfuseError, match="cannot rebuild a fusion head"):
        load_head(tmp_path)
    sidecar["head"]["kwargs"] = {**head.init_kwargs, "text_dim": 5}  # weights of another shape
    (tmp_path / "model.json").write_text(json.dumps(sidecar))
    with pytest.raises(CxrfuseError, match="does not hold the weights"):
        load_head(tmp_path)
    sidecar["head"]["kwargs"] = head.init_kwargs
    (tmp_path / "model.json").write_text(json.dumps(sidecar))
    assert torch.equal(load_head(tmp_path)(text=torch.ones(2, 4)), head.eval()(text=torch.ones(2, 4)))
