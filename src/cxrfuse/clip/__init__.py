"""CLIP-style contrastive image-report model (design 002): training, probing, zero-shot, retrieval."""
