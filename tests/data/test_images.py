"""Image reading: every mode, EXIF, limits, bad files, directories, preprocessing geometry."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from convlens.data.images import load_image, load_images, read_rgb
from convlens.errors import ImageLoadError
from convlens.models import Preprocess


def rgb_of(image: Image.Image) -> np.ndarray:
    return np.asarray(read_rgb(image))


def test_grayscale_becomes_three_equal_channels():
    out = rgb_of(Image.fromarray(np.array([[0, 128], [255, 7]], np.uint8), "L"))
    assert out.shape == (2, 2, 3) and (out[..., 0] == out[..., 2]).all()
    assert out[0, 1].tolist() == [128, 128, 128]


def test_palette_with_and_without_transparency():
    image = Image.new("P", (2, 1))
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.putpixel((1, 0), 1)
    assert rgb_of(image).tolist() == [[[255, 0, 0], [0, 0, 255]]]
    image.info["transparency"] = 0  # index 0 transparent -> white
    assert rgb_of(image).tolist() == [[[255, 255, 255], [0, 0, 255]]]


def test_rgba_and_la_composited_on_white():
    rgba = Image.fromarray(np.array([[[200, 0, 0, 0], [200, 0, 0, 255]]], np.uint8), "RGBA")
    assert rgb_of(rgba).tolist() == [[[255, 255, 255], [200, 0, 0]]]
    la = Image.fromarray(np.array([[[0, 128]]], np.uint8), "LA")
    assert rgb_of(la)[0, 0].tolist() == [127, 127, 127]


def test_16_bit_png_scaled_to_8_bit(tmp_path):
    path = tmp_path / "deep.png"
    Image.fromarray(np.array([[0, 65535, 257 * 100]], np.uint16)).save(path)
    assert read_rgb(path).getpixel((1, 0)) == (255, 255, 255)
    assert read_rgb(path).getpixel((2, 0)) == (100, 100, 100)


def test_cmyk_jpeg(tmp_path):
    path = tmp_path / "print.jpg"
    Image.new("CMYK", (4, 4), (0, 255, 255, 0)).save(path)  # pure red in print colours
    red, green, blue = read_rgb(path).getpixel((1, 1))
    assert red > 200 and green < 60 and blue < 60


def test_exif_orientation_applied(tmp_path):
    pixels = np.zeros((10, 20, 3), np.uint8)
    pixels[:, :5] = 255  # white band on the left
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif, quality=100)
    shown = np.asarray(read_rgb(path))
    assert shown.shape == (20, 10, 3)
    assert shown[:5].mean() > 200 and shown[-5:].mean() < 50  # band now at the top


@pytest.mark.parametrize(
    "array",
    [
        np.full((3, 5), 9, np.uint8),
        np.full((3, 5, 3), 9, np.uint8),
        np.dstack([np.full((3, 5, 3), 9, np.uint8), np.full((3, 5), 255, np.uint8)]),
        np.full((3, 3, 5), 9, np.uint8),  # channels first
        np.full((3, 5, 3), 9 / 255, np.float32),
    ],
)
def test_numpy_layouts(array):
    assert np.asarray(read_rgb(array)).tolist() == np.full((3, 5, 3), 9).tolist()


def test_tensor_source_and_float_range_check():
    tensor = torch.full((3, 4, 6), 0.5)
    image = load_image(tensor)
    assert image.display.shape == (4, 6, 3) and image.display[0, 0, 0] == 128
    with pytest.raises(ImageLoadError, match=r"must be in \[0, 1\]"):
        read_rgb(torch.full((3, 4, 6), -1.0))
    with pytest.raises(ImageLoadError, match="not an image"):
        read_rgb(np.zeros((2, 3, 4, 5)))


def test_corrupt_and_non_image_files_name_the_file(tmp_path):
    truncated = tmp_path / "broken.png"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:40])
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    for path in (truncated, text):
        with pytest.raises(ImageLoadError, match=path.name):
            read_rgb(path)
    with pytest.raises(ImageLoadError, match="no such file"):
        read_rgb(tmp_path / "missing.png")


def test_pixel_limit_refuses_before_decoding(tmp_path):
    path = tmp_path / "big.png"
    Image.new("RGB", (100, 100)).save(path)
    with pytest.raises(ImageLoadError, match="above the limit"):
        read_rgb(path, max_pixels=9_999)
    assert read_rgb(path, max_pixels=10_000).size == (100, 100)


def test_directory_sorted_bad_file_skipped_and_reported(tmp_path):
    for name, value in (("b.png", 20), ("a.png", 10)):
        Image.new("RGB", (8, 8), (value,) * 3).save(tmp_path / name)
    (tmp_path / "c.png").write_bytes(b"garbage")
    (tmp_path / "readme.txt").write_text("ignored: not an image suffix")
    batch = load_images(tmp_path, skip_errors=True)
    assert [p.rsplit("/", 1)[-1] for p in batch.sources] == ["a.png", "b.png"]
    assert batch.display[:, 0, 0, 0].tolist() == [10, 20]
    assert len(batch.errors) == 1 and batch.errors[0][0].endswith("c.png")
    with pytest.raises(ImageLoadError, match="c.png"):
        load_images(tmp_path)


def test_mixed_sizes_need_a_preprocess():
    images = [np.zeros((4, 4, 3), np.uint8), np.zeros((4, 6, 3), np.uint8)]
    with pytest.raises(ImageLoadError, match="pass a preprocess"):
        load_images(images)
    assert load_images(images, Preprocess(size=4, mode="stretch")).tensor.shape == (2, 3, 4, 4)


def test_center_crop_geometry_on_non_square_image():
    # 300 x 200 (w x h) image; each column holds its own index so the crop is readable.
    columns = np.tile(np.arange(300, dtype=np.uint8)[None, :, None], (200, 1, 3))
    preprocess = Preprocess(size=100, crop_pct=0.5, interpolation="nearest")
    display = preprocess.display(Image.fromarray(columns))
    # shorter side 200 -> 100 / 0.5 = 200: no scaling; crop the centre 100x100
    assert display.shape == (100, 100, 3)
    assert display[0, 0, 0] == 100 and display[0, -1, 0] == 199


def test_stretch_and_none_modes():
    image = Image.new("RGB", (30, 20))
    assert Preprocess(size=(8, 12), mode="stretch").display(image).shape == (8, 12, 3)
    assert Preprocess(mode="none").display(image).shape == (20, 30, 3)


def test_tensor_is_normalised_display_and_denormalize_round_trips():
    preprocess = Preprocess(size=16, mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.4))
    image = load_image(np.random.default_rng(0).integers(0, 256, (20, 40, 3), np.uint8), preprocess)
    expected = (torch.from_numpy(image.display).permute(2, 0, 1) / 255 - 0.4) / 0.3
    assert torch.allclose(image.tensor[1], expected[1], atol=1e-6)
    back = preprocess.denormalize(image.tensor).permute(1, 2, 0).mul(255).round()
    assert torch.equal(back.to(torch.uint8), torch.from_numpy(image.display))


def test_sample_names_resolve():
    batch = load_images(["cat", "coffee"], Preprocess())
    assert batch.tensor.shape == (2, 3, 224, 224)
    assert batch.sources == ["cat", "coffee"]
    with pytest.raises(ImageLoadError, match="sample names"):
        read_rgb("kitten")


def test_chw_tensor_is_channels_first_even_when_width_is_four():
    # [3, 4, 4] fits both layouts; a torch tensor is read channels first.
    tensor = torch.stack([torch.full((4, 4), v) for v in (10, 20, 30)]).to(torch.uint8)
    assert np.asarray(read_rgb(tensor)).reshape(-1, 3).tolist() == [[10, 20, 30]] * 16
    half = torch.full((3, 2, 2), 0.5, dtype=torch.float16)
    assert np.asarray(read_rgb(half))[0, 0].tolist() == [128, 128, 128]


def test_dark_16_bit_png_is_scaled_by_the_16_bit_range(tmp_path):
    path = tmp_path / "dark.png"
    Image.fromarray(np.array([[0, 200, 257 * 3]], np.uint16)).save(path)  # max <= 1000
    assert np.asarray(read_rgb(path))[0, :, 0].tolist() == [0, 1, 3]
    with pytest.raises(ImageLoadError, match="8- or 16-bit"):
        read_rgb(np.full((2, 2), 70_000, np.int32))
    assert np.asarray(read_rgb(np.full((2, 2), 255, np.int64)))[0, 0, 0] == 255


def test_empty_directory_is_an_error_not_silence(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    with pytest.raises(ImageLoadError, match="no image files"):
        load_images(empty)
    good = tmp_path / "good"  # beside, not below: folders are read recursively
    good.mkdir()
    Image.new("RGB", (4, 4)).save(good / "x.png")
    batch = load_images([good, empty], skip_errors=True)
    assert len(batch) == 1 and "no image files" in batch.errors[0][1]


def test_center_crop_with_scaling_matches_hand_computation():
    # 150 x 100 (w x h); target 50 with crop_pct 0.5: shorter side 100 -> 100, no scaling,
    # crop left = (150 - 50) // 2 = 50. With crop_pct 1.0: scale 0.5 -> 75 x 50, left = 12.
    columns = np.tile(np.arange(150, dtype=np.uint8)[None, :, None], (100, 1, 3))
    image = Image.fromarray(columns)
    kept = Preprocess(size=50, crop_pct=0.5, interpolation="nearest").display(image)
    assert kept[0, :, 0].tolist() == list(range(50, 100))
    halved = Preprocess(size=50, crop_pct=1.0, interpolation="nearest").display(image)
    # nearest at scale 1/2: output column j reads source column floor((j + 0.5) * 2) = 2j + 1
    assert halved.shape == (50, 50, 3)
    assert halved[0, :, 0].tolist() == [2 * (12 + j) + 1 for j in range(50)]
    # rows: a portrait image crops rows the same way (100 wide, 150 tall -> top 50)
    rows = np.ascontiguousarray(columns.transpose(1, 0, 2))
    tall = Preprocess(size=50, crop_pct=0.5, interpolation="nearest").display(Image.fromarray(rows))
    assert tall[:, 0, 0].tolist() == list(range(50, 100))


def test_every_mode_keeps_display_and_tensor_consistent():
    pixels = np.random.default_rng(1).integers(0, 256, (30, 45, 3), np.uint8)
    for mode in ("center_crop", "stretch", "none"):
        preprocess = Preprocess(size=(20, 24), mode=mode)
        image = load_image(pixels, preprocess)
        assert torch.allclose(image.tensor, preprocess.normalize(image.display))
        expected = {"none": (30, 45, 3)}.get(mode, (20, 24, 3))
        assert image.display.shape == expected
