"""The embedding store: image and report embeddings computed once, keyed by what they depend
on, memory-mapped, resumable, and assembled per study.

* :mod:`~cxrfuse.store.keys`: what a stored vector depends on (the folder key).
* :mod:`~cxrfuse.store.images`, :mod:`~cxrfuse.store.texts`: embedding and loading
  (:mod:`~cxrfuse.store.image_shards`: the image store's shard files, opened).
* :mod:`~cxrfuse.store.cache`: the decoded-image cache (uint8 pixels, decoded once).
* :mod:`~cxrfuse.store.distributed`: several processes or nodes splitting the shards.
* :mod:`~cxrfuse.store.study`: study-level arrays for the fusion heads
  (:mod:`~cxrfuse.store.padded`: attention views without the padding).
* :mod:`~cxrfuse.store.pipeline`: :func:`embed`, the ``cxrfuse embed`` verb in one call.

Typical use::

    from cxrfuse.store import embed, load_image_embeddings

    summary = embed("iu.parquet", "efficientnet-lite0", "minilm", "store/")
    images = load_image_embeddings(summary["images"]["path"])
"""

from cxrfuse.store.cache import DecodedImageCache, fill_cache, manifest_image_cache
from cxrfuse.store.image_shards import ImageEmbeddings, load_image_embeddings
from cxrfuse.store.images import CPU_BATCH, GPU_BATCH, embed_images
from cxrfuse.store.keys import STORE_VERSION, image_records, image_store_key, weights_fingerprint
from cxrfuse.store.padded import PaddedViews
from cxrfuse.store.pipeline import default_workers, embed
from cxrfuse.store.study import StudyArrays, assemble, study_level_image
from cxrfuse.store.texts import (
    TextEmbeddings,
    embed_texts,
    load_text_embeddings,
    prepare_texts_list,
)

__all__ = [
    "CPU_BATCH",
    "GPU_BATCH",
    "STORE_VERSION",
    "DecodedImageCache",
    "ImageEmbeddings",
    "PaddedViews",
    "StudyArrays",
    "TextEmbeddings",
    "assemble",
    "default_workers",
    "embed",
    "embed_images",
    "embed_texts",
    "fill_cache",
    "image_records",
    "image_store_key",
    "load_image_embeddings",
    "load_text_embeddings",
    "manifest_image_cache",
    "prepare_texts_list",
    "study_level_image",
    "weights_fingerprint",
]
