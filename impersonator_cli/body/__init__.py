"""Stage 1 of the method: body mesh recovery (HMR + SMPL), cameras, tracking, the mannequin."""
