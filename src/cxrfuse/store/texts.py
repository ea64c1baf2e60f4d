"""Text embeddings: one vector per study's prepared report text, stored under a key of the
texts, the text configuration, the task and the encoder fingerprint (``texts.npy``,
``texts.ids.json``, ``texts.parquet``, ``meta.json``)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from cxrfuse.data.manifest import Manifest
from cxrfuse.files import atomic_path, clean_temp_files, folder_lock, write_json
from cxrfuse.problems import DataError
from cxrfuse.runtime import environment_info
from cxrfuse.store.integrity import (
    damaged,
    digest_file,
    nonfinite_rows,
    open_array,
    read_json,
    release_pages,
    verify_file,
    write_npy_digest,
)
from cxrfuse.store.keys import text_key
from cxrfuse.text import TextConfig, prepare_texts

if TYPE_CHECKING:
    from cxrfuse.encoders.text import TextEncoder


@dataclass


class TextEmbeddings:
    """One text vector per study (zeros with ``mask`` False where the text is empty)."""

    path: Path
    vectors: np.ndarray
    study_ids: list[str]
    mask: np.ndarray
    texts: list[str]
    meta: dict[str, Any] = field(default_factory=dict)
    reused: bool = False  # True when a finished store was loaded instead of computed

    def __len__(self) -> int:
        return len(self.study_ids)

    def study_matrix(self, manifest: Manifest,
                     rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        """(n, D) vectors and mask of the manifest's studies at ``rows`` (all by default), in
        that order (zeros for unknown studies); rows are read from the memory map in blocks."""
        ids = manifest.df["study_id"] if rows is None else manifest.df["study_id"].iloc[rows]
        index = pd.Series(np.arange(len(self.study_ids), dtype=np.int64),
                          index=pd.Index(self.study_ids, dtype=object))  # fmt: skip
        if not index.index.is_unique:
            index = index[~index.index.duplicated(keep="last")]
        found = index.index.get_indexer(pd.Index(ids.astype(str), dtype=object))
        X = np.zeros((len(ids), self.vectors.shape[1]), dtype=np.float32)
        mask = np.zeros(len(ids), dtype=bool)
        where = np.flatnonzero(found >= 0)
        source = index.to_numpy()[found[where]]
        for lo in range(0, len(where), 4096):
            pick, row = where[lo:lo + 4096], source[lo:lo + 4096]
            X[pick], mask[pick] = self.vectors[row], np.asarray(self.mask)[row]
            release_pages(self.vectors)
        return X, mask


def embed_texts(
    manifest: Manifest,
    text_encoder: TextEncoder,
    text_config: TextConfig,
    store_dir: str | Path,
    *,
    task: str | None = None,
    fit: bool = True,
) -> TextEmbeddings:
    """Embed each study's prepared text into ``store_dir/<key>/``.

    An encoder that ``requires_fit`` (tf-idf) is fitted on the studies with split "train"
    only (``fit=False``: an encoder fitted before, e.g. a run's, is used as it is). Studies
    with empty text get a zero vector and ``mask`` False.
    """
    texts = prepare_texts_list(manifest, text_config, task)
    study_ids = [str(s) for s in manifest.df["study_id"]]
    nonempty = np.array([bool(t.strip()) for t in texts], dtype=bool)
    if fit and getattr(text_encoder, "requires_fit", False):
        splits = manifest.df["split"]
        if splits.isna().all():
            raise DataError(
                f"text encoder {getattr(text_encoder, 'name', '?')!r} must be fitted on the "
                "training split, but the manifest has no split; run the split step first"
            )
        train = [t for t, s, ok in zip(texts, splits, nonempty) if s == "train" and ok]
        if not train:
            raise DataError("no study with split 'train' has text to fit the text encoder on")
        text_encoder.fit(train)
    key, inputs = text_key(study_ids, texts, text_encoder, text_config, task)
    folder = Path(store_dir) / key
    if (folder / "meta.json").is_file():
        return replace(load_text_embeddings(folder), reused=True)
    with folder_lock(folder, "the text store"):
        if (folder / "meta.json").is_file():  # written while we waited
            return replace(load_text_embeddings(folder), reused=True)
        return _embed_into(folder, key, inputs, text_encoder, texts, study_ids, nonempty)


def _embed_into(folder: Path, key: str, inputs: dict[str, Any], text_encoder: TextEncoder,
                texts: list[str], study_ids: list[str], nonempty: np.ndarray) -> TextEmbeddings:
    """The body of :func:`embed_texts` once this process may write ``folder``."""
    clean_temp_files(folder)
    start = time.perf_counter()
    dim = int(text_encoder.dim)
    vectors = np.zeros((len(texts), dim), dtype=np.float32)
    if nonempty.any():
        encoded = text_encoder.encode([t for t, ok in zip(texts, nonempty) if ok])
        vectors[nonempty] = np.asarray(encoded, dtype=np.float32)
    elapsed = time.perf_counter() - start
    bad = nonfinite_rows(vectors)
    if len(bad):
        raise DataError(f"text encoder {inputs['encoder']!r} gave {len(bad)} vector(s) with NaN "
                        f"or infinity (studies {', '.join(study_ids[r] for r in bad[:5])}); "
                        "nothing was stored")
    digests = {"texts.npy": write_npy_digest(folder / "texts.npy", vectors)}
    write_json(folder / "texts.ids.json", {"study_ids": study_ids, "mask": nonempty.tolist()})
    table = pd.DataFrame({"study_id": study_ids, "text": texts, "mask": nonempty})
    with atomic_path(folder / "texts.parquet") as tmp:
        table.to_parquet(tmp, index=False)
    for name in ("texts.ids.json", "texts.parquet"):
        digests[name] = digest_file(folder / name)
    meta = {
        "store_version": inputs["store_version"],
        "kind": "texts",
        "key": key,
        "key_inputs": inputs,
        "encoder": inputs["encoder"],
        "dim": dim,
        "n_studies": len(texts),
        "n_with_text": int(nonempty.sum()),
        "n_empty": int((~nonempty).sum()),
        "texts_per_s": int(nonempty.sum()) / elapsed if elapsed > 0 else None,
        "environment": environment_info(),  # torch version and CPU threads (said, not keyed)
        "digests": digests,  # checked when the store is first opened in a process
    }
    write_json(folder / "meta.json", meta)
    return TextEmbeddings(folder, vectors, study_ids, nonempty, texts, meta)


def prepare_texts_list(manifest: Manifest, config: TextConfig, task: str | None) -> list[str]:
    return [t if isinstance(t, str) else "" for t in prepare_texts(manifest, config, task)]


def load_text_embeddings(path: str | Path) -> TextEmbeddings:
    """Open a finished text store folder (vectors memory-mapped)."""
    folder = Path(path)
    if not (folder / "meta.json").is_file():
        raise DataError(f"{folder}: no meta.json; not a finished text embedding store")
    meta_path = folder / "meta.json"
    meta = read_json(meta_path, remove=[meta_path])
    digests = meta.get("digests", {})
    ids_path, table_path = folder / "texts.ids.json", folder / "texts.parquet"
    for file in (ids_path, table_path):  # a damaged file and meta.json go: the next run recomputes
        verify_file(file, digests.get(file.name), remove=[file, meta_path])
    ids = read_json(ids_path, remove=[ids_path, meta_path])
    try:
        texts = pd.read_parquet(table_path)["text"].tolist()
    except (OSError, ValueError, KeyError) as err:
        damaged(table_path, f"not a readable table: {err}", [table_path, meta_path])
    vectors = open_array(folder / "texts.npy", digests.get("texts.npy"), list(ids["study_ids"]),
                         remove=[folder / "texts.npy", meta_path])
    mask = np.asarray(ids["mask"], dtype=bool)
    return TextEmbeddings(folder, vectors, list(ids["study_ids"]), mask, texts, meta)
