"""Report generation speed on this machine, in one run.

(a) retrieval: reports/s of choosing the report of every test study from the training bank
    (embeddings already in the store; the similarity search and the consensus only), for
    top1, medoid and sentences at k = 5, and the scoring time of one system;
(b) a tiny randomly initialised vision-language model (Mllama, Llama-3.2-Vision's
    architecture, built by tests/generation/tiny_vlm.py): reports/s at batch 1 and 4, and the
    time of one LoRA step. These say what the code path costs, not what an 11B model does:
    the real model needs a GPU (run ``benchmarks/gpu_suite.sh`` where one is lent).

    python benchmarks/generation_speed.py --manifest demo-output/phantoms/manifest.parquet \\
        --store demo-output/store --input-size 128
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from cxrfuse.data import read_manifest

ROOT = Path(__file__).resolve().parents[1]


def bench_retrieval(manifest: str, store: str, input_size: int) -> list[dict]:
    # imported here: the GPU suite runs bench_tiny_vlm where pycocoevalcap is not installed
    from cxrfuse.generation.baselines import manifest_reports
    from cxrfuse.generation.retrieval import choose_reports, store_vectors
    from cxrfuse.generation.scoring import score_reports

    man = read_manifest(manifest)
    space = store_vectors(man, store, "efficientnet-lite0", input_size=input_size, progress=False)
    texts = manifest_reports(man, ["train"])
    rows = []
    for consensus, k in (("top1", 1), ("medoid", 5), ("sentences", 5)):
        start = time.perf_counter()
        frame = choose_reports(space, texts, k, consensus)  # type: ignore[arg-type]
        seconds = time.perf_counter() - start
        rows.append({"path": f"retrieval {consensus} k={k}", "reports": len(frame),
                     "bank": len(space.bank_ids), "seconds": round(seconds, 3),
                     "reports_per_s": round(len(frame) / seconds, 1)})  # fmt: skip
    own = manifest_reports(man)
    refs = {s: [own[s]] for s in frame["study_id"] if s in own}
    gen = dict(zip(frame["study_id"], frame["generated"]))
    start = time.perf_counter()
    score_reports({s: gen[s] for s in refs}, refs, n_boot=1000, n_boot_language=200)
    rows.append({"path": "scoring one system (1,000 / 200 resamples, METEOR)",
                 "reports": len(refs), "seconds": round(time.perf_counter() - start, 1)})
    return rows


def bench_tiny_vlm(device: str = "cpu", n_test: int = 16, max_new_tokens: int = 64,
                   batches: tuple[int, ...] = (1, 4), lora_steps: int = 5) -> list[dict]:
    """Reports/s of the tiny VLM at each batch size, and the median time of a LoRA step."""
    sys.path.insert(0, str(ROOT / "tests" / "generation"))
    from tiny_vlm import build_tiny_manifest, build_tiny_vlm

    from cxrfuse.generation.lora import LoraSettings, add_lora, encode_examples, target_loss_sum
    from cxrfuse.generation.studies import select_studies
    from cxrfuse.generation.vlm import generate_reports, load_vlm

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_vlm(Path(tmp) / "tiny")
        man = read_manifest(build_tiny_manifest(Path(tmp) / "cxr", n_train=16, n_val=2,
                                                n_test=n_test))  # fmt: skip
        vlm = load_vlm(str(model), device=device)
        for batch in batches:
            start = time.perf_counter()
            frame = generate_reports(vlm, man, batch_size=batch, max_new_tokens=max_new_tokens,
                                     progress=False)  # fmt: skip
            seconds = time.perf_counter() - start
            rows.append({"path": f"tiny VLM generation, batch {batch}, {max_new_tokens} new tokens",
                         "reports": len(frame), "seconds": round(seconds, 2),
                         "reports_per_s": round(len(frame) / seconds, 1)})  # fmt: skip
        settings = LoraSettings(batch_size=4, device=device)
        add_lora(vlm, settings)
        studies = select_studies(man, "train", max_views=2).studies[:4]
        optimizer = torch.optim.AdamW([p for p in vlm.model.parameters() if p.requires_grad])
        times = []
        for _ in range(lora_steps):
            start = time.perf_counter()
            batch = encode_examples(vlm, studies, max_length=settings.max_length)
            loss = target_loss_sum(vlm.model, batch)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        rows.append({"path": f"tiny VLM LoRA step, batch 4 (median of {lora_steps})",
                     "seconds": round(sorted(times)[len(times) // 2], 3)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--manifest", default="demo-output/phantoms/manifest.parquet")
    parser.add_argument("--store", default="demo-output/store")
    parser.add_argument("--input-size", type=int, default=128)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = bench_retrieval(args.manifest, args.store, args.input_size) + bench_tiny_vlm()
    out = {"machine": f"{platform.processor() or platform.machine()}, "
                      f"{torch.get_num_threads()} torch threads, no GPU"
                      if not torch.cuda.is_available() else torch.cuda.get_device_name(0),
           "rows": rows}  # fmt: skip
    for row in rows:
        print(row)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
