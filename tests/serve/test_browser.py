"""End to end in headless Chromium (Debian's ``chromium`` package, driven by Playwright; never
a browser download): the web view with the default model, and a report page.

Set ``CONVLENS_SCREENSHOTS=docs/images/web`` to also write the screenshots used in
docs/web.md; with ``CONVLENS_REPORT_PAGE=FILE`` (a page ``convlens report`` wrote) the report
test opens that page instead of building a small one.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import pytest
import torch

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium "
        "chromium-driver; .ci/run installs it)",
    ),
]
sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright package")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serve(app):
    """Run ``app`` with uvicorn on a free loopback port in a thread; yields its URL."""
    import uvicorn

    port = _free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def server_url(default_model):
    from convlens.serve import create_app

    yield from _serve(create_app(default_model))


@pytest.fixture(scope="module")
def atlas_server_url(tmp_path_factory):
    """The shapes model, with a small scan folder given as its atlas."""
    from tests.serve.test_atlas import atlas_folder

    from convlens import load_model
    from convlens.serve import create_app

    atlas = atlas_folder(tmp_path_factory.mktemp("atlas"))
    yield from _serve(create_app(load_model("synthetic-shapes"), atlas=atlas))


PASS_SECONDS = 0.2  # each forward pass of `SlowWhenTold` while told to be slow


class SlowWhenTold(torch.nn.Module):
    """``net`` with its forward passes counted (``passes``), each waiting `PASS_SECONDS`
    while ``slow`` is set: a method of many passes runs long enough to be interrupted."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net, self.slow, self.passes = net, threading.Event(), 0

    def forward(self, x):
        self.passes += 1
        if self.slow.is_set():
            time.sleep(PASS_SECONDS)
        return self.net(x)


@pytest.fixture(scope="module")
def shapes_net():
    from convlens import load_model

    shapes = load_model("synthetic-shapes")
    slowed = SlowWhenTold(shapes.module)
    return load_model(slowed, preprocess=shapes.preprocess, labels=shapes.labels)


@pytest.fixture(scope="module")
def shapes_url(shapes_net):
    """The shapes model (64 px), slowed down on demand (`SlowWhenTold`)."""
    from convlens.serve import create_app

    yield from _serve(create_app(shapes_net))


@pytest.fixture(scope="module")
def odd_layers_url():
    """A net with a block named Conv2dNormActivation and a convolution that never runs."""
    from tests.serve.test_app import BlockAndUnusedConvNet

    from convlens import Preprocess, load_model
    from convlens.serve import create_app

    net = BlockAndUnusedConvNet()
    yield from _serve(
        create_app(load_model(net, labels=["a", "b", "c"], preprocess=Preprocess(size=32)))
    )


class PageWatch:
    """Console errors, failed requests (those the page aborts apart), 4xx/5xx answers and
    off-site requests of a page."""

    def __init__(self, page, allowed_prefix: str) -> None:
        self.errors: list[str] = []
        page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.aborted: list[str] = []  # requests the page itself aborted (not errors)

        def failed(request):
            if request.failure == "net::ERR_ABORTED":
                self.aborted.append(request.url)
            else:
                self.errors.append(f"failed: {request.failure} {request.url}")

        page.on("requestfailed", failed)
        page.on("response", lambda r: r.status >= 400 and self.errors.append(f"{r.status} {r.url}"))

        def check_host(request):
            if not request.url.startswith((allowed_prefix, "data:")):
                self.errors.append(f"off-site request: {request.url}")

        page.on("request", check_host)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        yield chromium
        chromium.close()


def _screenshot(page, name: str, full_page: bool = True) -> None:
    folder = os.environ.get("CONVLENS_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / name), full_page=full_page)


def test_upload_explain_switch_method_and_layer(browser, server_url, default_model):
    from convlens.attribution.explain import top_predictions
    from convlens.data.images import load_images
    from convlens.data.samples import sample_path

    cat = sample_path("cat")
    expected = top_predictions(default_model, load_images([cat], default_model.preprocess).tensor)
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    watch = PageWatch(page, server_url)
    page.goto(server_url + "/")
    page.wait_for_function("document.querySelectorAll('#method option').length > 3")
    page.select_option("#method", "saliency")
    page.set_input_files("#image-file", str(cat))
    page.wait_for_function(
        "document.querySelector('#explained').textContent.startsWith('saliency')"
    )
    page.select_option("#method", "gradcam")  # pick Grad-CAM
    page.wait_for_function("document.querySelector('#explained').textContent.startsWith('gradcam')")
    overlay = page.locator("#overlay")
    assert overlay.is_visible()
    assert overlay.get_attribute("src").startswith("data:image/png;base64,")
    assert page.evaluate("document.querySelector('#overlay').naturalWidth") > 0
    assert page.text_content("#class-name") == expected[0][0]["label"]
    page.wait_for_function("document.querySelectorAll('#predictions li').length === 5")
    assert page.text_content("#predictions li").startswith(expected[0][0]["label"])
    assert page.locator("#box").is_visible() and page.locator("#colour-bar").is_visible()
    page.click("#features-button")
    page.wait_for_function(
        "document.querySelector('#browse-status').textContent.startsWith('features')"
    )
    assert page.evaluate("document.querySelector('#browse-image').naturalWidth") > 0
    _screenshot(page, "app.png")

    layers = page.eval_on_selector_all("#layer option", "items => items.map(o => o.value)")
    chosen = layers[len(layers) // 2]
    before = overlay.get_attribute("src")
    page.select_option("#layer", chosen)  # switch layer
    page.wait_for_function(
        f"document.querySelector('#explained').textContent.startsWith('gradcam at {chosen}:')"
    )
    assert overlay.get_attribute("src") != before
    page.select_option("#method", "guided_backprop")  # switch method: the layer is unused
    page.wait_for_function(
        "document.querySelector('#explained').textContent.startsWith('guided_backprop')"
    )
    assert page.locator("#layer").is_disabled()
    page.click("#filters-button")
    page.wait_for_function(
        "document.querySelector('#browse-status').textContent.startsWith('filters')"
    )
    assert watch.errors == []
    page.close()


VISIBLE_IMAGES_WITHOUT_SOURCE = (
    "[...document.images].filter(i => !i.getAttribute('src') && i.getClientRects().length)"
    ".map(i => i.id)"
)


def test_page_on_load_shows_no_empty_images_and_the_pickable_layers(browser, server_url):
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    watch = PageWatch(page, server_url)
    page.goto(server_url + "/")
    page.wait_for_function("document.querySelectorAll('#layer option').length > 3")
    assert page.evaluate(VISIBLE_IMAGES_WITHOUT_SOURCE) == []
    table = page.evaluate("fetch('/api/layers').then(r => r.json())")
    spatial = [row for row in table["layers"] if row["spatial"]]
    listed = page.eval_on_selector_all("#layer option", "items => items.map(o => o.value)")
    assert listed == [row["name"] for row in spatial if row["pickable"]]
    assert len(listed) < len(spatial) and page.input_value("#layer") == table["default"]
    page.check("#all-layers")
    everything = page.eval_on_selector_all("#layer option", "items => items.map(o => o.value)")
    assert everything == [row["name"] for row in spatial]
    assert page.input_value("#layer") == table["default"]
    assert watch.errors == []
    page.close()


def test_contrast_is_titled_with_both_classes_and_reexplaining_logs_nothing(
    browser, server_url, default_model
):
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    watch = PageWatch(page, server_url)
    page.goto(server_url + "/")
    page.wait_for_function("document.querySelectorAll('#sample option').length > 1")
    page.fill("#contrast", "cup")
    page.select_option("#sample", "coffee")
    page.wait_for_function(
        "document.querySelector('#class-name').textContent.includes(' rather than ')"
    )
    page.wait_for_function("document.querySelector('#status').textContent.startsWith('Done')")
    assert page.text_content("#class-name") == "espresso rather than cup"
    explained = page.text_content("#explained")
    assert "logit difference" in explained
    assert "p(espresso) = " in explained and "p(cup) = " in explained
    assert page.evaluate(VISIBLE_IMAGES_WITHOUT_SOURCE) == []
    _screenshot(page, "contrast.png")
    for _ in range(3):  # re-explain at once, over a running request: cancelled quietly
        page.click("#explain-button")
    page.wait_for_function("document.querySelector('#status').textContent.startsWith('Done')")
    assert page.text_content("#class-name") == "espresso rather than cup"
    assert watch.errors == []
    page.close()


def test_atlas_pictures_and_page_are_shown(browser, atlas_server_url):
    server_url = atlas_server_url
    from tests.serve.test_atlas import LAYERS

    page = browser.new_page(viewport={"width": 1200, "height": 900})
    watch = PageWatch(page, server_url)
    page.goto(server_url + "/")
    page.wait_for_function("document.querySelectorAll('#atlas-thumbs img').length === 2")
    assert page.locator("#atlas").is_visible()
    groups = page.eval_on_selector_all("#atlas-group option", "items => items.map(o => o.value)")
    assert groups == LAYERS
    page.select_option("#atlas-group", LAYERS[1])
    page.locator("#atlas-thumbs button").nth(1).click()
    page.wait_for_function(
        "(() => { const i = document.querySelector('#atlas-image');"
        " return !i.hidden && i.complete && i.naturalWidth > 0; })()"
    )
    assert page.text_content("#atlas-status") == f"{LAYERS[1]}/channel-0001.png"
    page.goto(server_url + "/atlas/")  # the atlas page itself, with its pictures
    page.wait_for_load_state("load")
    broken = page.evaluate(
        "[...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).length"
    )
    assert broken == 0 and page.evaluate("document.images.length") == 4
    assert watch.errors == []
    page.close()


def test_report_page_opens_without_failed_requests(browser, tmp_path):
    from convlens import load_model
    from convlens.report import build_report, write_report

    given = os.environ.get("CONVLENS_REPORT_PAGE")
    if given:
        path = Path(given).resolve()
    else:
        shapes = load_model("synthetic-shapes")
        page_html, _ = build_report(shapes, ["cat"], "gradcam,saliency", top=2)
        path = write_report(tmp_path / "report.html", page_html)
    # drawn at 3/4 scale: the whole width of the page in a picture of moderate size
    page = browser.new_page(viewport={"width": 1500, "height": 1100}, device_scale_factor=0.75)
    watch = PageWatch(page, path.as_uri())
    page.goto(path.as_uri())
    page.wait_for_load_state("load")
    broken = page.evaluate(
        "[...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).length"
    )
    assert broken == 0
    targets = page.evaluate(
        "[...document.querySelectorAll('nav.toc a')].map(a => a.getAttribute('href').slice(1))"
    )
    assert targets and all(page.locator(f"[id='{t}']").count() == 1 for t in targets)
    assert watch.errors == []
    page.evaluate("document.querySelector('h3').scrollIntoView()")  # the first image's maps
    _screenshot(page, "report.png", full_page=False)
    page.close()


def _open(browser, url: str):
    """A page of the web view at ``url``, with its samples listed, and its `PageWatch`."""
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    watch = PageWatch(page, url)
    page.goto(url + "/")
    page.wait_for_function("document.querySelectorAll('#sample option').length > 1")
    return page, watch


def _explained(page, action) -> None:
    """Do ``action()`` (which starts an explanation) and wait until it is done."""
    page.evaluate("document.querySelector('#status').textContent = ''")
    action()
    page.wait_for_function(
        "document.querySelector('#status').textContent.startsWith('Done')"
        " && document.querySelector('#cancel-button').disabled"
    )


def _api_explain(page, fields: dict) -> dict:
    """The answer of POST /api/explain with ``fields``, asked from the page."""
    return page.evaluate(
        "async (fields) => { const form = new FormData();"
        " for (const [k, v] of Object.entries(fields)) form.append(k, v);"
        " return (await fetch('/api/explain', {method: 'POST', body: form})).json(); }",
        fields,
    )


DONE_SHOWN = """() => {
  window.doneShown = [];  // [status, overlay] each time the status turns to "Done: ..."
  const status = document.querySelector('#status');
  new MutationObserver(() => {
    if (status.textContent.startsWith('Done')) {
      window.doneShown.push([status.textContent, document.querySelector('#overlay').src]);
    }
  }).observe(status, {childList: true, characterData: true, subtree: true});
}"""


def test_changing_the_image_cancels_the_slow_method_and_shows_only_the_new_image(
    browser, shapes_url, shapes_net
):
    net = shapes_net.module
    page, watch = _open(browser, shapes_url)
    coffee = _api_explain(page, {"sample": "coffee", "method": "scorecam"})
    page.select_option("#method", "scorecam")  # several passes, each slow while told
    net.slow.set()  # also the new image's prediction: it would be answered after the old map
    try:
        page.select_option("#sample", "cat")
        page.wait_for_function(
            "document.querySelector('#status').textContent.startsWith('Running')"
        )
        started = net.passes
        deadline = time.monotonic() + 30
        while net.passes < started + 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        page.evaluate(DONE_SHOWN)
        page.select_option("#sample", "coffee")
        page.wait_for_function(
            "(wanted) => window.doneShown.some(([_, overlay]) => overlay === wanted)",
            arg=coffee["overlay"],
        )
    finally:
        net.slow.clear()
    shown = [
        (status, overlay == coffee["overlay"])
        for status, overlay in page.evaluate("window.doneShown")
    ]
    assert shown == [(f"Done: {coffee['title']}.", True)]  # never the cat's map
    assert page.input_value("#sample") == "coffee"
    assert watch.errors == []
    page.close()


def test_show_box_draws_the_current_maps_box_or_none(browser, shapes_url):
    page, watch = _open(browser, shapes_url)
    _explained(page, lambda: page.select_option("#sample", "cat"))
    assert page.locator("#box").is_visible()
    # the map of "circle" on the coins is constant: no box
    page.evaluate("document.querySelector('#target').value = 'circle'")
    _explained(page, lambda: page.select_option("#sample", "coins"))
    assert page.get_attribute("#box", "data-box") == "" and page.locator("#box").is_hidden()
    page.uncheck("#show-box")
    page.check("#show-box")
    assert page.locator("#box").is_hidden()
    page.uncheck("#show-box")  # a new map while the box is not shown
    _explained(page, lambda: page.select_option("#sample", "coffee"))
    assert page.locator("#box").is_hidden()
    page.check("#show-box")
    box = _api_explain(page, {"sample": "coffee", "target": "circle"})["box"]
    assert box is not None and page.locator("#box").is_visible()
    assert page.get_attribute("#box", "data-box") == ",".join(str(round(v)) for v in box)
    left = page.evaluate("document.querySelector('#box').style.left")
    assert float(left.rstrip("%")) == pytest.approx(100 * box[0] / 64)
    assert watch.errors == []
    page.close()


def test_a_failed_request_clears_the_earlier_result(browser, shapes_url):
    page, watch = _open(browser, shapes_url)
    _explained(page, lambda: page.select_option("#sample", "cat"))
    assert page.locator("#overlay").is_visible() and page.locator("#box").is_visible()
    text = {"name": "notes.png", "mimeType": "image/png", "buffer": b"not an image"}
    with page.expect_response(lambda r: r.url.endswith("/api/explain")):
        page.set_input_files("#image-file", files=[text])
    page.wait_for_function(
        "document.querySelector('#status').classList.contains('error')"
        " && document.querySelector('#cancel-button').disabled"
    )
    for element in ("#overlay", "#colour-bar", "#box"):
        assert page.locator(element).is_hidden(), element
    for element in ("#class-name", "#explained", "#scale-text"):
        assert page.text_content(element) == "", element
    assert page.locator("#predictions li").count() == 0
    assert page.text_content("#status")
    assert [error for error in watch.errors if "400" not in error] == []
    page.close()


def test_unticking_all_layers_returns_an_unlisted_choice_to_the_default_layer(
    browser, odd_layers_url
):
    page, watch = _open(browser, odd_layers_url)
    default = page.evaluate("fetch('/api/layers').then(r => r.json())")["default"]
    first = page.eval_on_selector_all("#layer option", "items => items[0].value")
    assert default != first
    page.check("#all-layers")
    for select in ("#layer", "#browse-layer"):
        page.select_option(select, "stem.1")  # a BatchNorm2d: only in the full list
    page.uncheck("#all-layers")
    assert page.input_value("#layer") == default == page.input_value("#browse-layer")
    page.select_option("#layer", first)  # a listed choice is kept
    page.check("#all-layers")
    page.uncheck("#all-layers")
    assert page.input_value("#layer") == first
    assert watch.errors == []
    page.close()


def test_a_convolution_that_never_runs_leaves_the_page_working(browser, odd_layers_url):
    page, watch = _open(browser, odd_layers_url)
    page.wait_for_function("document.querySelector('#status').textContent !== ''")
    assert page.text_content("#status") == "Upload an image or pick a sample."
    assert "aux (5 filters)" in page.eval_on_selector_all(
        "#filter-layer option", "items => items.map(o => o.textContent)"
    )
    page.select_option("#filter-layer", "aux")
    page.click("#filters-button")
    page.wait_for_function(
        "document.querySelector('#browse-status').textContent === 'filters of aux'"
    )
    _explained(page, lambda: page.select_option("#sample", "cat"))
    assert watch.errors == []
    page.close()


def test_the_filter_list_offers_only_convolutions(browser, odd_layers_url):
    page, watch = _open(browser, odd_layers_url)
    listed = page.eval_on_selector_all("#filter-layer option", "items => items.map(o => o.value)")
    assert listed == ["stem.0", "body", "aux"]  # not the Conv2dNormActivation block "stem"
    page.click("#filters-button")  # the first entry, chosen by default
    page.wait_for_function(
        "document.querySelector('#browse-status').textContent === 'filters of stem.0'"
    )
    assert watch.errors == []
    page.close()


def test_a_new_image_takes_the_old_images_feature_maps_off_the_page(browser, shapes_url):
    page, watch = _open(browser, shapes_url)
    _explained(page, lambda: page.select_option("#sample", "cat"))
    page.click("#features-button")
    page.wait_for_function(
        "document.querySelector('#browse-status').textContent.startsWith('features')"
    )
    assert page.locator("#browse-image").is_visible()
    _explained(page, lambda: page.select_option("#sample", "coffee"))
    assert page.locator("#browse-image").is_hidden()  # they were the cat's
    page.click("#filters-button")  # filters belong to the model: they stay
    page.wait_for_function(
        "document.querySelector('#browse-status').textContent.startsWith('filters')"
    )
    _explained(page, lambda: page.select_option("#sample", "cat"))
    assert page.locator("#browse-image").is_visible()
    assert watch.errors == []
    page.close()
