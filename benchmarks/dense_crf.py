"""Dense CRF speed and agreement beside pydensecrf2, on the CPU, in one run.

One 360x480 image with 11 labels (CamVid validation images when the data set is
present, else synthetic scenes), unaries from noisy one-hot label maps, the
standard parameters (Gaussian sxy 3 / compat 3, bilateral sxy 80 / srgb 13 /
compat 10), 5 and 10 mean-field iterations. Per image, setup included:

- ``pydensecrf2``: DenseCRF2D (single-threaded C++), the reference.
- ``structseg``: :func:`structseg.crf.dense_crf` as used over a data set (the spatial
  lattice, which depends only on the image size, is cached after the first image).
- ``structseg cold``: the same with the cache cleared before every image.
- ``structseg conv-spatial``: a variant measured for the design choice: the spatial
  kernel as an exact separable Gaussian convolution instead of a lattice.

``structseg`` is timed at 1 torch thread (pydensecrf2 uses one) and at the
default count, the variants at 1 thread, all interleaved with the reference.
Wall and process-CPU times are both reported (CPU time is steadier when other
jobs share the machine). Agreement is the fraction of pixels whose label equals
pydensecrf2's (worst image) and the largest probability difference. A filter-primitive table compares
splatting with ``embedding_bag`` against ``index_add_``. Writes
benchmarks/results/dense_crf.json and dense_crf.png.

    python benchmarks/dense_crf.py [--repeats 7] [--images 3] [--threads 1,2]
"""
from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from _harness import CAMVID, RESULTS, parser, print_table, write_json
from structseg.crf import dense_crf
from structseg.crf.kernels import NormalizedKernel, bilateral_features, clear_cache
from structseg.crf.meanfield import mean_field_scores
from structseg.crf.permutohedral import build_lattice

K = 11
H, W = 360, 480
PARAMS = dict(sxy_gaussian=3.0, compat_gaussian=3.0, sxy_bilateral=80.0, srgb=13.0, compat_bilateral=10.0)


def load_images(count: int) -> tuple[list[np.ndarray], list[np.ndarray], str]:
    """(H, W, 3) uint8 images and (H, W) label maps: CamVid val when present, else synthetic."""
    if (CAMVID / "val.txt").is_file():
        from PIL import Image

        pairs = [line.split() for line in (CAMVID / "val.txt").read_text().splitlines() if line.strip()]
        images, labels = [], []
        for image_path, label_path in pairs[:: max(1, len(pairs) // count)][:count]:
            images.append(np.array(Image.open(CAMVID / "val" / Path(image_path).name).convert("RGB")))
            label = np.asarray(Image.open(CAMVID / "valannot" / Path(label_path).name)).astype(np.int64)
            labels.append(np.where(label < K, label, 0))
        return images, labels, "camvid val"
    rng = np.random.default_rng(0)
    images, labels = [], []
    for _ in range(count):
        label = np.zeros((H, W), np.int64)
        for k in range(1, K):
            y, x = rng.integers(0, H - 60), rng.integers(0, W - 80)
            label[y : y + rng.integers(30, 150), x : x + rng.integers(40, 200)] = k
        palette = rng.integers(0, 256, (K, 3))
        image = np.clip(palette[label] + rng.normal(0, 15, (H, W, 3)), 0, 255).astype(np.uint8)
        images.append(image)
        labels.append(label)
    return images, labels, "synthetic"


def noisy_logits(label: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    onehot = np.eye(K, dtype=np.float32)[label]
    return np.ascontiguousarray((2.0 * onehot + rng.normal(0, 1.0, onehot.shape)).transpose(2, 0, 1), dtype=np.float32)


def run_pydensecrf(image: np.ndarray, logits: np.ndarray, iterations: int) -> np.ndarray:
    import pydensecrf.densecrf as dcrf

    energy = -(logits - np.log(np.exp(logits).sum(0, keepdims=True)))
    crf = dcrf.DenseCRF2D(W, H, K)
    crf.setUnaryEnergy(np.ascontiguousarray(energy.reshape(K, -1), dtype=np.float32))
    crf.addPairwiseGaussian(sxy=PARAMS["sxy_gaussian"], compat=PARAMS["compat_gaussian"])
    crf.addPairwiseBilateral(sxy=PARAMS["sxy_bilateral"], srgb=PARAMS["srgb"], rgbim=image,
                             compat=PARAMS["compat_bilateral"])
    return np.asarray(crf.inference(iterations)).reshape(K, H, W)


def run_structseg(image: torch.Tensor, logits: torch.Tensor, iterations: int) -> np.ndarray:
    return dense_crf(logits, image, iterations=iterations, **PARAMS)[0].numpy()


def run_structseg_cold(image: torch.Tensor, logits: torch.Tensor, iterations: int) -> np.ndarray:
    clear_cache()
    return run_structseg(image, logits, iterations)


class ConvSpatialKernel:
    """Exact separable Gaussian (conv) spatial kernel, symmetrically normalized (the design alternative)."""

    def __init__(self, sxy: float) -> None:
        radius = int(np.ceil(3 * sxy))
        taps = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=torch.float32) / sxy) ** 2)
        self.taps, self.radius = taps, radius
        ones = torch.ones(1, 1, H, W)
        self.norm = self._blur(ones).rsqrt().reshape(-1, 1)
        self.num_points = H * W

    def _blur(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        x = F.conv2d(x, self.taps.view(1, 1, 1, -1).expand(c, 1, 1, -1), padding=(0, self.radius), groups=c)
        return F.conv2d(x, self.taps.view(1, 1, -1, 1).expand(c, 1, -1, 1), padding=(self.radius, 0), groups=c)

    def __call__(self, values: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        c = values.shape[1]
        grid = (values * self.norm).t().reshape(1, c, H, W)
        return self._blur(grid).reshape(c, -1).t() * (self.norm * scale)


class ConvPlusLattice:
    """Kernel operator: conv spatial kernel + lattice bilateral kernel."""

    num_kernels = 2

    def __init__(self, spatial: ConvSpatialKernel, bilateral: NormalizedKernel) -> None:
        self.spatial, self.bilateral = spatial, bilateral

    def apply(self, values: torch.Tensor, weights) -> torch.Tensor:
        return self.spatial(values, weights[0]) + self.bilateral(values, weights[1])

    def apply_each(self, values: torch.Tensor) -> list[torch.Tensor]:
        return [self.spatial(values), self.bilateral(values)]


_CONV = {}


def run_conv_spatial(image: torch.Tensor, logits: torch.Tensor, iterations: int) -> np.ndarray:
    spatial = _CONV.setdefault("kernel", ConvSpatialKernel(PARAMS["sxy_gaussian"]))
    with torch.no_grad():
        bilateral = NormalizedKernel(build_lattice(bilateral_features(image.float(), PARAMS["sxy_bilateral"],
                                                                      PARAMS["srgb"])))
        prior = logits[0].reshape(K, -1)
        compat = [PARAMS["compat_gaussian"], PARAMS["compat_bilateral"]]
        scores = mean_field_scores(prior, ConvPlusLattice(spatial, bilateral), compat, iterations)
    return torch.softmax(scores, 0).reshape(K, H, W).numpy()


def primitive_table(image: torch.Tensor, repeats: int) -> list[dict]:
    """One splat of (P, K) values on the bilateral lattice: embedding_bag against index_add_."""
    lattice = build_lattice(bilateral_features(image.float(), PARAMS["sxy_bilateral"], PARAMS["srgb"]))
    values = torch.rand(H * W, K)
    flat_vertex = lattice.slice_index.reshape(-1)
    flat_weight = lattice.slice_weight.reshape(-1, 1)

    def index_add():
        src = values.repeat_interleave(lattice.slice_index.shape[1], 0) * flat_weight
        return torch.zeros(lattice.num_vertices + 1, K).index_add_(0, flat_vertex, src)

    def embedding_bag():
        return lattice.splat(values)

    reference = index_add()
    assert float((reference - embedding_bag()).abs().max()) <= 1e-5 * float(reference.abs().max())
    rows = []
    for name, fn in (("splat: embedding_bag (2 stages)", embedding_bag), ("splat: index_add_", index_add)):
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        rows.append({"primitive": name, "median_ms": 1e3 * statistics.median(times), "min_ms": 1e3 * min(times)})
    return rows


def main() -> None:
    cli = parser(__doc__)
    cli.add_argument("--repeats", type=int, default=7, help="timed runs per method and setting")
    cli.add_argument("--images", type=int, default=3, help="distinct images cycled through")
    cli.add_argument("--threads", default=None, help="torch thread counts for the main method, e.g. 1,2 "
                     "(default: 1 and the default count); the variants run at 1 thread")
    args = cli.parse_args()

    images, labels, source = load_images(args.images)
    inputs = [
        (img, noisy_logits(lab, i), torch.from_numpy(img).permute(2, 0, 1).unsqueeze(0).contiguous(),
         torch.from_numpy(noisy_logits(lab, i)).unsqueeze(0))
        for i, (img, lab) in enumerate(zip(images, labels))
    ]
    default_threads = torch.get_num_threads()
    load_before = os.getloadavg()
    methods = {
        "structseg": run_structseg,
        "structseg cold": run_structseg_cold,
        "structseg conv-spatial": run_conv_spatial,
    }
    thread_counts = sorted({1, default_threads}) if args.threads is None else [int(t) for t in args.threads.split(",")]
    settings = [("structseg", t) for t in thread_counts] + [("structseg cold", 1), ("structseg conv-spatial", 1)]
    rows = []
    outputs = {}
    for iterations in (5, 10):
        ref_times, ref_cpu = [], []
        times = {key: [] for key in settings}
        cpu = {key: [] for key in settings}
        agreement = {key: [] for key in times}
        max_diff = {key: [] for key in times}
        for rep in tqdm(range(args.repeats), desc=f"{iterations} iterations"):
            np_img, np_logits, img, logits = inputs[rep % len(inputs)]
            start, start_cpu = time.perf_counter(), time.process_time()
            reference = run_pydensecrf(np_img, np_logits, iterations)
            ref_times.append(time.perf_counter() - start)
            ref_cpu.append(time.process_time() - start_cpu)
            for name, threads in times:
                torch.set_num_threads(threads)
                start, start_cpu = time.perf_counter(), time.process_time()
                ours = methods[name](img, logits, iterations)
                times[(name, threads)].append(time.perf_counter() - start)
                cpu[(name, threads)].append(time.process_time() - start_cpu)
                agreement[(name, threads)].append(float((ours.argmax(0) == reference.argmax(0)).mean()))
                max_diff[(name, threads)].append(float(np.abs(ours - reference).max()))
                if rep == 0 and name == "structseg" and threads == 1:
                    outputs[iterations] = (np_img, np_logits, ours, reference)
            torch.set_num_threads(default_threads)
        ref_median, ref_cpu_median = statistics.median(ref_times), statistics.median(ref_cpu)
        rows.append({"method": "pydensecrf2", "threads": 1, "iterations": iterations, "median_s": ref_median,
                     "min_s": min(ref_times), "cpu_median_s": ref_cpu_median, "speedup_vs_pydensecrf2": 1.0,
                     "cpu_speedup_vs_pydensecrf2": 1.0, "label_agreement": 1.0, "max_prob_diff": 0.0})
        for (name, threads), ts in times.items():
            cpu_median = statistics.median(cpu[(name, threads)])
            rows.append({
                "method": name, "threads": threads, "iterations": iterations,
                "median_s": statistics.median(ts), "min_s": min(ts), "cpu_median_s": cpu_median,
                "speedup_vs_pydensecrf2": ref_median / statistics.median(ts),
                "cpu_speedup_vs_pydensecrf2": ref_cpu_median / cpu_median,
                "label_agreement": min(agreement[(name, threads)]),
                "max_prob_diff": max(max_diff[(name, threads)]),
            })
    torch.set_num_threads(1)
    primitives = primitive_table(inputs[0][2], args.repeats)
    torch.set_num_threads(default_threads)
    load_after = os.getloadavg()

    print(f"\nDense CRF, one {H}x{W} image, {K} labels, setup included ({source}, {args.repeats} runs; "
          f"load average {load_before[0]:.1f} -> {load_after[0]:.1f} on {os.cpu_count()} CPUs)")
    print_table(rows, [("method", "{method}"), ("thr", "{threads}"), ("iters", "{iterations}"),
                       ("median s", "{median_s:.3f}"), ("min s", "{min_s:.3f}"),
                       ("speedup", "{speedup_vs_pydensecrf2:.2f}x"), ("cpu s", "{cpu_median_s:.3f}"),
                       ("cpu spdup", "{cpu_speedup_vs_pydensecrf2:.2f}x"), ("agree", "{label_agreement:.3%}"),
                       ("max |dp|", "{max_prob_diff:.2e}")])
    print("\nSplat primitive (bilateral lattice, 1 thread)")
    for p in primitives:
        print(f"  {p['primitive']:<34} median {p['median_ms']:7.2f} ms   min {p['min_ms']:7.2f} ms")

    report = {
        "image_size": [H, W], "labels": K, "params": PARAMS, "source": source, "repeats": args.repeats,
        "torch": torch.__version__, "cpus": os.cpu_count(), "default_threads": default_threads,
        "load_average_before": load_before, "load_average_after": load_after,
        "rows": rows, "primitives": primitives,
        "notes": "speedup = pydensecrf2 median wall time / method median in the same run; cpu_* use process CPU "
                 "time (all threads), steadier on a shared machine; label_agreement is the worst image",
    }
    path = write_json(RESULTS / "dense_crf.json", report)
    save_figure(outputs, RESULTS / "dense_crf.png")
    print(f"\nwrote {path} and {RESULTS / 'dense_crf.png'}")


def save_figure(outputs: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(outputs), 4, figsize=(16, 3.3 * len(outputs)), squeeze=False)
    for row, (iterations, (image, logits, ours, reference)) in enumerate(sorted(outputs.items())):
        panels = [
            (image, "image"),
            (logits.argmax(0), "noisy unary argmax"),
            (ours.argmax(0), f"structseg, {iterations} it."),
            (reference.argmax(0), f"pydensecrf2, {iterations} it. "
                                  f"(agree {100 * (ours.argmax(0) == reference.argmax(0)).mean():.2f}%)"),
        ]
        for ax, (panel, title) in zip(axes[row], panels):
            ax.imshow(panel, cmap=None if panel.ndim == 3 else "tab20", vmin=None if panel.ndim == 3 else 0,
                      vmax=None if panel.ndim == 3 else 19, interpolation="nearest")
            ax.set_title(title, fontsize=9)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


if __name__ == "__main__":
    main()
