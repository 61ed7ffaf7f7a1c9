"""Rasterizer backend selection, and agreement with the official neural_renderer where it exists."""

from __future__ import annotations

import pytest
import torch

from impersonator_cli.errors import EnvironmentProblem, UsageError
from impersonator_cli.render.backends import nmr_available, rasterize_nmr, select_rasterizer
from support.render_bench import synthetic_body
from impersonator_cli.render.rasterize import face_vertices, rasterize


def test_selection_rules():
    cpu = torch.device("cpu")
    assert select_rasterizer("torch", cpu) is rasterize
    assert select_rasterizer("auto", cpu) is rasterize  # nmr is CUDA-only
    with pytest.raises(UsageError):
        select_rasterizer("opengl", cpu)
    if not nmr_available():
        with pytest.raises(EnvironmentProblem, match="neural_renderer"):
            select_rasterizer("nmr", cpu)


@pytest.mark.gpu
@pytest.mark.skipif(not nmr_available(), reason="needs the official patched neural_renderer")
def test_nmr_agrees_with_the_torch_rasterizer():
    verts, faces = synthetic_body()
    f2verts = face_vertices(verts[None].float().cuda(), faces.cuda())
    ours, theirs = rasterize(f2verts, 256), rasterize_nmr(f2verts, 256)
    same = ours.face_index == theirs.face_index
    assert same.float().mean() >= 0.999
    fg = same & (ours.face_index >= 0)
    assert torch.allclose(ours.weights[fg], theirs.weights[fg], atol=1e-5)
