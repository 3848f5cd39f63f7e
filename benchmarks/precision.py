"""How close half precision and channels_last maps are to float32, per method.

Run: ``python benchmarks/precision.py --model test-net`` (the 3-class conv net of
tests/conftest.py, 2 random images of 32x32; seconds) or ``--model lite0`` (the embedded
EfficientNet-Lite0 on the ``cat`` sample at 224 px; tens of minutes on a 2-core CPU, most
of it bfloat16). ``--methods a,b`` limits the methods. For each method the float32 maps of
``convlens.explain`` are the reference; each variant (channels_last input, channels_last
model and input, bfloat16 model, float16 model; float64 on the test net) is run through the
same call and reported as ``r`` (the smallest per-map Pearson correlation with the
reference) and ``max`` (the largest absolute difference over the reference map's largest
magnitude). The figures are in docs/methods.md ("Devices and precision").
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
import warnings
from pathlib import Path

import torch

import convlens
from convlens.attribution.methods import list_methods

TEST_NET_OPTIONS = {
    "occlusion": {"patch": 8, "stride": 4},
    "smoothgrad": {"n_samples": 8},
    "integrated_gradients": {"n_steps": 16},
}
LITE0_OPTIONS = {
    "occlusion": {"patch": 56, "stride": 56},
    "smoothgrad": {"n_samples": 4},
    "integrated_gradients": {"n_steps": 16},
}


def _test_net():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.helpers.networks import small_convnet

    torch.manual_seed(0)
    images = torch.randn(2, 3, 32, 32)
    return small_convnet().eval(), images, [0, 1], TEST_NET_OPTIONS


def _lite0():
    loaded = convlens.load_model()
    images = convlens.load_images(["cat"], preprocess=loaded.preprocess).tensor
    return loaded.module, images, None, LITE0_OPTIONS


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-map Pearson correlation of ``Tensor[N, H, W]`` pairs, ``Tensor[N]``."""
    a, b = a.flatten(1).double(), b.flatten(1).double()
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-300)


def relative_max(a: torch.Tensor, b: torch.Tensor) -> float:
    """``max |a - b| / max |b|`` over all maps."""
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def variants(model, images, with_float64: bool) -> dict:
    last = images.contiguous(memory_format=torch.channels_last)
    found = {
        "channels_last input": (model, last),
        "channels_last model+input": (
            copy.deepcopy(model).to(memory_format=torch.channels_last),
            last,
        ),
        "bfloat16": (copy.deepcopy(model).to(torch.bfloat16), images),
        "float16": (copy.deepcopy(model).to(torch.float16), images),
    }
    if with_float64:
        found["float64"] = (copy.deepcopy(model).to(torch.float64), images.double())
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=("test-net", "lite0"), default="test-net")
    parser.add_argument("--methods", default="all", help="comma separated, or all")
    args = parser.parse_args()
    warnings.simplefilter("ignore", RuntimeWarning)
    model, images, target, options = _test_net() if args.model == "test-net" else _lite0()
    names = (
        [info.name for info in list_methods()]
        if args.methods == "all"
        else [name.strip() for name in args.methods.split(",")]
    )
    cases = variants(model, images, with_float64=args.model == "test-net")
    for name in names:
        start = time.perf_counter()
        kwargs = {"target": target, **options.get(name, {})}
        reference = convlens.explain(model, images, name, **kwargs).maps
        cells = []
        for label, (variant, inputs) in cases.items():
            maps = convlens.explain(variant, inputs, name, **kwargs).maps
            r = float(pearson(maps, reference).min())
            cells.append(f"{label}: r={r:.4f} max={relative_max(maps, reference):.1e}")
        seconds = time.perf_counter() - start
        print(f"{name:22s} " + " | ".join(cells) + f" ({seconds:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
