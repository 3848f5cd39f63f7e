"""The multi-label scenes model's training starts from the shipped shapes model and records
how it was made."""

import torch

from convlens.data.scenes import SCENE_CLASSES
from convlens.models.scenes import load_scenes_model
from convlens.models.shapes import load_shapes_model
from convlens.train.scenes import initial_model, save_scenes_model, train_scenes_model


def test_initial_model_is_an_independent_copy_of_the_shapes_model():
    shapes = load_shapes_model()
    before = {k: v.clone() for k, v in shapes.module.state_dict().items()}
    start = initial_model()
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(start.eval()(images), shapes.module(images), atol=1e-5)
        for parameter in start.parameters():
            parameter.add_(1.0)
    after = shapes.module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_short_run_trains_saves_and_loads_with_its_record(tmp_path):
    model, record = train_scenes_model(train=16, epochs=1, test=8, verbose=False)
    assert record["init"] == "synthetic-shapes" and record["epochs"] == 1
    assert 0.0 <= record["test_map"] <= 1.0 and len(record["per_class_ap"]) == len(SCENE_CLASSES)
    path = save_scenes_model(model, record, tmp_path / "scenes.pt")
    loaded = load_scenes_model(path=path)
    assert loaded.module.classifier.in_features == model.classifier.in_features
    images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():  # float16 storage: equal to half precision
        assert torch.allclose(loaded.module(images), model(images), atol=2e-2)
