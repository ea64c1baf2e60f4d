"""Faults a real lab hits (issue 23): a patient in two splits, damaged stores, two writers at
once, OS errors. The refusals themselves are battery cases; these tests check what a one-line
case cannot (what ``stats`` says, what a rerun recomputes, concurrent processes)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from typer.testing import CliRunner

from cxrfuse.cli import app

runner = CliRunner()


def _leaky(phantoms: Path, out: Path) -> Path:
    table = pq.read_table(phantoms)
    df = table.to_pandas()
    train, test = df.index[df["split"] == "train"][0], df.index[df["split"] == "test"][0]
    df.loc[[train, test], "patient_id"] = "P-TWICE"
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False)
                   .replace_schema_metadata(table.schema.metadata), out)  # fmt: skip
    return out


def test_stats_names_a_patient_in_two_splits(battery_phantoms: Path, tmp_path: Path) -> None:
    clean = runner.invoke(app, ["stats", str(battery_phantoms)])
    assert clean.exit_code == 0 and "in two splits" not in clean.output
    result = runner.invoke(app, ["stats", str(_leaky(battery_phantoms, tmp_path / "m.parquet"))])
    assert result.exit_code == 0, result.output
    text = result.output.replace("\n", " ")
    assert "1 patient(s) in two splits" in " ".join(text.split()), result.output
    assert "P-TWICE" in text
