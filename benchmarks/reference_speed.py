"""DeepLIFT through `convlens.explain` against Captum's ``DeepLift`` on the same model.

Run: ``python benchmarks/reference_speed.py`` (``--help`` for options; needs ``captum``,
in the ``dev`` extra). A batch of 8 sample photos at 224 x 224 on CPU, the zero baseline,
each image's top-1 class. Captum's DeepLIFT supports ReLU but not ReLU6 (it would give
ReLU6 its plain gradient), and it refuses a ReLU module called twice (torchvision's
ResNet blocks: "ensure that module is being used only once"), so the comparison runs on a
torchvision VGG-11 with seeded random weights (no download), which it supports. Each pair
runs in turns (`speed.in_turns`, medians), and ours is also set against one forward plus
input gradient, in the same run; then ours alone on ResNet-18 and on the default model
(EfficientNet-Lite0, ReLU6) against forward plus input gradient. Prints the load average:
a machine shared with other jobs slows both sides.
"""

from __future__ import annotations

import argparse
import os

import speed
import torch
import torchvision
from speed import CLOCKS, in_turns, plain_baselines

import convlens
from convlens.data.preprocess import Preprocess


def random_model(build) -> convlens.LoadedModel:
    torch.manual_seed(0)
    return convlens.load_model(build(weights=None).eval(), preprocess=Preprocess())


def captum_deeplift(module: torch.nn.Module, images: torch.Tensor):
    from captum.attr import DeepLift

    method = DeepLift(module)
    with torch.no_grad():
        classes = module(images).argmax(1)

    def run():
        method.attribute(images.clone(), baselines=torch.zeros_like(images), target=classes)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall")
    args = parser.parse_args()
    speed.clock = CLOCKS[args.clock]
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"load average before: {os.getloadavg()}, threads {torch.get_num_threads()}")
    torch.manual_seed(0)
    vgg = random_model(torchvision.models.vgg11)
    names = (convlens.sample_names() * args.batch)[: args.batch]
    images = convlens.load_images(names, preprocess=vgg.preprocess).tensor

    def ours(model):
        return lambda: convlens.explain(model, images, "deeplift")

    ours_s, captum_s = in_turns(ours(vgg), captum_deeplift(vgg.module, images), args.repeats)
    print(
        f"vgg11: convlens deeplift {ours_s:.3f} s, captum DeepLift {captum_s:.3f} s, "
        f"ratio {ours_s / captum_s:.2f}"
    )
    for name, model in [
        ("vgg11", vgg),
        ("resnet18", random_model(torchvision.models.resnet18)),
        ("efficientnet_lite0", convlens.load_model()),
    ]:
        _, gradient = plain_baselines(model.module.eval(), images)
        ours_s, gradient_s = in_turns(ours(model), gradient, args.repeats)
        print(
            f"{name}: convlens deeplift {ours_s:.3f} s, forward + input gradient "
            f"{gradient_s:.3f} s, ratio {ours_s / gradient_s:.2f}"
        )
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
