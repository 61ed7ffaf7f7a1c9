"""The weights registry: data only, one row per artefact of the official release (and VGG-19).

An unknown name is refused with the list of valid ones. Where the files are found and how they are
verified is `store.py`; how they are converted on import is `importer.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from impersonator_cli.errors import WeightsError

DEFAULT_GENERATOR = "generator_fashion_place"

INFERENCE = ("imitate", "swap", "novelview")
TUNING = ("personalize", "train")

SMPL_LICENCE = (
    "SMPL model data: licence-gated. Register and accept the licence at https://smpl.is.tue.mpg.de; "
    "impersonate never bundles or downloads it."
)
RELEASE_LICENCE = "Official Impersonator release (svip-lab/impersonator): research use under its licence."
HMR_LICENCE = RELEASE_LICENCE + " Its smpl.* tensors are SMPL model data (SMPL licence applies)."
VGG_LICENCE = "torchvision ImageNet weights (BSD-3-Clause code; ImageNet terms: research use)."
VGG_URL = "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth"


@dataclass(frozen=True)
class Artefact:
    """One file of the official release (or VGG-19) and where it lives once imported.

    release:       "pretrains" | "checkpoints" | "torchvision": the archive it ships in
    official_path: its path inside the release (top folder of the zips not fixed)
    match:         the tail path used to find it in a zip or folder (any nesting depth)
    local_name:    file name in the weights folder (networks: `.safetensors` + a `.json` config beside)
    section:       key of impersonator_cli/weights/official_state_dicts.json checked on import (None: asset)
    """

    name: str
    release: str
    official_path: str
    match: str
    local_name: str
    role: str
    required_for: tuple[str, ...] = ()
    used_by: tuple[str, ...] = ()
    section: str | None = None
    licence: str = RELEASE_LICENCE
    licence_gated: bool = False
    config: dict = field(default_factory=dict)

    @property
    def is_network(self) -> bool:
        return self.section is not None

    @property
    def required(self) -> bool:
        return bool(self.required_for)

    @property
    def local_files(self) -> tuple[str, ...]:
        """Every file this artefact puts in the weights folder (network: weights + JSON config)."""
        if self.is_network:
            return (self.local_name, self.local_name.rsplit(".", 1)[0] + ".json")
        return (self.local_name,)

    def how_to_get(self) -> str:
        if self.release == "torchvision":
            return f"Fetch {VGG_URL} yourself, then run `impersonate weights import vgg19-dcbb9e9d.pth`."
        where = f"{self.match} in the official {self.release}.zip: `impersonate weights import {self.release}.zip`."
        return f"{where} SMPL licence: https://smpl.is.tue.mpg.de." if self.licence_gated else where


def _gen(name: str, folder: str, role: str, required: bool) -> Artefact:
    return Artefact(
        name=name, release="checkpoints", official_path=f"checkpoints/{folder}/net_epoch_30_id_G.pth",
        match=f"{folder}/net_epoch_30_id_G.pth", local_name=f"{name}.safetensors", role=role,
        required_for=INFERENCE if required else (), used_by=INFERENCE, section="generator",
        config={"arch": "ImpersonatorGenerator", "bg_dim": 4, "src_dim": 6, "tsf_dim": 6, "conv_dim": 64,
                "repeat_num": 6, "cond": "uv_seg"},
    )


def _asset(name: str, file: str, role: str, required: bool = True, **kw: Any) -> Artefact:
    return Artefact(
        name=name, release="pretrains", official_path=f"pretrains/{file}", match=file, local_name=file,
        role=role, required_for=INFERENCE if required else (), used_by=INFERENCE, **kw,
    )


REGISTRY: tuple[Artefact, ...] = (
    Artefact(
        name="hmr", release="pretrains", official_path="pretrains/hmr_tf2pt.pth", match="hmr_tf2pt.pth",
        local_name="hmr.safetensors", role="body mesh recovery: HMR ResNet-50 + regressor + SMPL arrays",
        required_for=INFERENCE, used_by=INFERENCE + TUNING, section="hmr", licence=HMR_LICENCE,
        config={"arch": "HumanModelRecovery", "image_size": 224, "iterations": 3},
    ),
    _asset("smpl_model", "smpl_model.pkl", "neutral SMPL pickle + COCO-plus regressor (faces, kinematic tree)",
           required=False, licence=SMPL_LICENCE, licence_gated=True),
    _asset("smpl_faces", "smpl_faces.npy", "SMPL triangle list (13776 x 3) for the renderer"),
    _asset("uv_mapper", "mapper.txt", "UV layout (OBJ-like v/vt/f) for the condition maps"),
    _asset("part_info", "smpl_part_info.json", "10 body parts (vertex and face ids) for swap"),
    _asset("front_facial", "front_facial.json", "front face region (face ids) for front warping"),
    _asset("head", "head.json", "whole head region (face ids)"),
    _asset("front_face_1", "front_face_1.json", "alternative front face list (unused by the released pipelines)",
           required=False),
    Artefact(
        name="sphereface", release="pretrains", official_path="pretrains/sphere20a_20171020.pth",
        match="sphere20a_20171020.pth", local_name="sphereface.safetensors",
        role="SphereFace-20a face identity loss (personalization, training)", used_by=TUNING,
        section="face_sphere20a", config={"arch": "Sphere20a", "input_size": [112, 96]},
    ),
    _gen("generator_imper", "lwb_imper", "LWB generator trained on iPER", False),
    _gen("generator_imper_place", "lwb_imper_place", "LWB generator, iPER + Places365 backgrounds", False),
    _gen(DEFAULT_GENERATOR, "lwb_imper_fashion_place",
         "LWB generator, iPER + DeepFashion + Places (the default)", True),
    Artefact(
        name="inpaintor_deepfillv2", release="checkpoints",
        official_path="checkpoints/deepfillv2/net_epoch_50_id_G.pth",
        match="deepfillv2/net_epoch_50_id_G.pth", local_name="inpaintor_deepfillv2.safetensors",
        role="DeepFillv2 background inpaintor", required_for=INFERENCE, used_by=INFERENCE,
        section="bg_inpaintor_deepfillv2", config={"arch": "InpaintSANet", "c_dim": 4},
    ),
    Artefact(
        name="vgg19", release="torchvision", official_path="vgg19-dcbb9e9d.pth", match="vgg19-dcbb9e9d.pth",
        local_name="vgg19.safetensors", role="VGG-19 perceptual loss (personalization, training)",
        used_by=TUNING, section="vgg19", licence=VGG_LICENCE,
        config={"arch": "torchvision.vgg19", "sha256_prefix": "dcbb9e9d"},
    ),
)
NAMES: tuple[str, ...] = tuple(a.name for a in REGISTRY)


def get(name: str) -> Artefact:
    """The registry row called `name`; an unknown name lists the valid ones."""
    for row in REGISTRY:
        if row.name == name:
            return row
    raise WeightsError(f"Unknown weights name '{name}'", hint=f"Valid names: {', '.join(NAMES)}.")
