"""The HTML report (on the 64-px synthetic-shapes model) and the map views it shares with the
web view."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import pytest
import torch
from PIL import Image

from convlens import load_model
from convlens.render.boxes import draw_boxes
from convlens.render.images import display_range, map_display
from convlens.report import build_report, map_box, write_report
from convlens.report.build import box_share

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def shapes():
    return load_model("synthetic-shapes")


@pytest.fixture(scope="module")
def page(shapes):
    html, skipped = build_report(shapes, ["cat", "no-such-file.png"], "gradcam,saliency", top=2)
    return html, skipped


def test_report_is_self_contained(page):
    html, _ = page
    sources = re.findall(r'(?:src|href)="([^"]*)"', html)
    assert sources and all(s.startswith(("data:image/png;base64,", "#")) for s in sources)
    assert "<script" not in html and "http://" not in html and "https://" not in html
    for uri in (s for s in sources if s.startswith("data:")):
        image = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
        assert image.format == "PNG" and min(image.size) > 0


def test_every_toc_link_has_its_anchor_and_every_figure_a_caption(page):
    html, _ = page
    ids = re.findall(r'id="([^"]+)"', html)
    assert len(ids) == len(set(ids))
    toc = html[html.index('<nav class="toc"') : html.index("</nav>")]
    links = re.findall(r'href="#([^"]+)"', toc)
    assert set(links) <= set(ids)
    assert {"cat", "cat.methods", "cat.box", "cat.contrast", "cat.occlusion", "cat.stages",
            "cat.features", "model-filters"} <= set(links)  # fmt: skip
    figures = re.findall(r"<figure.*?</figure>", html, flags=re.S)
    assert figures and all(re.search(r"<figcaption>[^<]{10,}</figcaption>", f) for f in figures)
    assert "@media print" in html


def test_methods_for_each_top_class_and_skipped_inputs(page, shapes):
    from convlens.attribution.explain import top_predictions
    from convlens.data.images import load_images

    html, skipped = page
    ranked = top_predictions(shapes, load_images(["cat"], shapes.preprocess).tensor)[0]
    for rank in (1, 2):
        label = ranked[rank - 1]["label"]
        assert f"gradcam for {label} (rank {rank}" in html
        assert f"saliency for {label} (rank {rank}" in html
    assert f"Why {ranked[0]['label']} rather than {ranked[1]['label']}" in html
    assert [source for source, _ in skipped] == ["no-such-file.png"]


def test_report_cli_writes_the_page(tmp_path):
    from convlens.cli import main

    out = tmp_path / "r.html"
    args = ["report", "coffee", "--model", "synthetic-shapes", "--method", "gradcam"]
    assert main([*args, "--top", "1", "--out", str(out)]) == 0
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert "gradcam for" in page and "saliency for" not in page  # only the chosen method
    assert (
        main([*args[:-1], "nope", "--out", str(out)]) == 2
    )  # a usage error, before the model loads


def test_report_takes_the_old_methods_spelling(tmp_path):
    from convlens.cli import main

    out = tmp_path / "r.html"
    args = ["report", "coffee", "--model", "synthetic-shapes", "--methods", "saliency"]
    assert main([*args, "--top", "1", "--out", str(out)]) == 0
    page = out.read_text()
    assert "saliency for" in page and "gradcam for" not in page


def test_write_report_creates_folders(tmp_path):
    path = write_report(tmp_path / "a" / "b.html", "<p>x</p>")
    assert path.read_text() == "<p>x</p>"


def test_map_box_is_the_largest_region_above_a_fifth():
    values = torch.zeros(20, 30)
    values[4:9, 10:25] = 1.0  # the largest region
    values[15:17, 2:4] = 0.5  # a smaller one
    assert map_box(values) == (10.0, 4.0, 25.0, 9.0)
    assert map_box(torch.ones(5, 5)) is None  # a constant map has no region
    signed = -values.clone()
    signed[0:2, 0:3] = 0.3  # the only positive evidence
    assert map_box(signed) == (0.0, 0.0, 3.0, 2.0)


def test_display_range_is_what_map_display_draws_at_the_ends():
    rng = torch.Generator().manual_seed(0)
    for values in (torch.rand(12, 12, generator=rng), torch.randn(12, 12, generator=rng)):
        low, high, signed = display_range(values)
        unit, signed_again = map_display(values)
        assert signed == signed_again
        at_low, at_high = (values <= low), (values >= high)
        assert torch.all(unit[at_low] == 0) and torch.all(unit[at_high] == 1)


def test_draw_boxes_outlines_without_touching_the_input():
    image = np.full((10, 12, 3), 7, np.uint8)
    drawn = draw_boxes(image, torch.tensor([[2.0, 3.0, 8.0, 7.0]]), colour=(0, 255, 0), width=1)
    assert (image == 7).all()
    green = (drawn == (0, 255, 0)).all(axis=2)
    assert green[3, 2:8].all() and green[6, 2:8].all() and green[3:7, 2].all()
    assert green[3:7, 7].all() and not green[4:6, 3:7].any() and not green[0].any()


def test_every_map_has_its_colour_bar_and_value_range(page):
    html, _ = page
    figures = re.findall(r"<figure.*?</figure>", html, flags=re.S)
    maps = [f for f in figures if 'class="map"' in f]
    # 2 classes x 2 methods, the boxed map, the contrast and occlusion
    assert len(maps) == 7
    for item in maps:
        assert re.search(r'<img class="bar" src="data:image/png;base64,', item)
        assert re.search(r"raw values -?[\d.e+-]+ \(blue\) \.\. -?[\d.e+-]+ \(red\)", item)
    assert "the raw range of each map above" in html and "the raw scale of each tile" in html


def test_maps_sit_in_a_grid_of_fixed_columns(page):
    html, _ = page
    methods = html[html.index('id="cat.methods"') : html.index('id="cat.box"')]
    grids = re.findall(r'<div class="grid" style="--columns: (\d+)">', methods)
    assert grids == ["2", "2"]  # one row per class, one column per method
    assert "grid-template-columns: repeat(var(--columns)" in html


def test_a_box_over_most_of_the_image_gets_a_note(default_model):
    """The default model's Grad-CAM of the cat is above a fifth of its range everywhere
    (box = the whole image); of the coffee cup it is not (no note)."""
    from convlens.data.images import load_images
    from convlens.report.build import _box_section

    notes = {}
    for name in ("cat", "coffee"):
        batch = load_images([name], default_model.preprocess)
        blocks = "".join(_box_section(default_model, batch, name).blocks)
        notes[name] = re.search(r"The box covers (\d+)% of the image", blocks)
    assert notes["cat"] is not None and notes["cat"].group(1) == "100"
    assert notes["coffee"] is None


def test_box_share():
    assert box_share((0, 0, 10, 20), (20, 10)) == 1.0
    assert box_share((2, 5, 6, 15), (20, 10)) == pytest.approx(0.2)
    assert box_share((5, 5, 5, 9), (20, 10)) == 0.0


@pytest.mark.parametrize("where", ["folder", "under a file"])
def test_report_out_is_checked_before_any_work(tmp_path, monkeypatch, capsys, where):
    import time

    import convlens.models.loading as loading
    from convlens.cli import main

    monkeypatch.setattr(loading, "_load_by_name", lambda *a: pytest.fail("model was loaded"))
    (tmp_path / "file").write_text("mine")
    out = tmp_path if where == "folder" else tmp_path / "file" / "r.html"
    start = time.monotonic()
    code = main(["report", "cat", "--out", str(out)])
    assert time.monotonic() - start < 5
    assert code in (1, 2)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and str(out) in err
    assert (tmp_path / "file").read_text() == "mine"


def test_section_ids_are_unique_whatever_the_images_are_called(shapes, tmp_path):
    # an image named like another image's section or like the page's own ids
    names = ["cat", "cat-methods", "top", "model-filters"]
    for index, name in enumerate(names):
        pixels = np.random.default_rng(index).integers(0, 255, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / f"{name}.png")
    html, _ = build_report(shapes, [str(tmp_path / f"{n}.png") for n in names], "saliency", top=1)
    ids = re.findall(r' id="([^"]*)"', html)
    assert len(ids) == len(set(ids)) and {"top", "model-filters", "cat", "cat.methods"} <= set(ids)
    links = re.findall(r'href="#([^"]*)"', html)
    assert links and set(links) <= set(ids)  # every contents link lands on its own section


def test_a_model_with_fewer_classes_than_top_gets_all_of_them():
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(4, 2),
    )
    html, _ = build_report(load_model(net, labels=["no", "yes"]), ["cat"], "saliency", top=3)
    assert "Each row explains one of the 2 most probable classes" in html
