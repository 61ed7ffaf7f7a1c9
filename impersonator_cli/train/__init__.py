"""Training of the Liquid Warping GAN on iPER-layout data (kept out of the inference path)."""
