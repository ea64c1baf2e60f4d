"""Scoring time of one long generated report (issue 23: `generate score` was quadratic in
report length; 500 KB took 198 s).

The generated report of one study is ``--kb`` kilobytes of either the bundled IU X-ray
findings + impression texts joined (``iu``: real sentences, mostly normal) or one abnormal
paragraph repeated (``dense``: a mention, a negation or an alternative every few words, as a
degenerate generator's output); a second study has an ordinary report. ``score_reports`` with METEOR off
and few resamples is timed, once per size: time / size should stay flat (linear).

    PYTHONPATH=src .venv/bin/python benchmarks/long_report.py [--kb 50 100 200 500]
"""

from __future__ import annotations

import argparse
import platform
import time

from cxrfuse.data.iu_xray import ingest_iu_xray
from cxrfuse.generation import score_reports
from cxrfuse.generation.baselines import manifest_reports

DENSE = ("The heart is normal in size. There is a small left pleural effusion. No pneumothorax. "
         "Mild cardiomegaly is seen, no edema. Atelectasis or pneumonia at the left base.")


def long_report(texts: list[str], size: int) -> str:
    """Reports joined (in order, repeated as needed) up to ``size`` characters."""
    parts, n, i = [], 0, 0
    while n < size:
        parts.append(texts[i % len(texts)])
        n += len(parts[-1]) + 1
        i += 1
    return " ".join(parts)[:size]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kb", type=int, nargs="+", default=[50, 100, 200, 500])
    parser.add_argument("--text", nargs="+", choices=["iu", "dense"], default=["iu", "dense"])
    args = parser.parse_args()
    reports = manifest_reports(ingest_iu_xray()[0])
    texts = list(reports.values())
    refs = {"a": [texts[0]], "b": [texts[1]]}
    print(f"{platform.machine()} {platform.python_version()}; METEOR off, 10 / 2 resamples")
    print("| text | report | seconds | seconds per 100 KB |")
    print("|:--|--:|--:|--:|")
    for kind in args.text:
        source = texts if kind == "iu" else [DENSE]
        for kb in args.kb:
            generated = {"a": long_report(source, kb * 1000), "b": texts[2]}
            start = time.perf_counter()
            score_reports(generated, refs, n_boot=10, n_boot_language=2, meteor=False)
            seconds = time.perf_counter() - start
            print(f"| {kind} | {kb} KB | {seconds:.1f} | {seconds / kb * 100:.2f} |", flush=True)


if __name__ == "__main__":
    main()
