"""Per-study view embeddings stored without padding, read as the padded array of the heads.

The ``attention`` view fusion reads every view of a study, so its dense (n, V, D) array is as
wide as the widest study: on MIMIC-CXR one 12-view study made every one of 228k studies 12
slots wide (11 GB for 1.6 views a study). :class:`PaddedViews` keeps only the filled slots
(one row per embedded view) and gives, for any rows asked for, exactly the zero-padded
(k, V, D) block the dense array would hold, so heads, batches and predictions see the same
numbers while memory follows the views that exist.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


class PaddedViews:
    """A read-only (n, V, D) float32 array of view embeddings, held as its filled slots.

    ``vectors`` (total views, D): each study's views in slot order, study after study;
    ``offsets`` (n + 1): study i holds ``vectors[offsets[i]:offsets[i + 1]]`` in slots 0..k-1;
    ``width``: V, the slots of every row when read. Indexing the first axis (an int, a slice,
    an index or boolean array) returns the dense rows; ``np.asarray`` the whole dense array;
    :meth:`index_select` a tensor of rows, as ``torch.Tensor.index_select`` on the dense tensor.
    """

    ndim = 3

    def __init__(self, vectors: np.ndarray, offsets: np.ndarray, width: int) -> None:
        self.vectors = vectors
        self.offsets = np.asarray(offsets, dtype=np.int64)
        counts = np.diff(self.offsets)
        self.width = max(int(width), int(counts.max(initial=0)), 1)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self), self.width, int(self.vectors.shape[1]))

    @property
    def dtype(self) -> np.dtype:
        return self.vectors.dtype

    @property
    def nbytes(self) -> int:
        return int(self.vectors.nbytes + self.offsets.nbytes)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def counts(self) -> np.ndarray:
        """Filled slots of each study (n,)."""
        return np.diff(self.offsets)

    def mask(self) -> np.ndarray:
        """(n, V) bool: which slots hold a view (slots 0..k-1 of a k-view study)."""
        return np.arange(self.width)[None, :] < self.counts()[:, None]

    def _spans(self, rows: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For the studies ``rows``: per filled slot, its study's position in ``rows``, its
        slot and its row in ``vectors``."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        starts = self.offsets[rows]
        counts = self.offsets[rows + 1] - starts
        slot = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
        return np.repeat(np.arange(len(rows)), counts), slot, np.repeat(starts, counts) + slot

    def take(self, rows: Any, out: np.ndarray | None = None) -> np.ndarray:
        """The dense (k, V, D) rows ``rows`` (zeros in empty slots), into ``out`` if given."""
        shape = (int(np.size(rows)), self.width, self.shape[2])
        if out is None:
            out = np.zeros(shape, dtype=self.dtype)
        else:
            out[...] = 0
        study, slot, source = self._spans(rows)
        out[study, slot] = self.vectors[source]
        return out

    def views_of(self, rows: Any) -> np.ndarray:
        """(k, D) the embedded views of the studies ``rows``, study after study in slot order:
        what ``dense[rows][mask[rows]]`` holds, without the padded rows."""
        return self.vectors[self._spans(rows)[2]]

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, tuple):
            raise TypeError("PaddedViews: index the first axis only (rows of studies)")
        rows = np.arange(len(self))[key]
        return self.take(rows)[0] if np.ndim(rows) == 0 else self.take(rows)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        dense = self.take(np.arange(len(self)))
        return dense if dtype is None else dense.astype(dtype, copy=False)

    def index_select(self, dim: int, index: torch.Tensor,
                     out: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        """The rows ``index`` as a dense tensor (into ``out``, e.g. pinned memory, if given)."""
        if dim != 0:
            raise ValueError("PaddedViews.index_select: rows (dim 0) only")
        rows = index.cpu().numpy()
        if out is None:
            return torch.from_numpy(self.take(rows))
        self.take(rows, out=out.numpy())
        return out
