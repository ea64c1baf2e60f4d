"""CheXbert labeler: a tiny randomly initialised checkpoint in the public format, no hub."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertModel

from cxrfuse.generation.chexbert import CheXbertLabeler
from cxrfuse.generation.scoring import make_labeler
from cxrfuse.problems import CxrfuseError, DataError

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "no", "pleural", "effusion", "the",
         "heart", "is", "normal", "in", "size", ".", "small", "left", "cardio", "##megaly"]


class AuthorsBertLabeler(torch.nn.Module):
    """The layout of the authors' ``bert_labeler`` (src/models/bert_labeler.py), written
    independently of cxrfuse so that the test checks the key names of the public checkpoint."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.bert = BertModel(config)
        self.dropout = torch.nn.Dropout(0.1)
        hidden = self.bert.pooler.dense.in_features
        self.linear_heads = torch.nn.ModuleList([torch.nn.Linear(hidden, 4) for _ in range(13)])
        self.linear_heads.append(torch.nn.Linear(hidden, 2))

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        cls = self.dropout(self.bert(ids, attention_mask=mask)[0][:, 0, :])
        return [head(cls) for head in self.linear_heads]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, AuthorsBertLabeler]:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(WORDS), hidden_size=64, num_hidden_layers=2,
                        num_attention_heads=1, intermediate_size=96, max_position_embeddings=512)
    model = AuthorsBertLabeler(config).eval()
    with torch.no_grad():  # bigger head weights so that the argmax varies between reports
        for head in model.linear_heads:
            head.weight.mul_(40)
    folder = tmp_path_factory.mktemp("chexbert")
    state = {f"module.{k}": v for k, v in model.state_dict().items()}  # nn.DataParallel keys
    torch.save({"epoch": 3, "model_state_dict": state,
                "optimizer_state_dict": {"state": {}, "param_groups": [{"lr": 2e-5}]}},
               folder / "chexbert.pth")
    (folder / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    return folder / "chexbert.pth", model


TEXTS = ["No pleural effusion.", "The heart is normal in size.", "", "Small left effusion. Cardiomegaly.",
         "no no no effusion effusion"]


def test_loads_public_format_and_matches_the_model(checkpoint: tuple[Path, AuthorsBertLabeler]) -> None:
    path, model = checkpoint
    labeler = CheXbertLabeler(path, batch_size=2)
    out = labeler.label(TEXTS)
    assert out.shape == (5, 14)
    assert set(np.unique(out[~np.isnan(out)])) <= {-1.0, 0.0, 1.0}
    assert set(np.unique(out[~np.isnan(out[:, 13]), 13])) <= {1.0}  # No Finding: blank or positive
    # the same argmax as the saved model on the same token ids: the weights were loaded
    values = np.array([np.nan, 1.0, 0.0, -1.0])
    with torch.no_grad():
        for i, text in enumerate(TEXTS):
            ids = torch.tensor([labeler.encode(text)])
            logits = model(ids, torch.ones_like(ids))
            expected = [values[int(h.argmax())] for h in logits]
            np.testing.assert_array_equal(out[i], expected)
    assert labeler.encode("") == [2, 3]  # [CLS] [SEP]
    assert labeler.encode("Cardiomegaly") == [2, 17, 18, 3]  # lower-cased WordPiece
    assert make_labeler("chexbert", path).name == "chexbert"


def test_truncates_to_512_tokens(checkpoint: tuple[Path, AuthorsBertLabeler]) -> None:
    labeler = CheXbertLabeler(checkpoint[0])
    ids = labeler.encode("effusion " * 600)
    assert len(ids) == 512 and ids[0] == 2 and ids[-1] == 3


def test_missing_or_wrong_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"absent.pth: CheXbert checkpoint not found.*stanfordmlgroup/CheXbert"):
        CheXbertLabeler(tmp_path / "absent.pth")
    torch.save({"model_state_dict": {"module.linear.weight": torch.zeros(2, 2)}}, tmp_path / "other.pth")
    with pytest.raises(DataError, match="other.pth: not a CheXbert checkpoint"):
        CheXbertLabeler(tmp_path / "other.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(DataError, match="junk.pth: cannot read the CheXbert checkpoint"):
        CheXbertLabeler(tmp_path / "junk.pth")
    with pytest.raises(CxrfuseError, match="chexbert.pth"):
        make_labeler("chexbert", None)


def test_no_tokenizer_offline_is_a_clear_error(checkpoint: tuple[Path, AuthorsBertLabeler], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "chexbert.pth").write_bytes(checkpoint[0].read_bytes())
    # whatever the local cache holds, a tokenizer that does not fit the checkpoint is refused
    with pytest.raises(DataError, match=r"alone/chexbert.pth: (no tokenizer for CheXbert|the tokenizer found)"):
        CheXbertLabeler(alone / "chexbert.pth")
    assert CheXbertLabeler(alone / "chexbert.pth", tokenizer=checkpoint[0].parent).label(["no effusion"]).shape == (1, 14)
