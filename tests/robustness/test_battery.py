"""The bad-input battery: every kind of bad input a user can give any verb ends in one
``error:`` line naming the file, row or field (exit code 2, no traceback), or in a counted
problem with the rest kept (exit code 0). One case per kind; each builds its input in tmp_path.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from battery_inputs import copy_run, tiny_run_config
from PIL import Image
from typer.testing import CliRunner

from cxrfuse.cli import app
from cxrfuse.data import read_manifest
from cxrfuse.data.iu_xray import bundled_reports
from dicom_files import dicom_of, phantom_radiograph

runner = CliRunner()


@dataclass
class Ctx:
    """What a case builds from: its own tmp folder and the session's shared inputs."""

    tmp: Path
    run: Path  # a finished tiny run (read-only; use run_copy to break one)
    phantoms: Path  # its manifest (phantom images on disk)
    xml: dict[int, bytes]  # OpenI XML of reports 1..6
    write_mimic_tree: Callable[..., Path]
    held: Any = None  # a folder lock a case holds while its command runs

    def run_copy(self, name: str = "run") -> Path:
        return copy_run(self.run, self.tmp / name)

    def sidecar(self, run: Path, change: Callable[[dict[str, Any]], None]) -> Path:
        path = run / "model.json"
        payload = json.loads(path.read_text())
        change(payload)
        path.write_text(json.dumps(payload))
        return run

    def png(self, name: str, size: tuple[int, int] = (40, 40)) -> Path:
        path = self.tmp / name
        Image.fromarray(np.full(size[::-1], 128, np.uint8)).save(path)
        return path

    def report(self, text: str = "FINDINGS: Clear lungs.\nIMPRESSION: Normal.\n") -> Path:
        path = self.tmp / "report.txt"
        path.write_text(text)
        return path

    def predict(self, run: Path, image: Path | None = None, report: Path | None = None) -> list[str]:
        return ["predict", str(run), "--image", str(image or self.png("ok.png")),
                "--report", str(report or self.report())]  # fmt: skip

    def xml_folder(self, numbers: tuple[int, ...] = (1, 2, 3)) -> Path:
        folder = self.tmp / "xml"
        folder.mkdir(exist_ok=True)
        for n in numbers:
            (folder / f"{n}.xml").write_bytes(self.xml[n])
        return folder

    def kaggle(self, reports: str | None = None, projections: str | None = None) -> Path:
        root = self.tmp / "kaggle"
        (root / "images" / "images_normalized").mkdir(parents=True, exist_ok=True)
        (root / "indiana_reports.csv").write_text(reports or KAGGLE_REPORTS)
        (root / "indiana_projections.csv").write_text(projections or KAGGLE_PROJECTIONS)
        for name in ("1_IM-0001-4001.dcm.png", "2_IM-0652-1001.dcm.png", "3_IM-1384-1001.dcm.png"):
            Image.fromarray(np.zeros((16, 16), np.uint8)).save(root / "images" / "images_normalized" / name)
        return root

    def r2gen(self, annotation: str | None = None) -> Path:
        root = self.tmp / "r2gen"
        (root / "images" / "CXR1_1_IM-0001").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((16, 16), np.uint8)).save(root / "images" / "CXR1_1_IM-0001" / "0.png")
        default = {"train": [R2GEN_ENTRY], "val": [], "test": []}
        (root / "annotation.json").write_text(annotation if annotation is not None else json.dumps(default))
        return root

    def nih(self, rows: str | None = None) -> tuple[Path, Path]:
        images = self.tmp / "nih-images"
        images.mkdir(exist_ok=True)
        for name in ("00000001_000.png", "00000002_000.png"):
            Image.fromarray(np.zeros((16, 16), np.uint8)).save(images / name)
        csv = self.tmp / "Data_Entry.csv"
        csv.write_text(NIH_HEADER + (rows if rows is not None else NIH_ROWS))
        return csv, images

    def manifest_with(self, change: Callable[[pd.DataFrame], pd.DataFrame],
                      meta: Callable[[dict[str, Any]], None] | None = None) -> Path:  # fmt: skip
        """The phantom manifest's Parquet with its table (as strings where changed) edited."""
        table = pq.read_table(self.phantoms)
        df = change(table.to_pandas())
        raw = dict(table.schema.metadata)
        if meta is not None:
            payload = json.loads(raw[b"cxrfuse.manifest"])
            meta(payload)
            raw[b"cxrfuse.manifest"] = json.dumps(payload).encode()
        out = self.tmp / "edited.parquet"
        pq.write_table(pa.Table.from_pandas(df, preserve_index=False).replace_schema_metadata(raw), out)
        return out

    def config(self, change: Callable[[dict[str, Any]], Any] | None = None, name: str = "c.yaml") -> Path:
        payload = tiny_run_config(self.tmp, self.phantoms)
        payload["data"]["store"] = str(Path(self.run).parents[1] / "store")  # reuse the vectors
        if change is not None:
            payload = change(payload) or payload
        path = self.tmp / name
        path.write_text(payload if isinstance(payload, str) else yaml.safe_dump(payload))
        return path

    def experiment(self, change: Callable[[dict[str, Any]], Any]) -> Path:
        base = yaml.safe_load(self.config().read_text())
        payload = {"name": "exp", "runs_dir": str(self.tmp / "exp-runs"), "base": base,
                   "grid": {"model.hidden": [[4], [8]]}}
        payload = change(payload) or payload
        path = self.tmp / "exp.yaml"
        path.write_text(yaml.safe_dump(payload))
        return path


KAGGLE_REPORTS = ("uid,MeSH,Problems,image,indication,comparison,findings,impression\n"
                  "1,normal,normal,Xray Chest PA and Lateral,Chest pain.,None.,Clear lungs.,Normal chest.\n"
                  "2,Cardiomegaly/borderline,Cardiomegaly,Xray,Cough.,None.,Big heart.,Cardiomegaly.\n"
                  "3,normal,normal,Xray,Fever.,None.,No effusion.,No acute disease.\n")  # fmt: skip
KAGGLE_PROJECTIONS = ("uid,filename,projection\n1,1_IM-0001-4001.dcm.png,Frontal\n"
                      "2,2_IM-0652-1001.dcm.png,Frontal\n3,3_IM-1384-1001.dcm.png,Lateral\n")  # fmt: skip
R2GEN_ENTRY = {"id": "CXR1_1_IM-0001", "report": "The lungs are clear.", "image_path": ["CXR1_1_IM-0001/0.png"]}
ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: [*b, *b, *b, *b, *b, *b, *b, *b, *b]\n"
NIH_HEADER = "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position\n"
NIH_ROWS = "00000001_000.png,Cardiomegaly,0,1,58,M,PA\n00000002_000.png,No Finding,0,2,81,F,AP\n"


@dataclass(frozen=True)
class Case:
    """One kind of bad input: ``build`` writes it and returns the command line and what the
    message must name (formatted with ``tmp``); ``counted`` is the problem kind of an input
    that is counted and skipped (exit 0, ``out`` written) rather than refused (exit 2)."""

    stage: str
    kind: str
    build: Callable[[Ctx], tuple[list[str], str]]
    counted: str | None = None
    out: str | None = None


def _truncated_tgz(c: Ctx) -> tuple[list[str], str]:
    path = c.tmp / "t.tgz"
    path.write_bytes(bundled_reports().read_bytes()[:3000])
    return ["ingest", "iu-xray", "--reports", str(path), "--out", str(c.tmp / "x.parquet")], "t.tgz"


def _tgz_of(c: Ctx, files: dict[str, bytes]) -> Path:
    path = c.tmp / "r.tgz"
    with tarfile.open(path, "w:gz") as archive:
        for name, data in files.items():
            (c.tmp / "member").write_bytes(data)
            archive.add(c.tmp / "member", arcname=name)
    return path


def _ingest_xml(c: Ctx, folder: Path, images: Path | None = None) -> list[str]:
    argv = ["ingest", "iu-xray", "--reports", str(folder), "--out", str(c.tmp / "out.parquet")]
    return argv + (["--images", str(images)] if images else [])


def _with(path: Path, data: bytes | str) -> Path:
    path.write_bytes(data) if isinstance(data, bytes) else path.write_text(data)
    return path


def _openi_images(c: Ctx) -> Path:
    folder = c.tmp / "png"
    folder.mkdir()
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(folder / "CXR1_1_IM-0001-3001.png")
    return folder


def _mimic(c: Ctx, edit: Callable[[Path], None]) -> tuple[list[str], str]:
    root = c.write_mimic_tree(c.tmp / "mimic", gz=False)
    edit(root)
    return ["ingest", "mimic-cxr", "--root", str(root), "--out", str(c.tmp / "out.parquet")], str(root)


def _append(path: Path, line: str) -> None:
    path.write_text(path.read_text() + line)


def _label_as(value: str, row: int = 3) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def change(df: pd.DataFrame) -> pd.DataFrame:
        col = df["label_abnormal"].map(lambda v: None if pd.isna(v) else str(int(v))).astype(object)
        col.iloc[row] = value
        return df.assign(label_abnormal=col)
    return change


def _two_splits(df: pd.DataFrame) -> pd.DataFrame:
    """A test study given the patient of a train study (one patient in two splits)."""
    df = df.copy()
    train, test = df.index[df["split"] == "train"][0], df.index[df["split"] == "test"][0]
    df.loc[test, "patient_id"] = "P-TWICE"
    df.loc[train, "patient_id"] = "P-TWICE"
    return df


def _run_on(c: Ctx, manifest: Path) -> Path:
    run = c.run_copy()
    info = json.loads((run / "run.json").read_text())
    info["manifest"] = str(manifest)
    (run / "run.json").write_text(json.dumps(info))
    return run


def _stats(path: Path) -> list[str]:
    return ["stats", str(path)]


_ANNOTATION = '{"train": [{"id": "CXR2", "report": "Clear."}], "test": [{"id": "CXR1", "report": "Normal."}]}'
"""A tiny R2Gen-layout annotation.json (train / test lists)."""


def _generated(c: Ctx, generated: str, reference: str = '{"CXR1": "normal chest."}',
               suffix: str = ".json") -> tuple[list[str], str]:  # fmt: skip
    gen = _with(c.tmp / f"gen{suffix}", generated)
    ref = _with(c.tmp / "ref.json", reference)
    return ["generate", "score", "--generated", str(gen), "--reference", str(ref), "--out",
            str(c.tmp / "scores"), "--n-boot", "5", "--n-boot-language", "2", "--no-meteor"], "gen"


def _image_manifest(c: Ctx, bad: Callable[[Path], None]) -> Path:
    """The phantom manifest with the first view's image replaced by a bad file."""
    manifest = read_manifest(c.phantoms)
    first = Path(manifest.df["views"].iloc[0][0]["path"])
    copy = c.tmp / "img0.png"
    shutil.copy(first, copy)
    bad(copy)
    df = manifest.df.copy()
    views = [dict(v) for v in df["views"].iloc[0]]
    views[0]["path"] = str(copy)
    df.at[0, "views"] = views
    return manifest.replace(df=df).save(c.tmp / "m.parquet")


def _embed(c: Ctx, manifest: Path, *extra: str) -> list[str]:
    return ["embed", str(manifest), "--store", str(c.tmp / "store"), "--no-progress", *extra]


def _store_embed(c: Ctx, store: Path) -> list[str]:
    return ["embed", str(c.phantoms), "--store", str(store), "--image-encoder", "efficientnet-lite0",
            "--input-size", "32", "--shard-size", "16", "--text-encoder", "tfidf", "--svd-dim", "4",
            "--no-progress"]  # fmt: skip


def _damaged_store(c: Ctx, name: str, damage: Callable[[Path], None]) -> tuple[list[str], str]:
    """A finished store (4 image shards, a text array) with one file damaged; embed again."""
    argv = _store_embed(c, c.tmp / "store")
    assert runner.invoke(app, argv).exit_code == 0
    damage(next((c.tmp / "store").glob(f"*/{name}")))
    return argv, name


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x10
    path.write_bytes(bytes(data))


def _nan_shard(path: Path) -> None:
    """A NaN written into a shard with every digest updated (a store written before NaN
    vectors were refused, or by another tool)."""
    from cxrfuse.store.integrity import digest_file

    array = np.load(path)
    array[1, 0] = np.nan
    np.save(path, array)
    ids_path = path.with_name(path.name.replace(".npy", ".ids.json"))
    ids = json.loads(ids_path.read_text())
    ids["npy_digest"] = digest_file(path)
    ids_path.write_text(json.dumps(ids))
    meta = json.loads((path.parent / "meta.json").read_text())
    meta["digests"].update({path.name: digest_file(path), ids_path.name: digest_file(ids_path)})
    (path.parent / "meta.json").write_text(json.dumps(meta))


def _train_on_damaged_store(c: Ctx) -> tuple[list[str], str]:
    store = c.tmp / "own-store"
    shutil.copytree(Path(c.run).parents[1] / "store", store)
    shard = min(store.glob("*/images-00000.npy"))
    _flip_byte(shard)
    config = c.config(lambda p: p["data"].update(store=str(store)))
    return ["train", str(config), "--offline", "--no-progress"], "images-00000.npy"


def _fifo(path: Path) -> Path:
    import os

    path.unlink(missing_ok=True)
    os.mkfifo(path)
    return path


def _pickled_weights(c: Ctx) -> Path:
    import argparse

    import torch

    path = c.tmp / "w.pt"
    torch.save({"state_dict": {}, "args": argparse.Namespace(lr=1)}, path)
    return path


def _dicomweb(mode: str) -> str:
    """A fake DICOMweb root on loopback (a daemon thread for the rest of the session): ``500``
    answers HTTP 500, ``hang`` never answers; ``*-after-search`` finds study 1.2.3.4.5 first;
    ``no-series`` finds it and then reports no series in it."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    study = [{"0020000D": {"vr": "UI", "Value": ["1.2.3.4.5"]}}]

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            path = self.path.split("?")[0].rstrip("/")
            found = path.endswith("/studies") and mode != "500" and mode != "hang"
            if mode.startswith("hang") and not found:
                threading.Event().wait(30)
                return
            status, body = (200, json.dumps(study if found else []).encode()) if (
                found or mode == "no-series") else (500, b"Internal Server Error")
            self.send_response(status)
            self.send_header("Content-Type", "application/dicom+json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}/dicom-web"


def _pacs(c: Ctx, mode: str, *args: str) -> list[str]:
    return ["pacs", str(c.run), "--url", _dicomweb(mode), "--timeout", "1", *args]


def _huge_png(path: Path) -> None:
    Image.new("L", (8000, 7000)).save(path)  # 56 MP, over data.images.MAX_PIXELS


CASES = [
    # ------------------------------------------------------------------ ingest iu-xray openi
    Case("ingest openi", "reports archive missing",
         lambda c: (["ingest", "iu-xray", "--reports", str(c.tmp / "no.tgz"), "--out", str(c.tmp / "x.parquet")], "no.tgz")),
    Case("ingest openi", "truncated reports archive", _truncated_tgz),
    Case("ingest openi", "reports archive not a tar",
         lambda c: (_ingest_xml(c, _with(c.tmp / "r.tgz", b"not a tar at all")), "r.tgz")),
    Case("ingest openi", "archive without xml",
         lambda c: (_ingest_xml(c, _tgz_of(c, {"readme.txt": b"hello"})), "r.tgz")),
    Case("ingest openi", "empty reports folder",
         lambda c: (_ingest_xml(c, _xml_with(c, {}, ())), "xml")),
    Case("ingest openi", "malformed XML report",
         lambda c: (_ingest_xml(c, _xml_with(c, {"9.xml": b"<eCitation><unclosed>"})), ""),
         counted="malformed-xml", out="out.parquet"),
    Case("ingest openi", "XML report without uId",
         lambda c: (_ingest_xml(c, _xml_with(c, {"9.xml": b"<eCitation><x/></eCitation>"})), ""),
         counted="malformed-xml", out="out.parquet"),
    Case("ingest openi", "duplicate report id in two files",
         lambda c: (_ingest_xml(c, _xml_with(c, {"1-copy.xml": c.xml[1]})), "1-copy.xml"),
         counted="duplicate-report", out="out.parquet"),
    Case("ingest openi", "image folder missing",
         lambda c: (_ingest_xml(c, c.xml_folder(), c.tmp / "no-png"), "no-png")),
    Case("ingest openi", "image listed but not on disk",
         lambda c: (_ingest_xml(c, c.xml_folder((1, 2)), _openi_images(c)), ""),
         counted="missing-image", out="out.parquet"),
    # ------------------------------------------------------------------ ingest iu-xray kaggle
    Case("ingest kaggle", "reports CSV missing",
         lambda c: (["ingest", "iu-xray", "--layout", "kaggle", "--images", str(c.tmp), "--out", str(c.tmp / "x.parquet")], "indiana_reports.csv")),
    Case("ingest kaggle", "required column missing",
         lambda c: (_kaggle(c.kaggle(reports=KAGGLE_REPORTS.replace("MeSH", "Mesh"))), "'MeSH'")),
    Case("ingest kaggle", "ragged CSV row",
         lambda c: (_kaggle(c.kaggle(reports=KAGGLE_REPORTS + "4,normal,x,x,a,b,c,d,EXTRA\n")), ""),
         counted="malformed-row", out="out.parquet"),
    Case("ingest kaggle", "uid not a number",
         lambda c: (_kaggle(c.kaggle(reports=KAGGLE_REPORTS + "x4,normal,x,x,a,b,c,d\n")), ""),
         counted="malformed-row", out="out.parquet"),
    Case("ingest kaggle", "MeSH value not a term",
         lambda c: (_kaggle(c.kaggle(reports=KAGGLE_REPORTS.replace("3,normal,", "3,12345,"))), ""),
         counted="unknown-mesh", out="out.parquet"),
    Case("ingest kaggle", "two frontal projections, no lateral",
         lambda c: (_kaggle(c.kaggle(projections=KAGGLE_PROJECTIONS.replace(
             "3,3_IM-1384-1001.dcm.png,Lateral", "2,3_IM-1384-1001.dcm.png,Frontal"))), ""),
         counted="implausible-views", out="out.parquet"),
    Case("ingest kaggle", "projection disagrees with the OpenI pixel-derived view",
         lambda c: (_kaggle(c.kaggle(projections=KAGGLE_PROJECTIONS + "1,1_IM-0001-3001.dcm.png,Frontal\n")), ""),
         counted="view-disagrees", out="out.parquet"),
    Case("ingest kaggle", "unknown projection",
         lambda c: (_kaggle(c.kaggle(projections=KAGGLE_PROJECTIONS.replace("Lateral", "Sideways"))), ""),
         counted="unknown-view", out="out.parquet"),
    Case("ingest kaggle", "duplicate uid",
         lambda c: (_kaggle(c.kaggle(reports=KAGGLE_REPORTS + KAGGLE_REPORTS.splitlines()[1] + "\n")), ""),
         counted="duplicate-report", out="out.parquet"),
    Case("ingest kaggle", "image file missing",
         lambda c: (_kaggle(c.kaggle(projections=KAGGLE_PROJECTIONS + "3,3_missing.dcm.png,Frontal\n")), ""),
         counted="missing-image", out="out.parquet"),
    Case("ingest kaggle", "CSV not UTF-8",
         lambda c: (_kaggle(_kaggle_bytes(c, b"uid,MeSH,Problems,image,indication,comparison,findings,impression\n1,\xff\xfe,x,x,a,b,c,d\n")), "indiana_reports.csv")),
    Case("ingest kaggle", "empty CSV",
         lambda c: (_kaggle(_kaggle_bytes(c, b"")), "indiana_reports.csv")),
    # ------------------------------------------------------------------ ingest iu-xray r2gen
    Case("ingest r2gen", "annotation.json missing",
         lambda c: (_r2gen(c.tmp), "annotation.json")),
    Case("ingest r2gen", "annotation.json not JSON",
         lambda c: (_r2gen(c.r2gen("{not json")), "annotation.json")),
    Case("ingest r2gen", "entry without id",
         lambda c: (_r2gen(c.r2gen(json.dumps({"train": [R2GEN_ENTRY, {"report": "x", "image_path": []}]}))), ""),
         counted="malformed-row", out="out.parquet"),
    Case("ingest r2gen", "image path missing",
         lambda c: (_r2gen(c.r2gen(json.dumps({"train": [R2GEN_ENTRY, {"id": "CXR2_IM-0652", "report": "x", "image_path": ["CXR2_IM-0652/0.png"]}]}))), ""),
         counted="missing-image", out="out.parquet"),
    # ------------------------------------------------------------------ ingest mimic-cxr
    Case("ingest mimic", "metadata CSV missing",
         lambda c: _mimic(c, lambda r: (r / "mimic-cxr-2.0.0-metadata.csv").unlink())),
    Case("ingest mimic", "CheXpert value not a label",
         lambda c: _mimic(c, lambda r: _replace(r / "mimic-cxr-2.0.0-chexpert.csv", ",1.0,", ",yes,", 1)),
         counted="malformed-row", out="out.parquet"),
    Case("ingest mimic", "ragged metadata row",
         lambda c: _mimic(c, lambda r: _append(r / "mimic-cxr-2.0.0-metadata.csv", "dx,10000001,50000001,PA,PA,1,1,1,1,EXTRA\n")),
         counted="malformed-row", out="out.parquet"),
    Case("ingest mimic", "split value unknown",
         lambda c: _mimic(c, lambda r: _replace(r / "mimic-cxr-2.0.0-split.csv", ",train", ",holdout", 1)),
         counted="malformed-row", out="out.parquet"),
    # ------------------------------------------------------------------ ingest nih
    Case("ingest nih", "label CSV missing",
         lambda c: (_nih(c.tmp / "no.csv", c.nih()[1], c), "no.csv")),
    Case("ingest nih", "image folder missing",
         lambda c: (_nih(c.nih()[0], c.tmp / "no-images", c), "no-images")),
    Case("ingest nih", "ragged row",
         lambda c: (_nih(*c.nih(NIH_ROWS + "00000003_000.png,Mass,0,3,40,M,PA,EXTRA\n"), c), ""),
         counted="malformed-row", out="out.parquet"),
    Case("ingest nih", "unknown finding",
         lambda c: (_nih(*c.nih(NIH_ROWS.replace("Cardiomegaly", "Cardiomegaly|Dragons")), c), ""),
         counted="unknown-finding", out="out.parquet"),
    Case("ingest nih", "empty finding labels",
         lambda c: (_nih(*c.nih(NIH_ROWS + "00000003_000.png,,0,3,40,M,PA\n"), c), ""),
         counted="malformed-row", out="out.parquet"),
    Case("ingest nih", "image unreadable while hashing",
         lambda c: (_nih(*_nih_broken(c), c), "00000002_000.png"),
         counted="unreadable-image", out="out.parquet"),
    # ------------------------------------------------------------------ manifests
    Case("manifest", "image unreadable for the overlap check",
         lambda c: (_stats(_broken_image_manifest(c)), "1 image(s) could not be read"),
         counted="not compared", out="broken.parquet"),
    Case("manifest", "damaged image-hash cache beside it",
         lambda c: (_stats(_damaged_hash_cache(c)), "h.image-hashes.parquet: image-hash cache unreadable"),
         counted="warning:", out="h.parquet"),
    Case("manifest", "file missing", lambda c: (_stats(c.tmp / "no.parquet"), "no.parquet")),
    Case("manifest", "not Parquet", lambda c: (_stats(_with(c.tmp / "m.parquet", "a,b\n")), "m.parquet")),
    Case("manifest", "Parquet without cxrfuse metadata",
         lambda c: (_stats(_plain_parquet(c)), "plain.parquet")),
    Case("manifest", "label value 'yes'",
         lambda c: (_stats(c.manifest_with(_label_as("yes"))), "'label_abnormal' has value 'yes' at row 3")),
    Case("manifest", "label value 2",
         lambda c: (_stats(c.manifest_with(_label_as("2"))), "'label_abnormal' has value 2.0 at row 3")),
    Case("manifest", "duplicate study id",
         lambda c: (_stats(c.manifest_with(lambda df: df.assign(study_id=["CXR1"] * len(df)))), "duplicate study_id")),
    Case("manifest", "split value unknown",
         lambda c: (_stats(c.manifest_with(lambda df: df.assign(split="holdout"))), "split 'holdout'")),
    Case("manifest", "schema version unknown",
         lambda c: (_stats(c.manifest_with(lambda df: df, meta=lambda m: m.update(schema_version=99))), "schema version 99")),
    Case("manifest", "split task unknown",
         lambda c: (["split", str(c.phantoms), "--task", "dragons", "--out", str(c.tmp / "s.parquet")], "dragons")),
    # ------------------------------------------------------------------ configs
    Case("config", "config file missing", lambda c: (["train", str(c.tmp / "no.yaml")], "no.yaml")),
    Case("config", "YAML syntax error", lambda c: (["train", str(c.config(lambda p: "name: [x\n"))], "c.yaml")),
    Case("config", "unknown key", lambda c: (["train", str(c.config(lambda p: p["model"].update(colour="red")))], "model.colour")),
    Case("config", "bad value", lambda c: (["train", str(c.config(lambda p: p["training"].update(loss={"kind": "hinge"})))], "training.loss.kind")),
    Case("config", "--set without =", lambda c: (["train", str(c.config()), "--set", "training.max_epochs"], "training.max_epochs")),
    Case("config", "manifest missing", lambda c: (["train", str(c.config(lambda p: p["data"].update(manifest=str(c.tmp / "no.parquet")))), "--offline", "--no-progress"], "no.parquet")),
    Case("config", "image fit neither pad nor crop", lambda c: (["train", str(c.config(lambda p: p["image"].update(fit="squash")))], "image.fit")),
    Case("config", "unknown encoder", lambda c: (["train", str(c.config(lambda p: p["image"].update(offline_encoder="dragon-net"))), "--offline", "--no-progress"], "dragon-net")),
    Case("config", "experiment without base:", lambda c: (["experiment", str(c.experiment(lambda p: p.pop("base") and None))], "base:")),
    Case("config", "experiment base file missing", lambda c: (["experiment", str(c.experiment(lambda p: p.update(base="nowhere.yaml")))], "nowhere.yaml")),
    Case("config", "experiment grid key unknown", lambda c: (["experiment", str(c.experiment(lambda p: p.update(grid={"model.colour": ["red"]})))], "model.colour")),
    Case("config", "experiment seeds repeated", lambda c: (["experiment", str(c.experiment(lambda p: p.update(seeds=[1, 1])))], "seeds")),
    Case("config", "experiment whose every run fails",
         lambda c: (["experiment", str(c.experiment(lambda p: p["base"]["data"].update(task="dragons"))), "--offline", "--no-progress"], "all 2 run(s) failed")),
    Case("config", "YAML alias bomb", lambda c: (["train", str(c.config(lambda p: ALIAS_BOMB))], "aliases")),
    Case("config", "experiment name leaves runs_dir", lambda c: (["experiment", str(c.experiment(lambda p: p.update(name="../../x")))], "experiment name")),
    Case("config", "CLIP run name leaves runs_dir", lambda c: (["clip", "train", str(_with(c.tmp / "clip.yaml", "name: ../../x\n"))], "CLIP run name")),
    Case("config", "--set max_epochs=true (a boolean as a number)", lambda c: (["train", str(c.config()), "--set", "training.max_epochs=true"], "training.max_epochs")),
    Case("config", "--set seed=-1", lambda c: (["train", str(c.config()), "--set", "seed=-1"], "seed")),
    Case("config", "--set lr=.inf", lambda c: (["train", str(c.config()), "--set", "training.lr=.inf"], "training.lr")),
    Case("config", "experiment seed out of range", lambda c: (["experiment", str(c.experiment(lambda p: p.update(seeds=[0, 2**40])))], "seeds")),
    Case("config", "a patient in two splits (train)",
         lambda c: (["train", str(c.config(lambda p: p["data"].update(manifest=str(c.manifest_with(_two_splits))))), "--offline", "--no-progress"], "P-TWICE (test+train)")),
    Case("config", "a patient in two splits (experiment)",
         lambda c: (["experiment", str(c.experiment(lambda p: p["base"]["data"].update(manifest=str(c.manifest_with(_two_splits))))), "--offline", "--no-progress"], "P-TWICE (test+train)")),
    # ------------------------------------------------------------------ embed
    Case("embed", "unknown image encoder", lambda c: (_embed(c, c.phantoms, "--image-encoder", "dragon-net"), "dragon-net")),
    Case("embed", "--fit neither pad nor crop", lambda c: (_embed(c, c.phantoms, "--image-encoder", "efficientnet-lite0", "--fit", "squash"), "squash")),
    Case("embed", "unknown text encoder", lambda c: (_embed(c, c.phantoms, "--text-encoder", "dragon"), "dragon")),
    Case("embed", "hub id offline", lambda c: (_embed(c, c.phantoms, "--text-encoder", "nobody/no-such-model"), "nobody/no-such-model")),
    Case("embed", "image weights file missing", lambda c: (_embed(c, c.phantoms, "--image-encoder", "efficientnet-lite0", "--image-weights", str(c.tmp / "w.pt")), "w.pt")),
    Case("embed", "tfidf svd_dim above the training texts", lambda c: (_embed(c, c.phantoms, "--text-encoder", "tfidf"), "give a smaller svd_dim")),
    Case("embed", "image weights with pickled objects", lambda c: (_embed(c, c.phantoms, "--image-encoder", "efficientnet-lite0", "--image-weights", str(_pickled_weights(c))), "pickled Python objects")),
    Case("embed", "a FIFO as an image path",
         lambda c: (_embed(c, _image_manifest(c, _fifo), "--image-encoder", "efficientnet-lite0", "--input-size", "32"), "a FIFO"),
         counted="unreadable", out="store"),
    Case("embed", "truncated image file",
         lambda c: (_embed(c, _image_manifest(c, lambda p: p.write_bytes(p.read_bytes()[:60])), "--image-encoder", "efficientnet-lite0", "--input-size", "32"), ""),
         counted="unreadable", out="store"),
    Case("embed", "image over the pixel limit",
         lambda c: (_embed(c, _image_manifest(c, _huge_png), "--image-encoder", "efficientnet-lite0", "--input-size", "32"), ""),
         counted="over the limit", out="store"),
    Case("embed", "image shard with a flipped byte", lambda c: _damaged_store(c, "images-00001.npy", _flip_byte)),
    Case("embed", "image shard truncated", lambda c: _damaged_store(c, "images-00002.npy", lambda p: p.write_bytes(p.read_bytes()[:-64]))),
    Case("embed", "shard ids JSON cut short", lambda c: _damaged_store(c, "images-00003.ids.json", lambda p: p.write_text(p.read_text()[:-9]))),
    Case("embed", "text array with a flipped byte", lambda c: _damaged_store(c, "texts.npy", _flip_byte)),
    Case("embed", "store meta.json not JSON", lambda c: _damaged_store(c, "meta.json", lambda p: p.write_text("{"))),
    Case("embed", "NaN vector in a shard", lambda c: (_damaged_store(c, "images-00001.npy", _nan_shard)[0], "NaN or infinity")),
    Case("embed", "--verify on a damaged store",
         lambda c: (["embed", "--verify", str(c.tmp / "store")], _damaged_store(c, "images-00000.npy", _flip_byte)[1])),
    Case("config", "store shard damaged (train)", _train_on_damaged_store),
    # ------------------------------------------------------------------ predict
    Case("predict", "onnxruntime backend without model.onnx", lambda c: (c.predict(c.run) + ["--backend", "onnxruntime"], "model.onnx")),
    Case("predict", "model.onnx not ONNX", lambda c: (c.predict(_break(c.run_copy(), "model.onnx", "hello")) + ["--backend", "onnxruntime"], "model.onnx")),
    Case("predict", "unknown backend", lambda c: (c.predict(c.run) + ["--backend", "tensorrt"], "--backend")),
    Case("predict", "not a run directory", lambda c: (c.predict(c.tmp), "not a finished run")),
    Case("predict", "run.json not JSON", lambda c: (c.predict(_break(c.run_copy(), "run.json", "{")), "run.json")),
    Case("predict", "model.json missing", lambda c: (c.predict(_remove(c.run_copy(), "model.json")), "model.json")),
    Case("predict", "model.safetensors truncated",
         lambda c: (c.predict(_break(c.run_copy(), "model.safetensors", (c.run / "model.safetensors").read_bytes()[:100])), "model.safetensors")),
    Case("predict", "model.safetensors not safetensors", lambda c: (c.predict(_break(c.run_copy(), "model.safetensors", "hello")), "model.safetensors")),
    Case("predict", "weights of another shape",
         lambda c: (c.predict(c.sidecar(c.run_copy(), lambda j: j["head"]["kwargs"].update(hidden=[3]))), "model.safetensors")),
    Case("predict", "image.n_views not a number", lambda c: (c.predict(c.sidecar(c.run_copy(), lambda j: j["image"].update(n_views="abc"))), "image.n_views")),
    Case("predict", "text.state not a state", lambda c: (c.predict(c.sidecar(c.run_copy(), lambda j: j["text"]["state"].update(json="config.yaml"))), "config.yaml")),
    Case("predict", "text.state path leaves the run",
         lambda c: (c.predict(c.sidecar(c.run_copy(), lambda j: j["text"]["state"].update(json="../../x/text_encoder.json"))), "text.state.json")),
    Case("predict", "text.state absolute path",
         lambda c: (c.predict(c.sidecar(c.run_copy(), lambda j: j["text"]["state"].update(tensors=str(c.run / "text_encoder.safetensors")))), "text.state.tensors")),
    Case("predict", "image.weights names a local file",
         lambda c: (c.predict(c.sidecar(c.run_copy(), lambda j: j["image"].update(weights=str(c.run / "model.safetensors")))), "image.weights")),
    Case("predict", "text.encoder names a folder outside the run",
         lambda c: (c.predict(c.sidecar(c.run_copy(), lambda j: j["text"].update(state=None, encoder=str(c.tmp)))), "text.encoder")),
    Case("predict", "image.fit neither pad nor crop", lambda c: (c.predict(c.sidecar(c.run_copy(), lambda j: j["image"].update(fit="squash"))), "image.fit")),
    Case("predict", "fitted text state edited after training", lambda c: (c.predict(_break(c.run_copy(), "text_encoder.json", (c.run / "text_encoder.json").read_text() + "\n")), "text_encoder.json: its bytes differ")),
    Case("predict", "model.safetensors with a flipped byte", lambda c: (c.predict(_flipped(c.run_copy(), "model.safetensors")), "model.safetensors: its bytes differ")),
    Case("predict", "image file missing", lambda c: (c.predict(c.run, image=c.tmp / "no.png"), "no.png")),
    Case("predict", "image not an image", lambda c: (c.predict(c.run, image=_with(c.tmp / "x.png", "text")), "x.png")),
    Case("predict", "image path is a FIFO", lambda c: (c.predict(c.run, image=_fifo(c.tmp / "fifo.png")), "fifo.png: a FIFO")),
    Case("predict", "image over the pixel limit", lambda c: (c.predict(c.run, image=_huge(c)), "huge.png")),
    Case("predict", "DICOM in an unsupported transfer syntax",
         lambda c: (c.predict(c.run, image=_with(c.tmp / "video.dcm", dicom_of(phantom_radiograph(32), "mpeg2"))),
                    "video.dcm: cannot read the image (unsupported DICOM transfer syntax MPEG2")),
    Case("predict", "--sr not a .dcm file", lambda c: (c.predict(c.run) + ["--sr", str(c.tmp / "sr.json")], "--sr")),
    Case("embed", "DICOM in an unsupported transfer syntax in a manifest",
         lambda c: (_embed(c, _image_manifest(c, lambda p: p.write_bytes(dicom_of(phantom_radiograph(32), "mpeg2"))),
                           "--image-encoder", "efficientnet-lite0", "--input-size", "32"), ""),
         counted="unreadable", out="store"),
    Case("predict", "report missing", lambda c: (c.predict(c.run, report=c.tmp / "no.txt"), "no.txt")),
    Case("predict", "report not UTF-8", lambda c: (c.predict(c.run, report=_with(c.tmp / "r.txt", b"FINDINGS: \xff\xfe\n")), "r.txt")),
    Case("predict", "view not a view position",
         lambda c: (c.predict(c.run) + ["--view", "sideways"], "'sideways'")),
    Case("predict", "more views than images",
         lambda c: (c.predict(c.run) + ["--view", "PA", "--view", "L"], "2 view(s) given for 1 image(s)")),
    Case("predict", "no image given", lambda c: (["predict", str(c.run), "--report", str(c.report())], "at least one image")),
    # ------------------------------------------------------------------ pacs (DICOMweb)
    Case("pacs", "DICOMweb server answers 500", lambda c: (_pacs(c, "500"), "cannot search for studies: the DICOMweb server answered HTTP 500")),
    Case("pacs", "DICOMweb server never answers", lambda c: (_pacs(c, "hang"), "did not answer within 1 s")),
    Case("pacs", "a study the server fails with 500", lambda c: (_pacs(c, "500-after-search"), "study 1.2.3.4.5: the DICOMweb server answered HTTP 500")),
    Case("pacs", "a study whose retrieval times out", lambda c: (_pacs(c, "hang-after-search"), "study 1.2.3.4.5: the DICOMweb server at")),
    Case("pacs", "a study with no image instances", lambda c: (_pacs(c, "no-series"), "study 1.2.3.4.5: no image instances of modality CR/DX")),
    Case("pacs", "url not http", lambda c: (["pacs", str(c.run), "--url", "ftp://pacs/dicom-web"], "--url 'ftp://pacs/dicom-web'")),
    Case("pacs", "since not a date", lambda c: (["pacs", str(c.run), "--url", "http://127.0.0.1:9/dicom-web", "--since", "31/01/2024"], "--since '31/01/2024'")),
    # ------------------------------------------------------------------ evaluate / report / explain
    Case("evaluate", "predictions.parquet corrupt", lambda c: (["evaluate", str(_break(c.run_copy(), "predictions.parquet", "x")), "--n-boot", "5"], "predictions.parquet")),
    Case("evaluate", "a patient in two splits",
         lambda c: (["evaluate", str(_run_on(c, c.manifest_with(_two_splits))), "--n-boot", "5"], "P-TWICE (test+train)")),
    Case("evaluate", "not a run directory", lambda c: (["evaluate", str(c.tmp)], str(c.tmp.name))),
    Case("report", "not a run directory", lambda c: (["report", str(c.tmp)], str(c.tmp.name))),
    Case("report", "metrics.json not JSON", lambda c: (["report", str(_break(c.run_copy(), "metrics.json", "{"))], "metrics.json")),
    Case("report", "metrics.json verdict of unknown kind", lambda c: (["report", str(_verdict(c.run_copy(), "bad luck"))], "metrics.json")),
    Case("explain", "study id unknown", lambda c: (["explain", str(c.run), "--study", "NOPE"], "NOPE")),
    Case("explain", "label unknown", lambda c: (["explain", str(c.run), "--label", "dragons", "--limit", "1"], "dragons")),
    # ------------------------------------------------------------------ tracking / sweep / export
    Case("train", "unknown tracker", lambda c: (["train", str(c.config()), "--offline", "--tracking", "wandb"], "tracking.kind")),
    Case("sweep", "search space file missing", lambda c: (["sweep", str(c.config()), "--offline", "--space", str(c.tmp / "no-space.yaml")], "no-space.yaml")),
    Case("sweep", "search space not YAML", lambda c: (["sweep", str(c.config()), "--offline", "--space", str(_with(c.tmp / "space.yaml", "a: [b"))], "space.yaml")),
    Case("sweep", "search space names an unknown key", lambda c: (["sweep", str(c.config()), "--offline", "--space", str(_with(c.tmp / "space.yaml", "training.nope: {type: float, low: 0, high: 1}"))], "params.training.nope")),
    Case("sweep", "search space range empty", lambda c: (["sweep", str(c.config()), "--offline", "--space", str(_with(c.tmp / "space.yaml", "training.lr: {type: float, low: 1, high: 0.1}"))], "params.training.lr")),
    Case("export", "unknown --format", lambda c: (["export", str(c.run), "--to", str(c.tmp / "out"), "--format", "tflite"], "--format")),
    Case("export", "not a run directory", lambda c: (["export", str(c.tmp), "--to", str(c.tmp / "out")], str(c.tmp.name))),
    Case("export", "destination not empty", lambda c: (["export", str(c.run), "--to", str(_with(c.tmp / "full.txt", "x").parent)], str(c.tmp.name))),
    # ------------------------------------------------------------------ generate score
    Case("generate", "generated file missing",
         lambda c: (["generate", "score", "--generated", str(c.tmp / "no.json"), "--reference", str(_with(c.tmp / "ref.json", "{}"))], "no.json")),
    Case("generate", "generated file not JSON", lambda c: _generated(c, "{oops")),
    Case("generate", "generated CSV without text column", lambda c: _generated(c, "id,words\nCXR1,x\n", suffix=".csv")),
    Case("generate", "generated value not text", lambda c: _generated(c, '{"CXR1": 5}')),
    Case("generate", "no id shared with the reference", lambda c: _generated(c, '{"CXR9": "normal"}')),
    Case("generate", "annotation.json without a split", lambda c: (_generated(c, '{"CXR1": "x."}', _ANNOTATION)[0], "--reference-split")),
    Case("generate", "unknown split name", lambda c: ([*_generated(c, '{"CXR1": "x."}', _ANNOTATION)[0], "--reference-split", "dev"], "'dev'")),
    Case("generate", "generated id not in the reference split",
         lambda c: ([*_generated(c, '{"CXR2": "x."}', _ANNOTATION)[0], "--reference-split", "test"], "CXR2")),
    Case("generate", "radeval models missing",
         lambda c: ([*_generated(c, '{"CXR1": "x."}')[0], "--metrics", "radeval:ratescore"], "RaTE-NER-Deberta")),
    Case("generate", "score into a generation dir another writer holds (--no-wait)",
         lambda c: ([*_generated(c, '{"CXR1": "x."}')[0], "--no-wait"], f"{_held(c, c.tmp / 'scores')}: ")),
    # ------------------------------------------------------------------ generate finetune
    Case("generate", "finetune --out a user's folder",
         lambda c: (_finetune(c, _user_folder(c.tmp / "mine")), f"{c.tmp / 'mine'}: not empty")),
    Case("generate", "finetune --out a file", lambda c: (_finetune(c, _with(c.tmp / "out.txt", "x")), "out.txt: not a folder")),
    Case("generate", "finetune --out with a damaged finetune.json",
         lambda c: (_finetune(c, _with(_mkdir(c.tmp / "lora") / "finetune.json", "{oops").parent), "finetune.json")),
    Case("generate", "finetune --tracking unknown",
         lambda c: ([*_finetune(c, c.tmp / "lora"), "--tracking", "wandb"], "--tracking")),
]


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _user_folder(path: Path) -> Path:
    """A folder of the user's with an adapter/ and checkpoint/ that fine-tuning would replace."""
    (_mkdir(path / "adapter") / "keep.bin").write_bytes(b"mine")
    (_mkdir(path / "checkpoint") / "state.json").write_text('{"mine": true}')
    return path


def _finetune(c: Ctx, out: Path) -> list[str]:
    """`generate finetune` of a model that is never loaded (the --out check comes first)."""
    return ["generate", "finetune", str(c.tmp / "no-model"), str(c.phantoms), "--out", str(out),
            "--no-progress"]


# ---------------------------------------------------------------------- issue 23: damaged uploads,
# oversized text, JSON/YAML nested beyond reason, a run directory another writer holds
CASES += [
    Case("predict", "PNG with a broken chunk (IDAT length past its data)",
         lambda c: (c.predict(c.run, image=_broken_chunk_png(c)), "chunk.png: cannot read the image (damaged PNG file")),
    Case("predict", "DICOM with a multi-valued Rows", lambda c: (c.predict(c.run, image=_dicom(c, _two_rows)), "Rows holds 2 values")),
    Case("predict", "DICOM element of unknown VR", lambda c: (c.predict(c.run, image=_dicom(c, _unknown_vr)), "Unknown Value Representation")),
    Case("predict", "DICOM element of odd length", lambda c: (c.predict(c.run, image=_dicom(c, _odd_rows)), "view.dcm: not a readable DICOM file")),
    Case("predict", "DICOM without pixel data", lambda c: (c.predict(c.run, image=_dicom(c, pixels=False)), "view.dcm: cannot read the image (DICOM file without pixel data")),
    Case("predict", "report over the size cap", lambda c: (c.predict(c.run, report=c.report("FINDINGS: " + "clear. " * 4_000)), "report.txt: 28,010 characters, over the limit")),
    Case("predict", "report file of megabytes", lambda c: (c.predict(c.run, report=c.report("x" * 5_000_000)), "report.txt: 5,000,000 bytes")),
    Case("predict", "--indication over the size cap", lambda c: ([*c.predict(c.run), "--indication", "cough " * 4000], "indication: 24,000 characters")),
    Case("predict", "run.json nested too deeply", lambda c: (c.predict(_break(c.run_copy(), "run.json", "[" * 100_000 + "]" * 100_000)), "run.json: JSON nested too deeply")),
    Case("evaluate", "run directory held by another writer (--no-wait)", lambda c: (["evaluate", str(_held(c, c.run_copy())), "--n-boot", "5", "--no-wait"], f"is being written by pid {os.getpid()}")),
    Case("config", "config nested too deeply", lambda c: (["train", str(_with(c.tmp / "deep.yaml", "a: " + "[" * 5000 + "]" * 5000)), "--offline"], "deep.yaml: nested too deeply")),
    Case("config", "--set value nested too deeply", lambda c: (["train", str(c.config()), "--offline", "--set", "model.hidden=" + "[" * 5000 + "]" * 5000], "--set model.hidden=...: the value is nested too deeply")),
    Case("sweep", "search space nested too deeply", lambda c: (["sweep", str(c.config()), "--offline", "--space", str(_with(c.tmp / "space.yaml", "a: " + "[" * 5000 + "]" * 5000))], "space.yaml: nested too deeply")),
    Case("explain", "a view's PNG with a broken chunk",
         lambda c: (["explain", str(_run_on(c, _image_manifest(c, lambda p: p.write_bytes(_broken_chunk_png(c).read_bytes())))),
                     "--study", str(read_manifest(c.phantoms).df["study_id"].iloc[0])], "img0.png: damaged PNG file")),
    Case("ingest r2gen", "annotation.json nested too deeply", lambda c: (_r2gen(c.r2gen("[" * 100_000 + "]" * 100_000)), "annotation.json: JSON nested too deeply")),
    Case("ingest r2gen", "annotation.json a list, not splits", lambda c: (_r2gen(c.r2gen(json.dumps([R2GEN_ENTRY]))), "expected an object of splits")),
    Case("ingest r2gen", "entry not an object",
         lambda c: (_r2gen(c.r2gen(json.dumps({"train": [R2GEN_ENTRY, ["CXR2", "x"]]}))), "train[1]"),
         counted="malformed-row", out="out.parquet"),
]


def _broken_chunk_png(c: Ctx) -> Path:
    """A noise PNG (several IDAT chunks) whose first IDAT declares 7 bytes more than it has:
    Pillow reads into the next chunk and raises SyntaxError (once an HTTP 500)."""
    import struct

    path = c.tmp / "chunk.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (400, 400), dtype=np.uint8)).save(path)
    data = bytearray(path.read_bytes())
    (length,) = struct.unpack(">I", data[33:37])  # the chunk after the 13-byte IHDR
    assert data[37:41] == b"IDAT"
    data[33:37] = struct.pack(">I", length + 7)
    path.write_bytes(bytes(data))
    return path


_ROWS = b"(\x00\x10\x00US\x02\x00"
"""Rows (0028,0010), explicit VR little endian, value length 2."""


def _two_rows(data: bytes) -> bytes:
    at = data.index(_ROWS)
    return data[:at] + b"(\x00\x10\x00US\x04\x00" + data[at + 8 : at + 10] * 2 + data[at + 10 :]


def _unknown_vr(data: bytes) -> bytes:
    return data.replace(_ROWS, b"(\x00\x10\x00ZZ\x02\x00", 1)


def _odd_rows(data: bytes) -> bytes:
    at = data.index(_ROWS)
    return data[:at] + b"(\x00\x10\x00US\x01\x00" + data[at + 8 : at + 9] + data[at + 10 :]


def _dicom(c: Ctx, edit: Callable[[bytes], bytes] | None = None, pixels: bool = True) -> Path:
    """A 64 x 64 DICOM (pydicom, explicit VR little endian) of a phantom view, edited."""
    import io

    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.ViewPosition, ds.Rows, ds.Columns = "DX", "PA", 64, 64
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if pixels:
        ds.PixelData = (np.arange(64 * 64, dtype=np.uint16) % 4096).tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return _with(c.tmp / "view.dcm", edit(buffer.getvalue()) if edit else buffer.getvalue())


def _held(c: Ctx, folder: Path) -> Path:
    """``folder`` with its lock held by this test (another writer) until the case ends."""
    from cxrfuse.files import folder_lock

    c.held = folder_lock(folder, "the folder (held by the battery)")
    c.held.__enter__()
    return folder


def _xml_with(c: Ctx, extra: dict[str, bytes], numbers: tuple[int, ...] = (1, 2, 3)) -> Path:
    folder = c.xml_folder(numbers)
    for name, data in extra.items():
        (folder / name).write_bytes(data)
    return folder


def _kaggle(root: Path) -> list[str]:
    return ["ingest", "iu-xray", "--layout", "kaggle", "--images", str(root), "--out", str(root.parent / "out.parquet")]


def _kaggle_bytes(c: Ctx, data: bytes) -> Path:
    root = c.kaggle()
    (root / "indiana_reports.csv").write_bytes(data)
    return root


def _r2gen(root: Path) -> list[str]:
    return ["ingest", "iu-xray", "--layout", "r2gen", "--images", str(root), "--out", str(root.parent / "out.parquet")]


def _nih(csv: Path, images: Path, c: Ctx) -> list[str]:
    return ["ingest", "nih", "--csv", str(csv), "--images", str(images), "--out", str(c.tmp / "out.parquet")]


def _nih_broken(c: Ctx) -> tuple[Path, Path]:
    """The NIH inputs with one PNG cut short (a header, no pixels)."""
    csv, images = c.nih()
    path = images / "00000002_000.png"
    path.write_bytes(path.read_bytes()[:40])
    return csv, images


def _broken_image_manifest(c: Ctx) -> Path:
    """The phantom manifest with its first image replaced by a file that is no image."""
    manifest = read_manifest(c.phantoms)
    df = manifest.df.copy()
    df.at[0, "views"] = [{**df.at[0, "views"][0], "path": str(_with(c.tmp / "broken.png", b"\x89PNG\r\n\x1a\nno"))}]
    return manifest.replace(df=df).save(c.tmp / "broken.parquet")


def _damaged_hash_cache(c: Ctx) -> Path:
    """The phantom manifest without stored hashes, beside a hash cache that is no Parquet."""
    manifest = read_manifest(c.phantoms)
    df = manifest.df.copy()
    df["views"] = [[{k: x for k, x in v.items() if k not in ("content_hash", "phash")} for v in vs]
                   for vs in df["views"]]  # fmt: skip
    _with(c.tmp / "h.image-hashes.parquet", b"PAR1 damaged")
    return manifest.replace(df=df).save(c.tmp / "h.parquet")


def _replace(path: Path, old: str, new: str, count: int) -> None:
    text = path.read_text()
    assert old in text, (path, old)
    path.write_text(text.replace(old, new, count))


def _plain_parquet(c: Ctx) -> Path:
    path = c.tmp / "plain.parquet"
    pd.DataFrame({"a": [1]}).to_parquet(path)
    return path


def _break(run: Path, name: str, data: bytes | str) -> Path:
    _with(run / name, data)
    return run


def _verdict(run: Path, kind: str) -> Path:
    """A hand-edited metrics.json whose test verdict has a kind cxrfuse does not know."""
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["test"]["verdicts"] = [{"label": "abnormal", "kind": kind, "message": "edited"}]
    (run / "metrics.json").write_text(json.dumps(metrics))
    return run


def _flipped(run: Path, name: str) -> Path:
    _flip_byte(run / name)
    return run


def _remove(run: Path, name: str) -> Path:
    (run / name).unlink()
    return run


def _huge(c: Ctx) -> Path:
    path = c.tmp / "huge.png"
    _huge_png(path)
    return path


@pytest.fixture
def ctx(tmp_path: Path, battery_run: Path, battery_phantoms: Path, iu_xml_bytes: dict[int, bytes],
        mimic_tree_writer: Callable[..., Path]) -> Ctx:  # fmt: skip
    return Ctx(tmp_path, battery_run, battery_phantoms, iu_xml_bytes, mimic_tree_writer)


def test_the_battery_has_sixty_kinds() -> None:
    assert len(CASES) >= 60
    assert len({(c.stage, c.kind) for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[f"{c.stage}: {c.kind}" for c in CASES])
def test_bad_input(case: Case, ctx: Ctx) -> None:
    argv, names = case.build(ctx)
    try:
        result = runner.invoke(app, argv)
    finally:
        if ctx.held is not None:
            ctx.held.__exit__(None, None, None)
    output = result.output
    assert "Traceback" not in output
    if case.counted is None:
        assert result.exit_code == 2, output
        errors = [line for line in output.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, output
        assert names in output.replace("\n", ""), output
    else:
        assert result.exit_code == 0, output
        assert case.counted in output, output
        assert names in output.replace("\n", ""), output
        assert case.out is not None and (ctx.tmp / case.out).exists()
        if case.out.endswith(".parquet"):
            assert len(read_manifest(ctx.tmp / case.out)) > 0  # the rest is kept
