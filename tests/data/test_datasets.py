"""Datasets for scans: folders (recursive), ImageFolder trees, .txt lists, shapes:N, any
Dataset; the loader keeps item order and drops unreadable items with their messages."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from convlens.data.datasets import batch_loader, open_dataset
from convlens.data.preprocess import Preprocess
from convlens.data.synthetic import SyntheticShapes
from convlens.errors import DataError

PRE = Preprocess(size=8, mode="stretch", mean=(0.5,) * 3, std=(0.5,) * 3)


def _png(path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path)


def test_folder_is_recursive_and_an_image_folder_tree_keeps_labels(tmp_path):
    _png(tmp_path / "plain" / "a.png", 1)
    _png(tmp_path / "plain" / "deep" / "er" / "b.png", 2)
    plain = open_dataset(tmp_path / "plain", PRE)
    assert [s.split("/")[-1] for s in plain.sources] == ["a.png", "b.png"]
    assert plain.labels is None
    for name, value in [("cat/1.png", 3), ("cat/2.png", 4), ("dog/1.png", 5)]:
        _png(tmp_path / "tree" / name, value)
    tree = open_dataset(tmp_path / "tree", PRE)
    assert tree.classes == ("cat", "dog") and tree.labels == [0, 0, 1]


def test_text_list_reads_paths_relative_to_the_file(tmp_path):
    _png(tmp_path / "x" / "a.png", 7)
    listing = tmp_path / "list.txt"
    listing.write_text("# images\nx/a.png\n\nmissing.png\n")
    dataset = open_dataset(listing, PRE)
    assert dataset.sources == [str(tmp_path / "x" / "a.png"), str(tmp_path / "missing.png")]
    (batch,) = list(batch_loader(dataset, range(2), batch_size=2))
    assert batch.indices.tolist() == [0] and len(batch.errors) == 1
    assert batch.errors[0][0] == 1 and "no such file" in batch.errors[0][1]


def test_shapes_and_any_dataset_with_labels():
    shapes = open_dataset("shapes:7", PRE)
    assert shapes.sources[-1] == "shapes:6" and shapes.labels == [0, 1, 2, 3, 4, 5, 0]

    class Pairs(torch.utils.data.Dataset):
        def __len__(self):
            return 3

        def __getitem__(self, i):
            return torch.full((3, 8, 8), i / 4), i

    wrapped = open_dataset(Pairs(), PRE)
    assert wrapped.sources == ["Pairs:0", "Pairs:1", "Pairs:2"]
    index, tensor, label, error = wrapped[2]
    assert (index, label, error) == (2, 2, None)
    assert torch.allclose(tensor, PRE.normalize(np.full((8, 8, 3), 128, np.uint8)))


def test_in_memory_images_as_lists_and_tuples_of_any_length():
    x = torch.stack([torch.full((3, 8, 8), i / 4) for i in range(3)])
    expected = [PRE.normalize(np.full((8, 8, 3), round(255 * i / 4), np.uint8)) for i in range(3)]
    cases = {
        "tensors": (list(x), [-1, -1, -1]),
        "pil": ([_pil(image) for image in x], [-1, -1, -1]),
        "1-tuples": (torch.utils.data.TensorDataset(x), [-1, -1, -1]),
        "3-tuples": (torch.utils.data.TensorDataset(x, torch.tensor([2, 0, 1]), x), [2, 0, 1]),
        "vectors": (torch.utils.data.TensorDataset(x, x), [-1, -1, -1]),  # no one label
    }
    for name, (data, labels) in cases.items():
        dataset = open_dataset(data, PRE)
        items = [dataset[i] for i in range(3)]
        assert [item[2] for item in items] == labels, name
        assert all(item[3] is None for item in items), name
        for item, image in zip(items, expected, strict=True):
            assert torch.allclose(item[1], image, atol=1e-6), name
    with pytest.raises(DataError, match="either paths or images"):
        open_dataset(["a.png", x[0]], PRE)


def _pil(image: torch.Tensor) -> Image.Image:
    return Image.fromarray((image * 255).round().byte().permute(1, 2, 0).numpy())


def test_shapes_names_one_stream_each_everywhere():
    """``shapes:N`` is the training stream (seed 0) and ``shapes-test:N`` the held-out one
    (seed 1), for scans and analyses alike; bare names hold 1,000 items."""
    from convlens.analysis.data import labelled_images

    for name, seed in (("shapes", 0), ("shapes-test", 1)):
        dataset = open_dataset(f"{name}:3", PRE)
        expected = [PRE.display(_pil(item.image)) for item in SyntheticShapes(3, seed=seed)]
        assert [dataset.sources[i] for i in range(3)] == [f"{name}:{i}" for i in range(3)]
        assert all(np.array_equal(dataset.display(i), expected[i]) for i in range(3))
        analysed = labelled_images(f"{name}:3", PRE)
        assert np.array_equal(analysed.display, np.stack(expected))
        assert len(open_dataset(name, PRE)) == 1000
    with pytest.raises(DataError, match="positive"):
        open_dataset("shapes-test:0", PRE)


def test_loader_order_is_the_same_with_workers():
    dataset = open_dataset("shapes:6", PRE)
    plain = list(batch_loader(dataset, [5, 1, 3, 0], batch_size=3))
    workers = list(batch_loader(dataset, [5, 1, 3, 0], batch_size=3, workers=1))
    for a, b in zip(plain, workers, strict=True):
        assert torch.equal(a.indices, b.indices) and torch.equal(a.images, b.images)
    assert torch.cat([b.indices for b in plain]).tolist() == [5, 1, 3, 0]


def test_bad_data_names_the_fix(tmp_path):
    with pytest.raises(DataError, match="shapes:N"):
        open_dataset(tmp_path / "nowhere", PRE)
    with pytest.raises(DataError, match="no image files"):
        open_dataset(tmp_path, PRE)
    with pytest.raises(DataError, match="positive"):
        open_dataset("shapes:0", PRE)
