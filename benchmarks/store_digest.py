"""What the store's integrity digests cost (issue 23): hashing speed of SHA-256 (hashlib,
what :mod:`cxrfuse.store.integrity` uses), BLAKE2b-128 and xxHash3-64 (PyPI ``xxhash``, measured
only when importable), on a shard-sized array (1024 x 1024 float32 = 4 MiB, the default shard
of a 1024-d encoder), and the first-open verification of a store of 16 such shards against
opening it without checks.

    .venv/bin/python benchmarks/store_digest.py [--shards 16] [--repeats 5]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from cxrfuse.store import integrity


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    data = np.random.default_rng(0).standard_normal((1024, 1024)).astype(np.float32).tobytes()
    mib = len(data) / 2**20
    hashers = {
        "blake2b-128 (hashlib)": lambda: hashlib.blake2b(data, digest_size=16).digest(),
        "sha256 (hashlib)": lambda: hashlib.sha256(data).digest(),
    }
    try:
        import xxhash

        hashers["xxh3-64 (xxhash)"] = lambda: xxhash.xxh3_64(data).digest()
    except ImportError:
        pass
    rates = {name: round(mib / _best(fn, args.repeats)) for name, fn in hashers.items()}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        digests = {}
        for i in range(args.shards):
            array = np.frombuffer(data, dtype=np.float32).reshape(1024, 1024) + i
            digests[i] = integrity.write_npy_digest(folder / f"s{i}.npy", array)
        ids = [str(k) for k in range(1024)]

        def plain() -> None:
            for i in range(args.shards):
                np.load(folder / f"s{i}.npy", mmap_mode="r")

        def checked() -> None:
            integrity._verified.clear()  # a fresh process
            for i in range(args.shards):
                integrity.open_array(folder / f"s{i}.npy", digests[i], ids)

        open_plain, open_checked = _best(plain, args.repeats), _best(checked, args.repeats)
    print(json.dumps({
        "machine": platform.processor() or platform.machine(),
        "hash_MiB_per_s_4MiB_shard": rates,
        "store_MiB": round(mib * args.shards),
        "first_open_s": {"mmap only": round(open_plain, 4),
                         "digest + finite check": round(open_checked, 4)},
    }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
