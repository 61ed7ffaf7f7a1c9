"""Stage 2 of the method (first half): rasterizing the SMPL mesh into face-index / weight maps and condition maps."""
