"""Streaming top-k: brute-force equality, exact receptive-field patches and projections,
ties, bad files, resume after a stop, and the model left as it was."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from tests.helpers.networks import CountingNet, small_convnet

from convlens.data.datasets import ScanDataset, open_dataset
from convlens.data.preprocess import Preprocess
from convlens.features.projection import project_unit
from convlens.models.loading import LoadedModel
from convlens.scan.patches import PAD_VALUE
from convlens.scan.topk import merge_top, top_activating

pytestmark = pytest.mark.usefixtures("one_thread")
SIZE = 10
PREPROCESS = Preprocess(size=SIZE, mode="stretch", mean=(0.5,) * 3, std=(0.5,) * 3)


class Pictures(torch.utils.data.Dataset):
    """Seeded uint8 pictures; items 2 and 7 are the same picture (exact ties)."""

    def __init__(self, count: int = 11) -> None:
        rng = np.random.default_rng(0)
        self.images = rng.integers(0, 256, (count, SIZE, SIZE, 3), dtype=np.uint8)
        if count > 7:
            self.images[7] = self.images[2]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index):
        return self.images[index]


def _model() -> LoadedModel:
    return LoadedModel(small_convnet(), "small", PREPROCESS)


def _brute_force(model, dataset: ScanDataset, layer: str, k: int, by: str):
    """Every activation of every image in memory, sorted per channel."""
    images = torch.stack([dataset[i][1] for i in range(len(dataset))])
    from convlens.layers import borrowed_model, capture

    with borrowed_model(model.module), torch.no_grad(), capture(model.module, layer) as cap:
        model.module(images)
    flat = cap.activation(layer).flatten(2)
    peak, where = flat.max(dim=2)
    value = peak if by == "max" else flat.mean(dim=2)
    tops = []
    for c in range(flat.shape[1]):
        order = sorted(range(len(images)), key=lambda i: (-float(value[i, c]), i))[:k]
        tops.append([(i, float(value[i, c]), int(where[i, c])) for i in order])
    return tops, flat.shape[-1] ** 0.5


@pytest.mark.parametrize("by", ["max", "mean"])
def test_streamed_top_k_equals_brute_force_for_every_channel(by, unchanged):
    model = _model()
    dataset = open_dataset(Pictures(), PREPROCESS)
    with unchanged(model.module):
        result = top_activating(
            model, dataset, ["2", "4"], k=4, by=by, projections=(), batch_size=3
        )
    assert result.scanned == len(dataset) and result.errors == []
    for layer in ("2", "4"):
        expected, width = _brute_force(model, dataset, layer, 4, by)
        channels = result.layers[layer].channels
        assert len(channels) == 4
        for units, want in zip(channels, expected, strict=True):
            assert [u.index for u in units] == [i for i, _, _ in want]
            assert [u.y * int(width) + u.x for u in units] == [p for _, _, p in want]
            assert [u.value for u in units] == pytest.approx([v for _, v, _ in want], abs=1e-5)


def test_a_batch_of_224_pixel_images_runs_eight_a_pass_with_the_brute_force_result():
    """On the CPU the scan splits each loader batch into passes of at most eight 224 x 224
    images (`cpu_pass_rows`); the top units are those of every image at once."""
    preprocess = Preprocess(size=224, mode="stretch", mean=(0.5,) * 3, std=(0.5,) * 3)
    pictures = Pictures()
    pictures.images = np.random.default_rng(1).integers(0, 256, (11, 224, 224, 3), np.uint8)
    counting = CountingNet().eval()
    model = LoadedModel(counting, "counting", preprocess)
    dataset = open_dataset(pictures, preprocess)
    result = top_activating(model, dataset, ["net.2"], k=3, projections=(), batch_size=11)
    assert [rows for rows, _ in counting.calls][-2:] == [6, 5]
    assert all(rows <= 8 for rows, _ in counting.calls)
    expected, width = _brute_force(model, dataset, "net.2", 3, "max")
    for units, want in zip(result.layers["net.2"].channels, expected, strict=True):
        assert [u.index for u in units] == [i for i, _, _ in want]
        assert [u.y * int(width) + u.x for u in units] == [p for _, _, p in want]


def test_merging_again_keeps_nan_and_minus_infinity_at_minus_infinity():
    """NaN counts as -inf, and -inf stays -inf however many merges a scan makes."""
    values = torch.tensor([[float("nan"), -float("inf"), 1.0]])
    images, positions = torch.tensor([[0, 1, 2]]), torch.zeros(1, 3, dtype=torch.long)
    once = merge_top(values, images, positions, 3)
    twice = merge_top(*once, 3)
    assert twice[0].tolist() == [[1.0, -float("inf"), -float("inf")]]
    assert twice[1].tolist() == [[2, 0, 1]]


def test_merge_breaks_ties_by_lower_image_index():
    values = torch.tensor([[1.0, 2.0, 2.0, 2.0, float("nan")]])
    images = torch.tensor([[0, 9, 4, 6, 1]])
    kept = merge_top(values, images, torch.zeros_like(images), 3)
    assert kept[1].tolist() == [[4, 6, 9]]
    # the duplicated picture (items 2 and 7) always ranks 2 before 7
    result = top_activating(_model(), Pictures(), "4", k=11, projections=(), batch_size=4)
    for units in result.layers["4"].channels:
        order = [u.index for u in units]
        assert order.index(2) < order.index(7)


def test_patches_are_receptive_field_crops_and_projections_match_project_unit():
    model = _model()
    dataset = open_dataset(Pictures(6), PREPROCESS)
    result = top_activating(
        model, dataset, "4", k=3, projections=("deconvnet", "guided"), batch_size=5
    )
    views = list(result.channel_views("4"))
    assert [view.channel for view in views] == [0, 1, 2, 3]
    for view in views:
        c = view.channel
        assert view.units == result.layers["4"].channels[c]
        for rule in ("deconvnet", "guided"):
            alone = result.projections("4", c, rule)  # this channel's units in a batch alone
            assert all(
                torch.allclose(a, b, atol=1e-6)
                for a, b in zip(view.projections[rule], alone, strict=True)
            )
        for unit, patch, position in zip(view.units, view.patches, range(3), strict=True):
            # two 3x3 convolutions with padding 1: a 5x5 field centred on the unit
            assert unit.box == (unit.x - 2, unit.y - 2, unit.x + 3, unit.y + 3)
            padded = np.pad(
                dataset.display(unit.index), ((2, 2), (2, 2), (0, 0)), constant_values=PAD_VALUE
            )
            assert np.array_equal(patch, padded[unit.y : unit.y + 5, unit.x : unit.x + 5])
            for rule in ("deconvnet", "guided"):
                whole = project_unit(
                    model, dataset[unit.index][1], "4", c, (unit.y, unit.x), rule=rule, crop=False
                ).projection
                want = torch.nn.functional.pad(whole, (2, 2, 2, 2))
                got = view.projections[rule][position]
                assert torch.allclose(
                    got, want[:, unit.y : unit.y + 5, unit.x : unit.x + 5], atol=1e-6
                )


def _write_bad_files(folder):
    rng = np.random.default_rng(1)
    for i in range(5):
        pixels = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"good{i}.png")
    (folder / "empty.png").write_bytes(b"")
    data = (folder / "good0.png").read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    (folder / "notes.jpg").write_text("not an image")
    Image.new("RGB", (80, 80)).save(folder / "huge.png")


def test_bad_files_are_reported_and_skipped(tmp_path):
    _write_bad_files(tmp_path)
    dataset = open_dataset(tmp_path, PREPROCESS, max_pixels=5000)
    result = top_activating(_model(), dataset, "4", k=3, projections=(), batch_size=4)
    assert result.scanned == 5
    skipped = sorted(source.split("/")[-1] for source, _ in result.errors)
    assert skipped == ["empty.png", "huge.png", "notes.jpg", "truncated.png"]
    assert "max_pixels" in dict(result.errors)[str(tmp_path / "huge.png")]
    used = {u.source for units in result.layers["4"].channels for u in units}
    assert all("good" in source for source in used)


class Stop(Exception):
    pass


def test_stop_at_half_then_resume_equals_an_uninterrupted_run(tmp_path):
    model, data = _model(), Pictures(12)
    settings = dict(k=3, projections=(), batch_size=2, save_every=2)
    whole = top_activating(model, data, ["2", "4"], **settings)

    def stop_at_half(done: int) -> None:
        if done == 3:  # a kill after batch 3 of 6: the state of batch 2 survives
            raise Stop

    state = tmp_path / "state"
    with pytest.raises(Stop):
        top_activating(model, data, ["2", "4"], checkpoint=state, on_batch=stop_at_half, **settings)
    seen: list[int] = []
    resumed = top_activating(
        model, data, ["2", "4"], checkpoint=state, resume=True, on_batch=seen.append, **settings
    )
    assert seen == [3, 4, 5, 6]  # continued after the saved batch 2, not from the start
    for layer in ("2", "4"):
        for a, b in zip(whole.layers[layer].channels, resumed.layers[layer].channels, strict=True):
            assert [(u.index, u.y, u.x, u.value) for u in a] == [
                (u.index, u.y, u.x, u.value) for u in b
            ]
    assert resumed.scanned == whole.scanned == 12


def test_bad_settings_name_the_fix():
    from convlens.errors import DataError, LayerError, MethodError

    with pytest.raises(DataError, match="k"):
        top_activating(_model(), Pictures(3), "4", k=0)
    with pytest.raises(DataError, match="max, mean"):
        top_activating(_model(), Pictures(3), "4", by="median")
    with pytest.raises(MethodError, match="deconvnet"):
        top_activating(_model(), Pictures(3), "4", projections=("lrp",))
    with pytest.raises(LayerError, match="convolutional"):
        top_activating(_model(), Pictures(3), "7", projections=())
