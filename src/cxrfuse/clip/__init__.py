"""CLIP-style contrastive image-report model (seed 002): training, probing, zero-shot, retrieval."""
