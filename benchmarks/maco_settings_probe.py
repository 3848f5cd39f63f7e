"""Probe MACO settings on a few classes: make each class's picture on EfficientNet-Lite0
with the given settings and print whether Lite0, Lite1 and Lite2 rank it first, with its
power-spectrum slope (the classification of `visualize_transfer.py`, without its JSON).
Used to look for settings that rescue the classes whose MACO pictures do not transfer
(docs/performance.md, "MACO vs the Fourier method"), e.g.

    python benchmarks/maco_settings_probe.py --classes 243,559,949,853,541 --low 0.8 \\
        --steps 128 --crops 1 --degrees 5 --noise 0.05

``--objective margin``: the logit minus the mean of the other logits; ``logsoftmax``: the
log-probability; ``--gain G`` multiplies the shipped magnitude spectrum (contrast);
``--canvas S``: a canvas S times the model's input; ``--flip``: half the crops mirrored.
Besides top-1 it prints each classifier's log-probability of the true class (a less
noisy measure on a handful of classes).
Classes are made ``--chunk`` to a batch (one seed), so a picture differs in detail from
the one ``convlens visualize`` makes alone.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import torch.nn.functional as F  # noqa: E402
from visualize_transfer import CLASSIFIERS, classes_with_photos  # noqa: E402

from convlens.features.maco import Spectrum, _shipped, maco, power_spectrum_slope  # noqa: E402
from convlens.features.objectives import Objective, class_logit  # noqa: E402
from convlens.models import load_model  # noqa: E402
from convlens.render.features import to_uint8  # noqa: E402


def objective_of(kind: str, class_id: int) -> Objective:
    if kind == "logit":
        return class_logit(class_id)
    if kind == "margin":

        def margin(seen) -> torch.Tensor:
            out = seen.output
            others = (out.sum(1) - out[:, class_id]) / (out.shape[1] - 1)
            return out[:, class_id] - others

        return Objective(margin, (), f"class {class_id} - mean of the others")
    return Objective(
        lambda seen: torch.log_softmax(seen.output, 1)[:, class_id], (), f"log p({class_id})"
    )


def log_probs(loaded, images: torch.Tensor) -> torch.Tensor:
    """``loaded``'s log-probabilities ``Tensor[B, classes]`` of ``images`` ``[B, 3, H, W]``
    in [0, 1], resized as `visualize_transfer.top1` resizes them."""
    size = loaded.preprocess.height_width
    resized = F.interpolate(images, size=size, mode="bilinear", antialias=True)
    mean = torch.tensor(loaded.preprocess.mean).view(1, 3, 1, 1)
    std = torch.tensor(loaded.preprocess.std).view(1, 3, 1, 1)
    with torch.no_grad():
        return torch.log_softmax(loaded.module((resized - mean) / std), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--classes", default="all", help="ids, comma-separated, or all (20)")
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--crops", type=int, default=2)
    parser.add_argument("--lr", type=float, default=0.5)
    parser.add_argument("--low", type=float, default=0.5, help="smallest crop side")
    parser.add_argument("--noise", type=float, default=0.02)
    parser.add_argument("--high", type=float, default=1.0, help="largest crop side")
    parser.add_argument("--degrees", type=float, default=0.0)
    parser.add_argument("--canvas", type=float, default=1.0, help="canvas / model input side")
    parser.add_argument("--flip", action="store_true", help="mirror half the crops")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gain", type=float, default=1.0)
    parser.add_argument("--objective", choices=("logit", "margin", "logsoftmax"), default="logit")
    parser.add_argument("--chunk", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.classes == "all":
        classes = classes_with_photos(20)
    else:
        classes = [int(c) for c in args.classes.split(",")]
    maker = load_model("efficientnet_lite0")
    classifiers = {name: load_model(name) for name in CLASSIFIERS}
    shipped = _shipped()
    spectrum = Spectrum(shipped.magnitude * args.gain, shipped.source)
    start, hits, slopes, logp = time.perf_counter(), [0, 0, 0], [], [0.0, 0.0, 0.0]
    for first in range(0, len(classes), args.chunk):
        chunk = classes[first : first + args.chunk]
        result = maco(
            maker,
            [objective_of(args.objective, c) for c in chunk],
            steps=args.steps,
            crops=args.crops,
            lr=args.lr,
            crop_fraction=(args.low, args.high),
            noise=args.noise,
            degrees=args.degrees,
            canvas=args.canvas,
            flip=args.flip,
            spectrum=spectrum,
            seed=args.seed,
        )
        saved = torch.from_numpy(to_uint8(result.images)).permute(0, 3, 1, 2).float() / 255
        probs = {name: log_probs(model, saved) for name, model in classifiers.items()}
        answers = {name: p.argmax(1).tolist() for name, p in probs.items()}
        for b, class_id in enumerate(chunk):
            got = [answers[name][b] for name in CLASSIFIERS]
            mine = [float(probs[name][b, class_id]) for name in CLASSIFIERS]
            logp = [total + value for total, value in zip(logp, mine, strict=True)]
            hits = [h + (g == class_id) for h, g in zip(hits, got, strict=True)]
            slopes.append(float(power_spectrum_slope(saved[b : b + 1])[0]))
            named = ", ".join(maker.labels[g] for g in got)
            print(
                f"{class_id} {maker.labels[class_id]}: {named}; slope {slopes[-1]:.2f}; "
                f"log p(class) Lite1 {mine[1]:.2f} Lite2 {mine[2]:.2f}"
            )
    seconds = time.perf_counter() - start
    print(
        f"Lite0/1/2 top-1 {hits} of {len(classes)}, {seconds:.0f} s, "
        f"mean slope {sum(slopes) / len(slopes):.2f}, mean log p(class) Lite0/1/2 "
        + " ".join(f"{total / len(classes):.2f}" for total in logp),
        flush=True,
    )


if __name__ == "__main__":
    main()
