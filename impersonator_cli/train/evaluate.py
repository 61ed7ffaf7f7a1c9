"""iPER self-imitation evaluation (spec §8): protocol file, runs, metrics, JSON report, table.

Protocol file (official `iPER_protocol.json`): {"val": {<vid>: {"source": [frame names],
"s_n": {"1": [...], "3": [...], ...}, "self_imitation": {"target": <vid>, "range": [a, b]},
"cross_imitation": {...}, "flag": [a, b], ...}}}. `range` is inclusive and indexes the target
video's frames in sorted order.

Runs follow the `iPER_ICCV` protocol used by the official evaluate.py: every video once per frame
of `s_n["3"]`, that frame as the single source; the model imitates the frames in `range` from the
data set's SMPLs (camera strategy 'copy'). Predictions are quantized as if saved to 8-bit files
(the official evaluator re-reads its saved JPEGs) and compared with the ground-truth frames, both
at `image_size`, in [-1, 1]: SSIM, PSNR (data range 2) and LPIPS when available.

The model is any `predict(source_image 3 x N x N, source_smpl 85, target_smpls T x 85) ->
T x 3 x N x N` in [-1, 1]; `GeneratorPredictor` builds one from the generator, body and flow.

JSON: PSNR of identical images is +inf, written as the string "inf" (JSON has no infinity);
a metric that was not computed is null, with the reason in "notes".
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch import Tensor

from impersonator_cli.train import metrics
from impersonator_cli.errors import InputError
from impersonator_cli.train.dataset import IMAGES_FOLDER, SMPLS_FOLDER, load_frame, load_video
from impersonator_cli.body.camera import drive_cameras
from impersonator_cli.devices import Runtime
from impersonator_cli.pipeline.compose import synthesize
from impersonator_cli.pipeline.rig import BodyModel
from impersonator_cli.pipeline.source import source_from_tensors
from impersonator_cli.pipeline.synth import LWBSynthesizer
from impersonator_cli.render.body_view import view_body
from impersonator_cli.defaults import BG_KS, FT_KS

Predict = Callable[[Tensor, Tensor, Tensor], Tensor]
SOURCES_KEY = "3"  # iPER_ICCV: each of the 3 source frames of s_n["3"] as a single source
_HINT = "Use the official iPER_protocol.json format: {\"val\": {vid: {\"source\": [...], ...}}}."


@dataclass(frozen=True)
class Imitation:
    target: str
    range: tuple[int, int]  # inclusive frame indices of the target video


@dataclass(frozen=True)
class ProtocolVideo:
    name: str
    sources: tuple[str, ...]
    s_n: dict[str, tuple[str, ...]]
    self_imitation: Imitation
    cross_imitation: Optional[Imitation] = None
    flag: Optional[tuple[int, int]] = None


def _imitation(info: dict, key: str, path: Path, vid: str) -> Optional[Imitation]:
    value = info.get(key)
    if value is None:
        return None
    try:
        a, b = (int(v) for v in value["range"])
        return Imitation(target=str(value["target"]), range=(a, b))
    except (KeyError, TypeError, ValueError):
        raise InputError(f"Video {vid}: '{key}' needs a target and a [start, end] range",
                         path=path, hint=_HINT) from None


def read_protocol(path: str | Path, split: str = "val") -> dict[str, ProtocolVideo]:
    """The official protocol JSON -> {vid: ProtocolVideo} in file order."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError("Cannot read the protocol file", path=path, hint=_HINT,
                         detail=str(exc)) from exc
    videos = data.get(split) if isinstance(data, dict) else None
    if not isinstance(videos, dict) or not videos:
        raise InputError(f"The protocol file has no '{split}' videos", path=path, hint=_HINT)
    out = {}
    for vid, info in videos.items():
        if not isinstance(info, dict) or "source" not in info or "self_imitation" not in info:
            raise InputError(f"Video {vid} lacks 'source' or 'self_imitation'", path=path, hint=_HINT)
        flag = info.get("flag")
        out[vid] = ProtocolVideo(
            name=vid, sources=tuple(info["source"]),
            s_n={k: tuple(v) for k, v in info.get("s_n", {}).items()},
            self_imitation=_imitation(info, "self_imitation", path, vid),
            cross_imitation=_imitation(info, "cross_imitation", path, vid),
            flag=tuple(int(v) for v in flag) if flag else None)
    return out


def self_imitation_runs(protocol: dict[str, ProtocolVideo]) -> list[tuple[str, str]]:
    """(vid, source frame name) of every iPER_ICCV run (s_n["3"], else the first source)."""
    runs = []
    for vid, info in protocol.items():
        names = info.s_n.get(SOURCES_KEY) or info.sources[:1]
        runs.extend((vid, name) for name in names)
    return runs


@dataclass
class RunResult:
    video: str
    source: str
    frames: int
    ssim: float
    psnr: float
    lpips: Optional[float] = None


@dataclass
class EvalReport:
    runs: list[RunResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Optional[float]]:
        """Frame-weighted means over all runs (PSNR is +inf if any frame is identical)."""
        total = sum(r.frames for r in self.runs) or 1
        mean = lambda k: sum(getattr(r, k) * r.frames for r in self.runs) / total  # noqa: E731
        have_lpips = self.runs and all(r.lpips is not None for r in self.runs)
        return {"ssim": mean("ssim"), "psnr": mean("psnr"),
                "lpips": mean("lpips") if have_lpips else None}

    def to_json(self) -> dict:
        j = metrics.json_number
        return {"protocol": "iPER_ICCV self-imitation",
                "summary": {k: j(v) for k, v in self.summary().items()},
                "runs": [{"video": r.video, "source": r.source, "frames": r.frames,
                          "ssim": j(r.ssim), "psnr": j(r.psnr), "lpips": j(r.lpips)}
                         for r in self.runs],
                "notes": self.notes}


def _frame_index(video, name: str, path_hint: Path) -> int:
    names = [p.name for p in video.frames]
    if name not in names:
        raise InputError(f"Video {video.name} has no frame '{name}'", path=path_hint,
                         hint="Check that the protocol matches the data set's frame names.")
    return names.index(name)


def evaluate_self_imitation(predict: Predict, protocol: dict[str, ProtocolVideo],
                            data_root: str | Path, image_size: int = 256,
                            lpips_fn: Optional[metrics.LpipsFn] = None,
                            images_folder: str = IMAGES_FOLDER, smpls_folder: str = SMPLS_FOLDER,
                            max_runs: Optional[int] = None,
                            progress: Optional[Callable[[int, int], None]] = None) -> EvalReport:
    """Run every self-imitation run of `protocol` through `predict` and measure it."""
    root = Path(data_root)
    report = EvalReport()
    if lpips_fn is None:
        report.notes.append("LPIPS not computed: the lpips package with its AlexNet weights is not "
                            "installed (install `lpips` and its weights to report it).")
    runs = self_imitation_runs(protocol)[:max_runs]
    cache: dict = {}
    for k, (vid, source_name) in enumerate(runs):
        info = protocol[vid]
        src_video = cache.setdefault(vid, load_video(root, vid, images_folder, smpls_folder))
        tgt_name = info.self_imitation.target
        tgt_video = cache.setdefault(tgt_name, load_video(root, tgt_name, images_folder,
                                                          smpls_folder))
        s = _frame_index(src_video, source_name, root / images_folder / vid)
        a, b = info.self_imitation.range
        b = min(b, len(tgt_video) - 1)
        src_img = torch.from_numpy(load_frame(src_video.frames[s], image_size))
        with torch.no_grad():
            pred = predict(src_img, torch.from_numpy(src_video.smpls[s]),
                           torch.from_numpy(tgt_video.smpls[a:b + 1])).cpu()
        gt = torch.from_numpy(np.stack([load_frame(p, image_size)
                                        for p in tgt_video.frames[a:b + 1]]))
        report.runs.append(measure(vid, source_name, metrics.quantize_saved(pred),
                                   metrics.quantize_saved(gt), lpips_fn))
        if progress is not None:
            progress(k + 1, len(runs))
    return report


def measure(vid: str, source: str, pred: Tensor, gt: Tensor,
            lpips_fn: Optional[metrics.LpipsFn] = None) -> RunResult:
    """Mean SSIM / PSNR (/ LPIPS) of T predicted frames against T ground-truth frames."""
    ssim = metrics.ssim(pred, gt).mean().item()
    psnr = metrics.psnr(pred, gt).mean().item()
    lp = lpips_fn(pred, gt).mean().item() if lpips_fn is not None else None
    return RunResult(video=vid, source=source, frames=int(pred.shape[0]), ssim=ssim, psnr=psnr,
                     lpips=lp)


def write_report(report: EvalReport, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.to_json(), indent=2) + "\n", encoding="utf-8")
    return path


def format_table(report: EvalReport) -> str:
    """Plain-text table: one row per run plus the mean."""
    def f(v: Optional[float], digits: int) -> str:
        if v is None:
            return "n/a"
        return "inf" if math.isinf(v) else f"{v:.{digits}f}"

    rows = [f"{'video':<12} {'source':<10} {'frames':>6} {'SSIM':>7} {'PSNR':>7} {'LPIPS':>7}"]
    for r in report.runs:
        rows.append(f"{r.video:<12} {r.source:<10} {r.frames:>6} {f(r.ssim, 4):>7} "
                    f"{f(r.psnr, 2):>7} {f(r.lpips, 4):>7}")
    s = report.summary()
    frames = sum(r.frames for r in report.runs)
    rows.append(f"{'mean':<12} {'':<10} {frames:>6} {f(s['ssim'], 4):>7} {f(s['psnr'], 2):>7} "
                f"{f(s['lpips'], 4):>7}")
    return "\n".join(rows + report.notes)


# ------------------------------------------------------------------------------- the model

Background = Callable[[Tensor, Tensor], Tensor]  # image 1 x 3 x N x N, body mask 1 x 1 -> 1 x 3


class GeneratorPredictor:
    """`Predict` from the generator, SMPL and mesh maps (imitation, camera 'copy', dataset SMPLs),
    through the jobs' own source preparation and per-frame core (`synthesize`): the same stage 2, fast
    kernels and precision handling as `imitate`.

    background(img, body_mask): the inpaintor (e.g. `lambda i, m: inpaintor(i, m).x`); None uses
    the generator's own BG stream on concat(img * bg_mask, bg_mask) (`--bg_model ORIGINAL`).
    precision: fp32 (default: comparable numbers), or fp16 / bf16 as the jobs run on CUDA.
    """

    def __init__(self, generator, smpl, maps, background: Optional[Background] = None,
                 bg_ks: int = BG_KS, ft_ks: int = FT_KS, batch_size: int = 8, device="cpu",
                 precision: str = "fp32"):
        self.generator, device = generator.eval(), torch.device(device)
        self.body = BodyModel(smpl=smpl, maps=maps, device=device)
        self.synth = LWBSynthesizer(self.generator, Runtime(device, precision))
        self.background, self.bg_ks, self.ft_ks, self.batch_size = background, bg_ks, ft_ks, batch_size

    def _background(self, img: Tensor, masks) -> tuple[Tensor, str]:
        if self.background is not None:
            return self.background(img, masks.body_mask), "background function"
        return self.generator.background(torch.cat([img * masks.bg_mask, masks.bg_mask], 1)), "generator BG stream"

    @torch.no_grad()
    def __call__(self, source_image: Tensor, source_smpl: Tensor, target_smpls: Tensor) -> Tensor:
        """3 x N x N, 85, T x 85 -> T x 3 x N x N in [-1, 1]."""
        body, dev, N = self.body, self.body.device, source_image.shape[-1]
        theta = source_smpl.to(dev).float()[None]
        src = source_from_tensors(body, source_image.to(dev).float()[None], theta, self._background,
                                  bg_ks=self.bg_ks, ft_ks=self.ft_ks)
        feats = self.synth.encode(src.image, src.cond, src.masks.ft_mask)
        tgt = target_smpls.to(dev).float()
        cams = drive_cameras(theta[0, :3], tgt[:, :3], "copy")
        out = []
        for i in range(0, len(tgt), self.batch_size):
            c, p = cams[i:i + self.batch_size], tgt[i:i + self.batch_size, 3:75]
            view = view_body(body.smpl, c, p, src.shape, N, body.rasterizer)
            out.append(synthesize(body, self.synth, [src], [feats], view, src.background))
        return torch.cat(out)


def load_predictor(generator: str | Path, weights_dir=None, device="cpu",
                   background: str = "inpaintor", batch_size: int = 8,
                   bg_ks: int = BG_KS, ft_ks: int = FT_KS) -> GeneratorPredictor:
    """A `GeneratorPredictor` from a generator (registry name, converted file or an official /
    trained `net_epoch_<e>_id_G.pth`). background: 'inpaintor' (DeepFillv2, the official
    default) or 'generator' (the generator's own BG stream)."""
    from impersonator_cli.pipeline.rig import load_body_model
    from impersonator_cli.gan.load import load_generator, load_inpaintor

    body = load_body_model(weights_dir, device)
    G = load_generator(generator, weights_dir, device, bg_stream=background == "generator")
    bg = None
    if background == "inpaintor":
        inpaintor = load_inpaintor("inpaintor_deepfillv2", weights_dir, device)
        bg = lambda img, mask: inpaintor(img, mask)[0]  # noqa: E731
    return GeneratorPredictor(G, body.smpl, body.maps, bg, bg_ks, ft_ks, batch_size, device)


def evaluate(protocol_path: str | Path, data_root: str | Path, generator: str | Path,
             output: str | Path, weights_dir=None, device="cpu", image_size: int = 256,
             background: str = "inpaintor", max_runs: Optional[int] = None,
             progress=None) -> EvalReport:
    """The whole job behind `impersonate evaluate`: protocol -> runs -> report JSON at `output`."""
    protocol = read_protocol(protocol_path)
    predictor = load_predictor(generator, weights_dir, device, background)
    report = evaluate_self_imitation(predictor, protocol, data_root, image_size,
                                     metrics.load_lpips(device=device), max_runs=max_runs,
                                     progress=progress)
    write_report(report, output)
    return report
