"""The tf-idf report encoder: word 1-2 grams, truncated SVD, fitted on the training split only;
its fitted state stored as JSON + arrays (no pickles)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from cxrfuse.encoders.registry import TextEncoderSpec, register_text_encoder
from cxrfuse.encoders.text import EncoderNotFittedError, TextEncoder, _digest
from cxrfuse.problems import CxrfuseError, DataError


class TfidfEncoder(TextEncoder):
    """TF-IDF of word 1-2 grams, optionally reduced by truncated SVD to ``svd_dim``.

    Must be :meth:`fit` on the training split only before :meth:`encode`.
    """

    requires_fit = True

    def __init__(
        self,
        *,
        name: str = "tfidf",
        svd_dim: int | None = 256,
        max_features: int | None = 50_000,
        min_df: int = 1,
        ngram_range: tuple[int, int] = (1, 2),
        random_state: int = 0,
    ) -> None:
        self.name = name
        self.svd_dim, self.max_features, self.min_df = svd_dim, max_features, min_df
        self.ngram_range, self.random_state = tuple(ngram_range), random_state
        self.vectorizer: Any = None
        self.svd: Any = None

    @property
    def is_fitted(self) -> bool:
        return self.vectorizer is not None

    def _require_fit(self) -> None:
        if not self.is_fitted:
            raise EncoderNotFittedError(
                f"text encoder {self.name!r} is not fitted: call .fit(train_texts) on the "
                "training split before .encode()"
            )

    @property
    def dim(self) -> int:
        if self.svd_dim is not None:
            return self.svd_dim
        self._require_fit()
        return len(self.vectorizer.vocabulary_)

    def fit(self, texts: Sequence[str]) -> TfidfEncoder:
        """Learn vocabulary, idf and (optionally) the SVD basis from training texts."""
        from sklearn.decomposition import TruncatedSVD
        from sklearn.feature_extraction.text import TfidfVectorizer

        vectorizer = TfidfVectorizer(
            ngram_range=self.ngram_range,
            max_features=self.max_features,
            min_df=self.min_df,
            sublinear_tf=True,
            dtype=np.float32,
        )
        matrix = vectorizer.fit_transform([t or "" for t in texts])
        svd = None
        if self.svd_dim is not None:
            if self.svd_dim >= min(matrix.shape):
                raise DataError(
                    f"tfidf svd_dim={self.svd_dim} needs more than {self.svd_dim} training texts "
                    f"and terms (got {matrix.shape[0]} texts, {matrix.shape[1]} terms): give a "
                    f"smaller svd_dim (below {min(matrix.shape)}; `--svd-dim` for embed, "
                    "text.offline_options.svd_dim in a config) or use minilm"
                )
            svd = TruncatedSVD(self.svd_dim, random_state=self.random_state).fit(matrix)
        self.vectorizer, self.svd = vectorizer, svd
        return self

    def encode(self, texts: Sequence[str], batch_size: int = 1024) -> np.ndarray:
        self._require_fit()
        matrix = self.vectorizer.transform([t or "" for t in texts])
        dense = self.svd.transform(matrix) if self.svd is not None else matrix.toarray()
        return np.asarray(dense, dtype=np.float32)

    def fingerprint(self) -> str:
        """Digest of the settings and the fitted vocabulary, idf and SVD basis."""
        self._require_fit()
        settings = [
            self.svd_dim,
            self.max_features,
            self.min_df,
            self.ngram_range,
            self.random_state,
        ]
        parts: list[bytes | str] = [json.dumps(settings)]
        parts.append(
            json.dumps(sorted((k, int(v)) for k, v in self.vectorizer.vocabulary_.items()))
        )
        parts.append(np.ascontiguousarray(self.vectorizer.idf_).tobytes())
        if self.svd is not None:
            parts.append(np.ascontiguousarray(self.svd.components_).tobytes())
        return _digest(*parts)

    def export_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """The fitted state, without pickles: settings, vectorizer parameters and vocabulary
        (JSON-ready) and the idf vector and SVD basis (arrays); :meth:`from_state` inverts it."""
        self._require_fit()
        settings = {
            "svd_dim": self.svd_dim, "max_features": self.max_features, "min_df": self.min_df,
            "ngram_range": list(self.ngram_range), "random_state": self.random_state,
        }  # fmt: skip
        payload = {
            "encoder": self.name,
            "settings": settings,
            "vectorizer_params": _json_params(self.vectorizer.get_params()),
            "vocabulary": {term: int(i) for term, i in self.vectorizer.vocabulary_.items()},
        }
        arrays = {"idf": np.ascontiguousarray(self.vectorizer.idf_)}
        if self.svd is not None:
            arrays["svd_components"] = np.ascontiguousarray(self.svd.components_)
        return payload, arrays

    @classmethod
    def from_state(cls, payload: dict[str, Any], arrays: dict[str, np.ndarray]) -> TfidfEncoder:
        """A fitted encoder that gives the same vectors as the one :meth:`export_state` saw."""
        from sklearn.decomposition import TruncatedSVD
        from sklearn.feature_extraction.text import TfidfVectorizer

        try:
            settings = dict(payload["settings"], ngram_range=tuple(payload["settings"]["ngram_range"]))
            encoder = cls(name=payload["encoder"], **settings)
            vectorizer = TfidfVectorizer(**_python_params(payload["vectorizer_params"]))
            vectorizer.vocabulary_ = {str(k): int(v) for k, v in payload["vocabulary"].items()}
            vectorizer.idf_ = arrays["idf"]
        except (KeyError, TypeError, ValueError) as err:
            raise CxrfuseError(f"not a tf-idf encoder state ({type(err).__name__}: {err})") from err
        svd = None
        if "svd_components" in arrays:
            svd = TruncatedSVD(n_components=arrays["svd_components"].shape[0])
            svd.components_ = arrays["svd_components"]
            svd.n_features_in_ = arrays["svd_components"].shape[1]
        encoder.vectorizer, encoder.svd = vectorizer, svd
        return encoder


def _json_params(params: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in params.items():
        if isinstance(value, type):  # dtype=np.float32
            out[key] = {"dtype": np.dtype(value).name}
        elif isinstance(value, tuple):
            out[key] = list(value)
        elif value is None or isinstance(value, (str, int, float, bool, list)):
            out[key] = value
        else:
            raise CxrfuseError(f"cannot store text encoder parameter {key}={value!r} as JSON")
    return out


def _python_params(params: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in params.items():
        if isinstance(value, dict) and set(value) == {"dtype"}:
            out[key] = np.dtype(value["dtype"]).type
        elif key == "ngram_range" and isinstance(value, list):
            out[key] = tuple(value)
        else:
            out[key] = value
    return out


def _build_tfidf(
    spec: TextEncoderSpec, source: str, random_init: bool, **options: Any
) -> TextEncoder:
    if source != spec.source:
        raise ValueError("tfidf has no pretrained weights: use weights='default' and .fit()")
    for ignored in ("device", "pooling", "max_length"):
        options.pop(ignored, None)
    return TfidfEncoder(name=spec.name, **options)


register_text_encoder(
    "tfidf",
    kind="tfidf",
    source="",
    dim=256,
    max_length=None,
    pooling=None,
    offline=True,
    notes="word 1-2 gram tf-idf + truncated SVD to 256-d; fit on the training split only",
)(_build_tfidf)
