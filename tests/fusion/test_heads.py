"""Fusion heads: view fusion maths, masks, unimodal heads ignore the other modality, rebuild."""

from __future__ import annotations

import pytest
import torch

from cxrfuse.fusion import AttentionViewFusion, ViewFusion, build_head


def _views(b: int = 4, v: int = 3, d: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    views = torch.randn(b, v, d)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0], [1, 1, 1]], dtype=torch.bool)[:b, :v]
    return views * mask[..., None], mask


def test_attention_matches_the_formula_and_ignores_masked_views():
    views, mask = _views()
    att = AttentionViewFusion(8)
    out = att(views, mask)
    # reference for study 0 (two valid views), written out by hand
    x = views[0, :2]
    q, k, v = att.query(x), att.key(x), att.value(x)
    w = torch.softmax(q @ k.T / 8**0.5, dim=-1)
    assert torch.allclose(out[0], (w @ v).sum(0) / 2, atol=1e-5)
    assert torch.equal(out[2], torch.zeros(8))  # no views -> zeros, no NaN
    changed = views.clone()
    changed[0, 2] = 100.0  # a masked view must not matter
    assert torch.allclose(att(changed, mask)[0], out[0], atol=1e-5)


def test_mean_frontal_concat_view_fusion():
    views, mask = _views()
    mean = ViewFusion("mean", 8, 3)(views, mask)
    assert torch.allclose(mean[0], views[0, :2].mean(0)) and torch.equal(mean[2], torch.zeros(8))
    assert torch.equal(ViewFusion("frontal", 8, 3)(views, mask), views[:, 0])
    concat = ViewFusion("concat", 8, 3)(views, mask)
    assert concat.shape == (4, 24) and torch.equal(concat[1, 8:], torch.zeros(16))
    with pytest.raises(ValueError, match="view fusion"):
        ViewFusion("max", 8, 3)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["concat-mlp", "late-fusion"])
@pytest.mark.parametrize("views_mode", ["mean", "concat", "attention", "frontal"])
def test_heads_shapes_unimodal_ignores_other_modality_and_rebuild(kind, views_mode):
    views, mask = _views(v=2)
    text = torch.randn(4, 5)
    fused = build_head(kind, modalities=["image", "text"], n_outputs=3, image_dim=8, text_dim=5,
                       view_fusion=views_mode, n_views=2)
    assert fused(views, mask, text, torch.ones(4, dtype=torch.bool)).shape == (4, 3)
    image_only = build_head(kind, modalities=["image"], n_outputs=1, image_dim=8,
                            view_fusion=views_mode, n_views=2).eval()
    assert torch.equal(image_only(views, mask, text), image_only(views, mask, torch.randn(4, 5)))
    text_only = build_head(kind, modalities=["text"], n_outputs=2, text_dim=5).eval()
    assert torch.equal(text_only(None, None, text), text_only(views * 7, mask, text))
    clone = build_head(**fused.init_kwargs)
    clone.load_state_dict(fused.state_dict())
    fused.eval(), clone.eval()
    assert torch.equal(clone(views, mask, text), fused(views, mask, text))


def test_text_mask_zeroes_missing_reports_and_bad_modalities_fail():
    head = build_head("concat-mlp", modalities=["text"], n_outputs=1, text_dim=5).eval()
    text = torch.randn(2, 5)
    no_text = head(text=text, text_mask=torch.tensor([False, False]))
    assert torch.allclose(no_text, head(text=torch.zeros(2, 5)))
    with pytest.raises(ValueError, match="modalities"):
        build_head("concat-mlp", modalities=["audio"], n_outputs=1, text_dim=5)
    with pytest.raises(ValueError, match="unknown head kind"):
        build_head("transformer", modalities=["text"], n_outputs=1, text_dim=5)
