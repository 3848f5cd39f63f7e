"""Localising heads (convlens.models.heads), their maps as methods and their training:
exact formulas on hand-built inputs, refusal on other models, one epoch, checkpoints."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from tests.conftest import assert_same_state, model_state
from tests.helpers.networks import small_convnet
from torch import nn

import convlens
from convlens.attribution.methods import get_method, list_methods
from convlens.errors import ConvlensError, DataError, MethodError, ModelLoadError
from convlens.maps import normalize_maps
from convlens.models import load_model
from convlens.models.heads import (
    AcolHead,
    BackboneCut,
    CamHead,
    HeadModel,
    NinHead,
    ScouterHead,
    erase_above,
    save_head_model,
)
from convlens.train.heads import TrainTestImages, build_head_model, synthetic_data, train_head


def tiny_head_model(head: nn.Module) -> HeadModel:
    """A conv(3->4) backbone cut at '0' (features at input resolution) under ``head``."""
    torch.manual_seed(0)
    return HeadModel(
        BackboneCut(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()), "0"), head
    )


def test_cam_head_logits_are_the_class_map_mean_plus_bias():
    torch.manual_seed(0)
    head, features = CamHead(4, 3), torch.randn(2, 4, 5, 6)
    classes = torch.tensor([2, 0])
    maps = head.class_maps(features, classes)
    expected = head(features)[torch.arange(2), classes] - head.classifier.bias[classes]
    torch.testing.assert_close(maps.mean(dim=(1, 2)), expected)


def test_nin_class_map_is_what_gap_averages_and_the_method_reads_it():
    model = tiny_head_model(NinHead(4, 3))
    images = torch.randn(2, 3, 6, 6)
    class_maps = model.head.all_class_maps(model.backbone(images))
    torch.testing.assert_close(class_maps.mean(dim=(2, 3)), model(images))
    before = model_state(model)
    result = convlens.explain(model, images, method="nin", target=1)
    assert_same_state(before, model_state(model))
    torch.testing.assert_close(result.maps, class_maps[:, 1].detach())  # 6x6 needs no upsampling


def test_normalize_maps_and_acol_erasing_on_hand_values():
    class_map = torch.tensor([[[1.0, 3.0], [2.0, 5.0]]])
    torch.testing.assert_close(normalize_maps(class_map), torch.tensor([[[0, 0.5], [0.25, 1]]]))
    features = torch.arange(1.0, 9.0).view(1, 2, 2, 2)
    erased = erase_above(features, class_map, delta=0.4)  # keeps 0 and 0.25 only
    expected = torch.tensor([[[[1.0, 0], [3, 0]], [[5, 0], [7, 0]]]])
    torch.testing.assert_close(erased, expected)


def test_normalize_maps_takes_one_map_integers_and_refuses_infinities():
    one = torch.tensor([[0.0, 1.0], [2.0, 10.0]])  # one [H, W] map, not two rows
    torch.testing.assert_close(normalize_maps(one), torch.tensor([[0, 0.1], [0.2, 1]]))
    torch.testing.assert_close(normalize_maps(one.long()), normalize_maps(one))
    with pytest.raises(ConvlensError, match="infinite"):
        normalize_maps(torch.tensor([[[1.0, float("inf")]]]))
    with pytest.raises(ConvlensError, match=r"Tensor\[N, H, W\]"):
        normalize_maps(torch.zeros(1, 1, 2, 2))


def test_acol_erasing_refuses_a_nan_map_instead_of_erasing_nothing():
    features = torch.ones(1, 2, 2, 2)
    class_map = torch.tensor([[[1.0, float("nan")], [2.0, 5.0]]])
    with pytest.raises(ConvlensError, match="NaN"):
        erase_above(features, class_map, delta=0.4)


def test_acol_second_branch_sees_erased_features_and_fusion_is_elementwise_max():
    torch.manual_seed(0)
    head, features = AcolHead(4, 3, delta=0.5), torch.rand(2, 4, 5, 5)
    classes = torch.tensor([0, 2])
    maps_a, maps_b = head.both_maps(features, classes)
    rows = torch.arange(2)
    erased = erase_above(features, maps_a[rows, classes], 0.5)
    assert (erased == 0).any() and not torch.equal(erased, features)
    torch.testing.assert_close(maps_b, head.branch_b(erased))
    norm_a = normalize_maps(maps_a[rows, classes])
    norm_b = normalize_maps(maps_b[rows, classes])
    torch.testing.assert_close(head.class_maps(features, classes), torch.maximum(norm_a, norm_b))
    top = maps_a.mean(dim=(2, 3)).argmax(1)
    a_top, b_top = head.both_maps(features, top)
    torch.testing.assert_close(head(features), a_top.mean(dim=(2, 3)) + b_top.mean(dim=(2, 3)))


def test_scouter_attention_shapes_area_loss_and_the_negative_sign_flip():
    torch.manual_seed(0)
    positive, features = ScouterHead(4, 3, dim=8, area_weight=2.0), torch.randn(2, 4, 5, 7)
    attention, logits = positive.attend(features)
    assert attention.shape == (2, 3, 5, 7) and logits.shape == (2, 3)
    assert bool(((attention > 0) & (attention < 1)).all())
    negative = ScouterHead(4, 3, dim=8, sign=-1)
    negative.load_state_dict(positive.state_dict())
    attention_neg, logits_neg = negative.attend(features)
    torch.testing.assert_close(logits_neg, -logits)
    torch.testing.assert_close(attention_neg, attention)
    positive.train()
    labels = torch.tensor([1, 2])
    loss = positive.training_loss(positive(features), labels)
    torch.testing.assert_close(loss, F.cross_entropy(logits, labels) + 2.0 * attention.mean())


def test_head_methods_refuse_other_models_and_stay_out_of_method_all():
    images = torch.randn(1, 3, 8, 8)
    with pytest.raises(MethodError, match="convlens train head acol"):
        convlens.explain(tiny_head_model(NinHead(4, 3)), images, method="acol")
    with pytest.raises(MethodError, match="no convlens head"):
        convlens.explain(small_convnet(), images, method="scouter")
    names = {m.name for m in list_methods()}
    assert not names & {"nin", "acol", "scouter"}
    assert {m.name for m in list_methods(include_head_methods=True)} >= {"nin", "acol", "scouter"}
    assert get_method("acol").head == "acol"


def test_backbone_cut_names_a_missing_layer():
    with pytest.raises(ModelLoadError, match="no layer named 'nope'"):
        BackboneCut(nn.Sequential(nn.Conv2d(3, 4, 1)), "nope")


@pytest.fixture(scope="module")
def shapes32():
    """48 synthetic training and 16 held-out images at 32 px for the shapes backbone."""
    backbone = load_model("synthetic-shapes")
    preprocess = type(backbone.preprocess)(**{**backbone.preprocess.__dict__, "size": 32})
    return preprocess, synthetic_data(preprocess, 48, 16)


def new_model(kind: str, seed: int = 0) -> HeadModel:
    return build_head_model(kind, load_model("synthetic-shapes"), "features", 6, seed=seed)


def test_one_short_epoch_lowers_the_training_loss(shapes32):
    _, data = shapes32
    model = new_model("acol")

    def loss_now() -> float:
        model.train()
        with torch.no_grad():
            value = float(model.training_loss(model(data.train_inputs), data.train_labels))
        model.eval()
        return value

    before = loss_now()
    log = train_head(model, data, epochs=1, batch_size=16, learning_rate=1e-2)
    assert len(log.losses) == 1 and loss_now() < before


@pytest.mark.parametrize("kind", ["cam", "nin", "acol", "scouter"])
def test_checkpoint_round_trip_gives_identical_outputs(kind, shapes32, tmp_path):
    preprocess, data = shapes32
    model = new_model(kind, seed=3).eval()
    path = save_head_model(
        model,
        tmp_path / "model.pt",
        backbone="synthetic-shapes",
        layer="features",
        classes=("a", "b", "c", "d", "e", "f"),
        preprocess=preprocess,
    )
    loaded = load_model(str(path))
    assert loaded.labels == ("a", "b", "c", "d", "e", "f") and loaded.preprocess == preprocess
    images = data.test_inputs[:4]
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), model(images), rtol=0, atol=0)


def test_head_files_load_with_weights_only_and_older_ones_still_load(shapes32, tmp_path):
    import pickle

    from convlens.train.heads import head_record
    from convlens.train.loop import TrainingLog

    preprocess, data = shapes32
    model = new_model("cam", seed=3).eval()
    record = head_record(TrainingLog([1.0], [0.5], 2.0), model, data, seed=0)
    settings = dict(backbone="synthetic-shapes", layer="features", classes="abcdef")
    path = save_head_model(
        model, tmp_path / "new.pt", preprocess=preprocess, **settings, record=record
    )
    saved = torch.load(path, map_location="cpu", weights_only=True)  # plain values only
    assert type(saved["record"]["versions"]["torch"]) is str
    older = {"versions": {"torch": torch.__version__}}  # a TorchVersion, as convlens 0.1 wrote
    old = save_head_model(
        model, tmp_path / "old.pt", preprocess=preprocess, **settings, record=older
    )
    with pytest.raises(pickle.UnpicklingError):
        torch.load(old, map_location="cpu", weights_only=True)
    assert load_model(str(old)).labels == tuple("abcdef")  # no trust_pickle needed


def test_resume_equals_uninterrupted_training(shapes32, tmp_path):
    _, data = shapes32
    small = TrainTestImages(
        data.train_inputs[:32], data.train_labels[:32], *list(vars(data).values())[2:]
    )
    whole = new_model("scouter")
    train_head(whole, small, epochs=2, batch_size=16)

    def stop_after_first(epoch, *_):
        raise KeyboardInterrupt

    checkpoint = tmp_path / "checkpoint.pt"
    interrupted = new_model("scouter")
    with pytest.raises(KeyboardInterrupt):
        train_head(
            interrupted,
            small,
            epochs=2,
            batch_size=16,
            checkpoint=checkpoint,
            on_epoch=stop_after_first,
        )
    resumed = new_model("scouter")
    log = train_head(resumed, small, epochs=2, batch_size=16, checkpoint=checkpoint, resume=True)
    assert len(log.losses) == 2
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_resume_refuses_a_checkpoint_of_another_model_naming_what_changed(shapes32, tmp_path):
    _, data = shapes32
    small = TrainTestImages(
        data.train_inputs[:16], data.train_labels[:16], *list(vars(data).values())[2:]
    )

    def stop(epoch, *_):
        raise KeyboardInterrupt

    checkpoint = tmp_path / "checkpoint.pt"
    cam = {"head": "cam", "upsample": "bilinear"}
    with pytest.raises(KeyboardInterrupt):
        train_head(new_model("cam"), small, epochs=2, batch_size=16, checkpoint=checkpoint,
                   on_epoch=stop, identity=cam)  # fmt: skip
    for changed, message in (
        ({**cam, "upsample": "nearest"}, "upsample: 'bilinear' -> 'nearest'"),
        (cam | {"head": "nin"}, "head: 'cam' -> 'nin'"),
    ):
        with pytest.raises(DataError, match=message):
            train_head(new_model(changed["head"]), small, epochs=2, batch_size=16,
                       checkpoint=checkpoint, resume=True, identity=changed)  # fmt: skip
    # the same settings but weights of another head: refused with the fix, not a raw error
    with pytest.raises(DataError, match="holds weights of another model"):
        train_head(new_model("nin"), small, epochs=2, batch_size=16, checkpoint=checkpoint,
                   resume=True, identity=cam)  # fmt: skip


def test_checkpoint_every_must_be_positive(shapes32):
    _, data = shapes32
    with pytest.raises(DataError, match="checkpoint_every"):
        train_head(new_model("cam"), data, epochs=1, checkpoint_every=0)


@pytest.mark.slow
def test_cli_trains_a_head_and_every_command_loads_it(tmp_path, capsys):
    from PIL import Image

    from convlens.cli import main
    from convlens.data.synthetic import SyntheticShapes

    out = tmp_path / "nin"
    args = ["train", "head", "nin", "--limit", "8", "--test", "4", "--epochs", "1"]
    args += ["--threads", "1"]
    assert main([*args, "--out", str(out), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["head"] == "nin" and len(record["losses"]) == 1
    assert {"seed", "versions", "train_accuracy", "test_accuracy"} <= record.keys()
    image = tmp_path / "shape.png"
    Image.fromarray(SyntheticShapes(1, seed=1).batch().display[0]).save(image)
    model = str(out / "model.pt")
    explained = ["explain", str(image), "--model", model, "--method", "nin"]
    assert main([*explained, "--out", str(tmp_path / "explained"), "--json"]) == 0
    assert (tmp_path / "explained" / "shape.png").is_file()
    capsys.readouterr()
    evaluate = ["evaluate", "--model", model, "--benchmark", "shapes", "--method", "nin,gradcam"]
    evaluate += ["--limit", "2", "--curve-steps", "4"]  # loading is under test, not curves
    assert main([*evaluate, "--json"]) == 0
    board = json.loads(capsys.readouterr().out)
    assert {"nin", "gradcam"} <= board.keys()


def test_a_folder_with_an_unreadable_file_trains_on_the_rest_and_names_it(tmp_path):
    import numpy as np
    from PIL import Image

    from convlens.data.preprocess import Preprocess
    from convlens.train.heads import folder_data

    for index in range(6):
        folder = tmp_path / f"c{index % 2}"
        folder.mkdir(exist_ok=True)
        pixels = np.full((8, 8, 3), 40 * index, np.uint8)
        Image.fromarray(pixels).save(folder / f"{index}.png")
    (tmp_path / "c0" / "zz_bad.png").write_bytes(b"not a picture")
    data = folder_data(tmp_path, Preprocess(size=8, mode="stretch"), None, seed=0)
    assert len(data.train_inputs) + len(data.test_inputs) == 6
    assert [source for source, _ in data.skipped] == [str(tmp_path / "c0" / "zz_bad.png")]
    assert data.classes == ("c0", "c1")
