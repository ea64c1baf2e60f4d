"""Faults a real lab hits (issue 23): a patient in two splits, damaged stores, two writers at
once, OS errors. The refusals themselves are battery cases; these tests check what a one-line
case cannot (what ``stats`` says, what a rerun recomputes, concurrent processes)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from battery_inputs import copy_run, tiny_run_config
from typer.testing import CliRunner

from cxrfuse.cli import app

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]


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


def _embed(manifest: Path, store: Path, *extra: str) -> list[str]:
    return ["embed", str(manifest), "--store", str(store), "--image-encoder", "efficientnet-lite0",
            "--input-size", "32", "--shard-size", "16", "--text-encoder", "tfidf", "--svd-dim", "4",
            "--sections", "findings", "--no-progress", "--json", *extra]  # fmt: skip


def _flip(path: Path, offset: int = -7) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def _arrays(store: Path) -> dict[str, bytes]:
    return {f"{p.parent.name[:6]}/{p.name}": p.read_bytes() for p in sorted(store.glob("*/*.npy"))}


def test_a_flipped_byte_is_named_and_only_its_shard_recomputed(battery_phantoms: Path,
                                                              tmp_path: Path) -> None:  # fmt: skip
    clean, store = tmp_path / "clean", tmp_path / "store"
    assert runner.invoke(app, _embed(battery_phantoms, clean)).exit_code == 0
    first = runner.invoke(app, _embed(battery_phantoms, store))
    assert first.exit_code == 0, first.output
    assert _arrays(store) == _arrays(clean)
    for damage, name, computed in ((_flip, "images-00001.npy", 16),
                                   (_flip, "texts.npy", 0),
                                   (_truncate, "images-00002.npy", 16),
                                   (_break_json, "images-00003.ids.json", 16)):  # fmt: skip
        damage(next(store.glob(f"*/{name}")))
        damaged = runner.invoke(app, _embed(battery_phantoms, store))
        assert damaged.exit_code == 2, damaged.output
        errors = [line for line in damaged.output.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "damaged store file" in errors[0], damaged.output
        assert name in damaged.output.replace("\n", ""), damaged.output
        rerun = runner.invoke(app, _embed(battery_phantoms, store))
        assert rerun.exit_code == 0, rerun.output
        assert json.loads(rerun.output)["images"]["computed_this_run"] == computed  # only it
        assert _arrays(store) == _arrays(clean)
    verified = runner.invoke(app, ["embed", "--verify", str(store)])
    assert verified.exit_code == 0 and "match their digests" in verified.output, verified.output
    _flip(next(store.glob("*/images-00000.npy")))
    verified = runner.invoke(app, ["embed", "--verify", str(store)])
    assert verified.exit_code == 2 and "images-00000.npy" in verified.output, verified.output


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


def _break_json(path: Path) -> None:
    path.write_text(path.read_text()[:-20])


def _cli(*argv: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "cxrfuse.cli", *argv], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip


def _both(argv: list[str], folder: Path) -> list[tuple[int, str]]:
    """Two processes of ``argv`` started while this test holds ``folder``'s lock for a few
    seconds: both wait, then one writes while the other waits for it."""
    from cxrfuse.files import folder_lock

    with folder_lock(folder, "test"):
        procs = [_cli(*argv), _cli(*argv)]
        time.sleep(4)
    return [(p.wait(timeout=600), p.stderr.read()) for p in procs]  # type: ignore[union-attr]


def test_two_concurrent_embeds_leave_the_store_of_one(battery_phantoms: Path, tmp_path: Path) -> None:
    single, store = tmp_path / "single", tmp_path / "store"
    assert runner.invoke(app, _embed(battery_phantoms, single)).exit_code == 0
    key = next(single.glob("*/images-00000.npy")).parent.name  # the same key folder
    results = _both(_embed(battery_phantoms, store), store / key)
    assert [rc for rc, _ in results] == [0, 0], results
    assert any("waiting for the lock held by pid" in err for _, err in results), results
    assert _arrays(store) == _arrays(single)
    names = {p.relative_to(store) for p in store.rglob("*") if "tmp-" in p.name}
    assert not names  # no temp file left


def test_two_trains_of_one_config_both_finish(battery_phantoms: Path, tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny_run_config(tmp_path, battery_phantoms)))
    argv = ["train", str(config), "--offline", "--no-progress", "--no-evaluate"]
    results = _both(argv, tmp_path / "runs" / "tiny")
    assert [rc for rc, _ in results] == [0, 0], results
    assert any("waiting for the lock held by pid" in err for _, err in results), results
    run = tmp_path / "runs" / "tiny"
    assert json.loads((run / "run.json").read_text())["status"] == "finished"
    predict = runner.invoke(app, ["evaluate", str(run), "--n-boot", "5"])
    assert predict.exit_code == 0, predict.output


def test_a_reader_during_embed_never_sees_a_half_written_shard(battery_phantoms: Path,
                                                               tmp_path: Path) -> None:  # fmt: skip
    """While ``embed`` writes shards in another process, opening the store (as ``train`` does,
    digests checked) only ever finds whole shards: no read fails, none removes a shard as
    damaged, and the finished store equals an undisturbed one."""
    from cxrfuse.store.images import load_image_embeddings

    clean, store = tmp_path / "clean", tmp_path / "store"
    argv = [a if a != "16" else "4" for a in _embed(battery_phantoms, store)]  # many shards
    proc = _cli(*argv)
    seen: set[int] = set()
    reads = 0
    while proc.poll() is None:
        for folder in [p.parent for p in store.glob("*/images-00000.ids.json")]:
            opened = load_image_embeddings(folder, require_meta=False)  # raises on a bad shard
            seen.add(len(opened.image_ids))
            reads += 1
        time.sleep(0.01)
    assert proc.returncode == 0, proc.stderr.read()  # type: ignore[union-attr]
    assert runner.invoke(app, [a if a != "16" else "4" for a in _embed(battery_phantoms, clean)]).exit_code == 0
    assert _arrays(store) == _arrays(clean)
    assert reads > 0, "the store was never opened while embed ran"
    print(f"{reads} reads during embed; image counts seen: {sorted(seen)}")


def test_evaluate_waits_for_the_writer_of_its_run(battery_run: Path, tmp_path: Path) -> None:
    """``cxrfuse evaluate`` takes the run directory's lock: while another writer holds it, it
    says whom it waits for and evaluates once the lock is free."""
    from cxrfuse.files import folder_lock

    run = copy_run(battery_run, tmp_path / "run")
    said = []
    with folder_lock(run, "test"):
        proc = _cli("evaluate", str(run), "--n-boot", "5", "--no-leakage")
        for line in proc.stderr:  # type: ignore[union-attr]  # start-up may take long under load
            said.append(line)
            if "waiting for the lock" in line:
                break
        assert proc.poll() is None, "".join(said)  # still waiting, the lock still held
    assert proc.wait(timeout=600) == 0, "".join(said) + proc.stderr.read()  # type: ignore[union-attr]
    assert f"waiting for the lock held by pid {os.getpid()}" in "".join(said)
    assert json.loads((run / "metrics.json").read_text())["n_boot"] == 5


def test_no_wait_names_the_holder_and_a_killed_holder_is_taken_over(
        battery_phantoms: Path, tmp_path: Path) -> None:  # fmt: skip
    from cxrfuse.files import LOCK_NAME, folder_lock

    store = tmp_path / "store"
    first = runner.invoke(app, _embed(battery_phantoms, store))
    assert first.exit_code == 0
    folder = next(store.glob("*/images-00000.npy")).parent
    (folder / "meta.json").unlink()  # unfinished: a writer is needed
    with folder_lock(folder, "test"):
        result = runner.invoke(app, _embed(battery_phantoms, store, "--no-wait"))
    assert result.exit_code == 2, result.output
    assert f"pid {os.getpid()} on" in result.output.replace("\n", "")
    # a writer killed while holding the lock leaves its lock file; the kernel freed the lock
    killed = subprocess.Popen([sys.executable, "-c", "pass"])  # an ended process's pid
    killed.wait()
    (folder / LOCK_NAME).write_text(json.dumps({"pid": killed.pid, "host": socket.gethostname(),
                                                "since": "earlier"}))  # fmt: skip
    taken = runner.invoke(app, _embed(battery_phantoms, store, "--no-wait"))
    assert taken.exit_code == 0, taken.output
    assert (folder / "meta.json").is_file() and (folder / LOCK_NAME).read_text() == ""


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 20 MB tmpfs (skipped where mounting is not allowed)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(mnt)],
                             capture_output=True, check=False)  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not allowed here: {mounted.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(disk: Path, leave: int) -> Path:
    """A filler file leaving ``leave`` bytes free on ``disk``."""
    st = os.statvfs(disk)
    filler = disk / "filler"
    with open(filler, "wb") as fh:
        fh.truncate(0)
        fh.write(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))
    return filler


def _full_disk_error(result: Any, disk: Path) -> None:
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    text = result.output.replace("\n", "")
    assert "no space left on device (ENOSPC)" in text and str(disk) in text, result.output
    assert not list(disk.rglob("*.tmp-*"))  # no temporary file left behind


def test_a_full_disk_is_named_and_a_rerun_gives_identical_results(
        small_disk: Path, battery_phantoms: Path, tmp_path: Path) -> None:  # fmt: skip
    clean = tmp_path / "clean-store"
    assert runner.invoke(app, _embed(battery_phantoms, clean)).exit_code == 0
    # embed: the store on a full disk
    filler = _fill(small_disk, 100_000)
    _full_disk_error(runner.invoke(app, _embed(battery_phantoms, small_disk / "store")), small_disk)
    filler.unlink()
    rerun = runner.invoke(app, _embed(battery_phantoms, small_disk / "store"))
    assert rerun.exit_code == 0, rerun.output
    assert _arrays(small_disk / "store") == _arrays(clean)
    # train: the runs on a full disk (the store elsewhere), then evaluate
    config = tiny_run_config(tmp_path, battery_phantoms)
    config["data"]["store"] = str(clean)
    (tmp_path / "ref.yaml").write_text(yaml.safe_dump(config))
    config["runs_dir"] = str(small_disk / "runs")
    (tmp_path / "full.yaml").write_text(yaml.safe_dump(config))
    train = ["train", "--offline", "--no-progress", "--no-evaluate"]
    assert runner.invoke(app, [*train[:1], str(tmp_path / "ref.yaml"), *train[1:]]).exit_code == 0
    filler = _fill(small_disk, 20_000)
    _full_disk_error(runner.invoke(app, [*train[:1], str(tmp_path / "full.yaml"), *train[1:]]),
                     small_disk)  # fmt: skip
    filler.unlink()
    again = runner.invoke(app, [*train[:1], str(tmp_path / "full.yaml"), *train[1:]])
    assert again.exit_code == 0, again.output
    run = small_disk / "runs" / "tiny"
    reference = pd.read_parquet(tmp_path / "runs" / "tiny" / "predictions.parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(run / "predictions.parquet"), reference)
    filler = _fill(small_disk, 5_000)
    _full_disk_error(runner.invoke(app, ["evaluate", str(run), "--n-boot", "5"]), small_disk)
    filler.unlink()
    assert runner.invoke(app, ["evaluate", str(run), "--n-boot", "5"]).exit_code == 0


def test_a_read_only_store_is_named(small_disk: Path, battery_phantoms: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    result = runner.invoke(app, _embed(battery_phantoms, small_disk / "store"))
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "read-only file system (EROFS)" in text and str(small_disk) in text.replace(" ", ""), text


def test_os_faults_are_described_with_path_cause_and_fix() -> None:
    import errno

    from cxrfuse.problems import describe_os_fault, os_fault

    for code, words in ((errno.EMFILE, "ulimit -n"), (errno.EACCES, "writable"),
                        (errno.ENOSPC, "free space")):  # fmt: skip
        wrapped = RuntimeError("run failed")
        wrapped.__cause__ = OSError(code, os.strerror(code), "/data/x.npy")
        fault = os_fault(wrapped)
        assert fault is not None
        text = describe_os_fault(fault)
        assert text.startswith("/data/x.npy: ") and words in text
        assert errno.errorcode[code] in text
    assert os_fault(FileNotFoundError(errno.ENOENT, "missing", "x")) is None  # a bad input
