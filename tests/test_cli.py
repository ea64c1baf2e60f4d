"""The command line: every verb has help with an example, runs end to end, and fails clearly."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from cxrfuse.cli import app
from cxrfuse.data import read_manifest

runner = CliRunner()
VERBS = [["ingest", "iu-xray"], ["ingest", "mimic-cxr"], ["ingest", "nih"], ["ingest", "csv"], ["split"], ["phantoms"],
         ["stats"], ["embed"], ["encoders"], ["train"], ["experiment"], ["predict"], ["evaluate"],
         ["report"], ["explain"], ["attribute"], ["clip", "train"], ["clip", "probe"],
         ["clip", "zero-shot"], ["clip", "retrieve"], ["generate", "retrieval"], ["generate", "vlm"],
         ["generate", "finetune"], ["generate", "score"], ["serve"], ["demo"]]


@pytest.mark.parametrize("verb", VERBS, ids=" ".join)
def test_every_verb_has_help_with_an_example(verb):
    result = runner.invoke(app, [*verb, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output and "cxrfuse" in result.output


def test_ingest_split_stats_on_bundled_reports(tmp_path):
    out = tmp_path / "iu.parquet"
    result = runner.invoke(app, ["ingest", "iu-xray", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "wrote 3955 studies" in result.output and "empty-report: 28" in result.output
    result = runner.invoke(app, ["split", str(out), "--task", "multilabel", "--folds", "3"])
    assert result.exit_code == 0, result.output
    manifest = read_manifest(out)
    assert set(manifest.df["split"]) == {"train", "val", "test"}
    assert manifest.df["fold"].notna().sum() == (manifest.df["split"] != "test").sum()
    result = runner.invoke(app, ["stats", str(out), "--json", "--task", "multilabel"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["studies"] == 3955 and summary["labels"]["abnormal"]["positive"] == 2469
    assert "multilabel" in summary["leakage_audit"]


def test_bad_input_gives_one_line_error_and_exit_code_2(tmp_path):
    result = runner.invoke(app, ["stats", str(tmp_path / "missing.parquet")])
    assert result.exit_code == 2
    assert "missing.parquet: no such manifest file" in result.output
    result = runner.invoke(app, ["ingest", "iu-xray", "--layout", "kaggle", "--images", str(tmp_path),
                                 "--out", str(tmp_path / "x.parquet")])
    assert result.exit_code == 2 and "indiana_reports.csv: file not found" in result.output


def test_help_lists_the_verbs_in_pipeline_order_in_panels():
    from cxrfuse.cli import PIPELINE

    result = runner.invoke(app, ["--help"], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    text = result.output
    registered = {c.name for c in app.registered_commands} | {g.name for g in app.registered_groups}
    verbs = [v for group in PIPELINE.values() for v in group if v in registered]
    positions = [text.index(f"│ {verb} ") for verb in verbs]
    assert positions == sorted(positions), "verbs out of pipeline order"
    assert verbs[0] == "ingest" and text.index("│ ingest ") < text.index("│ demo ")
    panels = [text.index(f"─ {panel} ") for panel in PIPELINE]
    assert panels == sorted(panels)
    assert registered == set(verbs), "a verb without a panel: add it to cli.PIPELINE"


def test_progress_in_a_log_file_is_one_plain_line_per_update(tmp_path, monkeypatch) -> None:
    """A job's log gets readable progress lines, not carriage-return redraws; a terminal does not."""
    import io
    import subprocess
    import sys

    from cxrfuse.cli import LOG_PROGRESS, log_friendly_progress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    for name in LOG_PROGRESS:
        monkeypatch.delenv(name, raising=False)
    assert not log_friendly_progress(Terminal()) and "TQDM_ASCII" not in __import__("os").environ
    monkeypatch.setenv("TQDM_MININTERVAL", "0")  # a user's own setting wins
    assert log_friendly_progress(io.StringIO())
    import os

    assert os.environ["TQDM_MININTERVAL"] == "0" and os.environ["TQDM_ASCII"] == LOG_PROGRESS["TQDM_ASCII"]
    log = tmp_path / "job.log"
    code = "from tqdm.auto import tqdm\nfor _ in tqdm(range(5), desc='work'): pass\n"
    with log.open("w") as handle:
        subprocess.run([sys.executable, "-c", code], stderr=handle, check=True,
                       env={**os.environ, "TQDM_MININTERVAL": "0"})  # fmt: skip
    lines = [line.strip("\r") for line in log.read_text().splitlines() if line.strip()]
    assert lines[-1].startswith("work: 100%|####################| 5/5"), lines
    assert all("\r" not in line for line in lines)


def _commands(group, prefix=()):  # every leaf verb of the click tree, with its path
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            yield from _commands(command, (*prefix, name))
        else:
            yield (*prefix, name), command


def test_shared_options_read_the_same_in_every_verb() -> None:
    """--device is auto everywhere with one help text; --dtype is only ever a storage dtype and
    --precision only a compute precision; --offline / --no-wait / --set have one help each."""
    import typer.main

    from cxrfuse.cli.options import DEVICE_HELP

    other = {("encoders", "--offline"),  # a filter of the listing, not an encoder swap
             ("ingest csv", "--set"),  # a key of the CSV spec
             ("generate finetune", "--set")}  # a LoRA setting (generation, edited elsewhere)
    helps: dict[str, set[str]] = {}
    devices = []
    for path, command in _commands(typer.main.get_command(app)):
        for param in command.params:
            for flag in param.opts:
                if flag in ("--device", "--dtype", "--precision", "--offline", "--no-wait", "--set") \
                        and (" ".join(path), flag) not in other:
                    helps.setdefault(flag, set()).add(param.help or "")
                if flag == "--device":
                    devices.append(" ".join(path))
                    assert param.default == "auto", path
    assert {"embed", "explain", "serve", "generate vlm"} <= set(devices)
    assert helps["--device"] == {DEVICE_HELP}
    assert all(len(texts) == 1 for texts in helps.values()), helps
    assert "Storage" in next(iter(helps["--dtype"]))
    assert "Compute precision" in next(iter(helps["--precision"]))
    result = runner.invoke(app, ["explain", "no-such-run", "--device", "gpu"])
    assert result.exit_code == 2 and "--device 'gpu'" in result.output
