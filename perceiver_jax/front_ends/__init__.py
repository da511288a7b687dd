"""Front ends: raw inputs of one modality -> tokens [B, M, C] (position features, permutation)."""
