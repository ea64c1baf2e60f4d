"""The generation package's face: the scoring side imports no generator (transformers, peft,
Lightning), the producing side is loaded on first use, and every name it lists resolves."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from cxrfuse import generation

SRC = Path(__file__).resolve().parents[2] / "src"


def test_scoring_side_imports_no_generator() -> None:
    code = ("import json, sys; import cxrfuse.generation as g; g.score_files; g.score_reports; "
            "print(json.dumps(sorted(m for m in ('transformers', 'peft', 'lightning', "
            "'cxrfuse.generation.vlm', 'cxrfuse.generation.lora') if m in sys.modules)))")  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=300, check=True).stdout  # fmt: skip
    assert json.loads(out.strip().splitlines()[-1]) == []


def test_every_listed_name_resolves() -> None:
    for name in generation.__all__:
        assert getattr(generation, name) is not None, name
    assert generation.LoraSettings().epochs == 3
    assert generation.finetune_vlm.__module__ == "cxrfuse.generation.pipeline"
