"""The training loop's checkpoints, segmentation training, CAM pseudo-masks, and the
`convlens train segmentation` / `convlens explain --region` commands."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from convlens.cli import main
from convlens.errors import DataError
from convlens.train.loop import train_epochs
from convlens.train.segmentation import (
    colour_affinity_refine,
    keep_largest_components,
    train_segmentation,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny_run(tmp_path, epochs: int, resume: bool, stop_after: int | None = None):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 1))
    inputs = torch.randn(12, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    truth = inputs[:, 0].gt(0).long() + inputs[:, 1].gt(0).long()

    def stop(epoch, loss, accuracy):
        if stop_after is not None and epoch + 1 == stop_after:
            raise KeyboardInterrupt

    try:
        log = train_segmentation(
            model,
            inputs,
            truth,
            epochs=epochs,
            batch_size=5,
            seed=3,
            checkpoint=tmp_path / "ck.pt",
            resume=resume,
            on_epoch=stop,
        )
    except KeyboardInterrupt:
        return model, None
    return model, log


def test_an_interrupted_run_resumed_ends_with_the_uninterrupted_weights(tmp_path):
    straight, log = _tiny_run(tmp_path / "a", epochs=3, resume=False)
    _tiny_run(tmp_path / "b", epochs=3, resume=False, stop_after=1)  # "crashes" after epoch 1
    resumed, resumed_log = _tiny_run(tmp_path / "b", epochs=3, resume=True)
    for (name, a), b in zip(
        straight.state_dict().items(), resumed.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    assert resumed_log.losses == log.losses and len(log.losses) == 3
    assert not straight.training


def test_resuming_with_other_settings_is_refused(tmp_path):
    _tiny_run(tmp_path, epochs=2, resume=False)
    with pytest.raises(DataError, match="resume with the same settings"):
        _tiny_run(tmp_path, epochs=4, resume=True)


def test_hits_count_pixels_and_ignore_the_ignore_label():
    model = nn.Conv2d(3, 2, 1)
    truth = torch.full((4, 5, 5), 255)
    truth[:, 0, 0] = 1
    log = train_epochs(
        model,
        torch.randn(4, 3, 5, 5),
        truth,
        epochs=1,
        loss=lambda out, t: nn.functional.cross_entropy(out, t, ignore_index=255),
        hits=lambda out, t: (int((out.argmax(1) == t).sum()), int((t != 255).sum())),
    )
    assert log.accuracies[0] in (0.0, 0.25, 0.5, 0.75, 1.0)


def test_colour_refinement_spreads_scores_within_a_colour_region_only():
    images = torch.zeros(1, 3, 6, 6)
    images[..., 3:] = 1.0  # left half black, right half white
    scores = torch.zeros(1, 1, 6, 6)
    scores[0, 0, 2, 1] = 1.0
    refined = colour_affinity_refine(images, scores, steps=3, radius=1, sigma=0.1)
    assert float(refined[0, 0, :, 3:].abs().max()) < 1e-6  # nothing crosses the colour edge
    assert float(refined[0, 0, 2, 0]) > 0 and float(refined[0, 0, 4, 2]) > 0  # spreads left
    assert 0 <= float(refined.min()) and float(refined.max()) <= 1  # weighted averages


def test_only_the_largest_components_are_kept():
    labels = torch.zeros(1, 6, 6, dtype=torch.long)
    labels[0, 0, 0] = 2
    labels[0, 3:, 3:] = 2
    labels[0, 0, 5] = 1
    kept = keep_largest_components(labels, 1)
    assert kept[0, 0, 0] == 0 and bool((kept[0, 3:, 3:] == 2).all()) and kept[0, 0, 5] == 1


def test_train_and_explain_a_segmentation_model_from_the_command_line(tmp_path, capsys):
    from PIL import Image

    from convlens.data.scenes import make_scenes

    out = tmp_path / "seg"
    args = [
        "train",
        "segmentation",
        "--out",
        str(out),
        "--train",
        "6",
        "--test",
        "3",
        "--epochs",
        "1",
        "--backbone-width",
        "4",
        "--threads",
        "1",
        "--json",
    ]
    assert main(args) == 0
    record = json.loads(capsys.readouterr().out)
    assert 0 <= record["test_scores"]["mean_iou"] <= 1 and record["upsample"] == "bilinear"
    assert (out / "model.pt").is_file() and (out / "checkpoint.pt").is_file()
    image = tmp_path / "scene.png"
    Image.fromarray(make_scenes(1, seed=5).display[0]).save(image)
    explain = [
        "explain",
        str(image),
        "--model",
        str(out / "model.pt"),
        "--method",
        "saliency",
        "--target",
        "circle",
        "--out",
        str(tmp_path / "x"),
        "--region",
        "0,0,32,32",
        "--json",
    ]
    assert main(explain) == 0
    shown = json.loads(capsys.readouterr().out)["records"][0]
    assert shown["methods"][0]["class_name"] == "circle"
    assert main([*explain[:-3], "--region", "0,0,32"]) == 2
    assert "four integers" in capsys.readouterr().err


def test_an_unknown_training_command_is_a_usage_error(tmp_path, capsys):
    assert main(["train", "detection", "--out", str(tmp_path)]) == 2
    assert "No such command 'detection'" in capsys.readouterr().err


def _identity_cam_classifier() -> nn.Module:
    """CAM of class c = input channel c (1x1 identity conv, GAP, identity linear)."""
    conv, linear = nn.Conv2d(3, 2, 1, bias=False), nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0] = conv.weight[1, 1] = 1.0
        linear.weight.copy_(torch.eye(2))
    return nn.Sequential(conv, nn.AdaptiveAvgPool2d(1), nn.Flatten(), linear).eval()


def test_pseudo_masks_label_each_present_class_where_its_cam_is_high():
    from convlens.train.segmentation import cam_pseudo_masks

    inputs = torch.zeros(2, 3, 8, 8)
    inputs[:, 0, 1:3, 1:3] = 1.0  # class 0's CAM: a blob top left
    inputs[:, 0, 6, 6] = 0.5  # and a weaker speck, a second component
    inputs[:, 1, 5:8, 4:7] = 2.0  # class 1's CAM: a blob bottom right
    labels = torch.tensor([[1.0, 1.0], [1.0, 0.0]])  # image 1 holds class 0 only
    masks = cam_pseudo_masks(_identity_cam_classifier(), inputs, labels, threshold=0.4, chunk=1)
    expected = torch.zeros(2, 8, 8, dtype=torch.long)
    expected[:, 1:3, 1:3] = 1
    expected[0, 5:8, 4:7] = 2
    assert torch.equal(masks, expected)  # the speck (a smaller component) is dropped
    two = cam_pseudo_masks(_identity_cam_classifier(), inputs, labels, threshold=0.4, components=2)
    assert two[1, 6, 6] == 1
