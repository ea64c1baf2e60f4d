"""Scoring time of `generate score` for 3,000 studies, with and without METEOR.

The generated report of each of 3,000 bundled IU X-ray studies is a seeded random other
study's findings + impression (a realistic mix of lengths); the references are the studies'
own. One system is scored (language metrics with `--n-boot-language` resamples, clinical with
`--n-boot`), then the same with METEOR switched off; the per-study table and paired samples
are included (they are computed in the same pass).

    PYTHONPATH=src .venv/bin/python benchmarks/scoring_time.py [--n 3000] [--n-boot 1000] [--n-boot-language 200]
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np

from cxrfuse.data.iu_xray import ingest_iu_xray
from cxrfuse.generation import java_available, score_reports
from cxrfuse.generation.baselines import manifest_reports


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--n-boot-language", type=int, default=200)
    args = parser.parse_args()
    manifest, _ = ingest_iu_xray()
    reports = manifest_reports(manifest)
    ids = list(reports)[: args.n]
    rng = np.random.default_rng(0)
    others = rng.permutation(len(ids))
    generated = {sid: reports[ids[j]] for sid, j in zip(ids, others)}
    references = {sid: [reports[sid]] for sid in ids}
    print(f"machine: {platform.machine()}, python {platform.python_version()}; {len(ids)} studies; "
          f"{args.n_boot_language} language / {args.n_boot} clinical resamples; java {java_available()}")
    for meteor in (True, False):
        start = time.perf_counter()
        payload = score_reports(generated, references, n_boot=args.n_boot,
                                n_boot_language=args.n_boot_language, meteor=meteor)
        elapsed = time.perf_counter() - start
        print(f"METEOR {'on ' if meteor else 'off'}: {elapsed:.1f} s "
              f"(BLEU-4 {payload['bleu_4']['value']:.3f}, METEOR {payload['meteor']})")


if __name__ == "__main__":
    main()
