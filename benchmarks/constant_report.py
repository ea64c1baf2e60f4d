"""The constant-report trap: one fixed "normal" report for every IU X-ray study, scored.

Every study of the 3,955 bundled IU X-ray reports gets the same generated report
("The heart is normal in size. The mediastinum is unremarkable. The lungs are clear.");
the references are the studies' findings + impression. The n-gram metrics come out well
above 0 while clinical efficacy over the five CheXpert competition observations is 0, and
the 14-observation micro-F1 is carried by No Finding alone. Also times the scoring.

    PYTHONPATH=src .venv/bin/python benchmarks/constant_report.py [--n-boot 1000] [--n-boot-language 200]
"""

from __future__ import annotations

import argparse
import platform
import time

from cxrfuse.data.iu_xray import ingest_iu_xray
from cxrfuse.generation import score_reports, scores_table

NORMAL = "The heart is normal in size. The mediastinum is unremarkable. The lungs are clear."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--n-boot-language", type=int, default=200)
    args = parser.parse_args()
    manifest, _ = ingest_iu_xray()
    references = {}
    for row in manifest.df.itertuples():
        text = " ".join(s for s in (row.findings, row.impression) if isinstance(s, str) and s.strip())
        if text:
            references[row.study_id] = [text]
    generated = {study: NORMAL for study in references}
    start = time.perf_counter()
    payload = score_reports(generated, references, n_boot=args.n_boot, n_boot_language=args.n_boot_language)
    elapsed = time.perf_counter() - start
    print(f"machine: {platform.machine()}, python {platform.python_version()}; "
          f"{len(manifest)} bundled reports, {len(references)} with findings or impression")
    print(scores_table(payload))
    print(f"\n(scoring {elapsed:.0f} s)")


if __name__ == "__main__":
    main()
