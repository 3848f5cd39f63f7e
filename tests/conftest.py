"""Shared fixtures: deterministic seeds, the default model (loaded once), model state checks.
The tiny networks tests share are in `tests.helpers.networks`."""

from __future__ import annotations

import os

# One intra-op thread for the whole suite, and for the Python processes tests start (CLI
# runs, torchrun workers): every tensor here is tiny, and on the two shared cores a second
# thread mostly spins, which doubled the suite's CPU time (33 s -> 14 s of CPU for
# tests/attribution/test_cam_reference.py, 2026-12-06, load average 4.6). No test's
# property depends on the thread count.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


def pytest_addoption(parser):
    parser.addoption(
        "--notebooks",
        action="store_true",
        help="also execute the tutorial notebooks (docs/tutorials; a minute or two each)",
    )


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` are skipped, with the reason, where no CUDA device is present;
    tests marked ``notebook`` unless ``--notebooks`` is given (.ci/run gives it)."""
    skips = []
    if not torch.cuda.is_available():
        skips.append(
            ("cuda", pytest.mark.skip(reason="needs a CUDA device (none on this machine)"))
        )
    if not config.getoption("--notebooks"):
        skips.append(
            ("notebook", pytest.mark.skip(reason="executes a notebook: run with --notebooks"))
        )
    for item in items:
        for marker, skip in skips:
            if item.get_closest_marker(marker) is not None:
                item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    """Seed 0, on one thread: the ``train`` commands set their own ``--threads`` (default
    2) for the rest of the process, which would otherwise hold for every later test.
    Seeds the CPU generator directly (and CUDA's where there is one): ``torch.manual_seed``
    also queues a seed for each absent accelerator with a formatted stack trace, about 1 ms
    under pytest's deep stacks, before every test."""
    torch.default_generator.manual_seed(0)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(0)
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)
    yield


@pytest.fixture
def one_thread():
    """One intra-op thread for the test (restored after), also where a test or a module
    changed the suite-wide setting above: small tensors run faster on one, and far faster
    on a busy machine. Use with ``pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def no_network(monkeypatch) -> list:
    """Offline (``CONVLENS_OFFLINE=1``, the documented switch) with every TCP connection
    refused and recorded: the list of attempted addresses, which tests expect empty."""
    import socket

    attempts: list = []

    def refuse(address, *args, **kwargs):
        attempts.append(address)
        raise OSError("network is unreachable")

    monkeypatch.setenv("CONVLENS_OFFLINE", "1")
    monkeypatch.setattr(socket, "create_connection", refuse)
    return attempts


@pytest.fixture(scope="session")
def default_model():
    """The embedded EfficientNet-Lite0 (LoadedModel). Tests must not modify it."""
    from convlens import load_model

    return load_model()


def model_state(model: torch.nn.Module) -> dict:
    """Everything a method must leave as it found it: per-module type, training flag,
    inplace flag, hook counts; per-parameter requires_grad, .grad and value."""
    modules = {}
    for name, module in model.named_modules():
        hooks = tuple(
            len(getattr(module, attr, {}))
            for attr in (
                "_forward_hooks",
                "_forward_pre_hooks",
                "_backward_hooks",
                "_backward_pre_hooks",
            )
        )
        modules[name] = (type(module), module.training, getattr(module, "inplace", None), hooks)
    params = {
        name: (p.requires_grad, None if p.grad is None else p.grad.clone(), p.detach().clone())
        for name, p in model.named_parameters()
    }
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    return {"modules": modules, "params": params, "buffers": buffers}


def assert_same_state(before: dict, after: dict) -> None:
    assert before["modules"] == after["modules"]
    assert before["params"].keys() == after["params"].keys()
    for name, (requires_grad, grad, value) in before["params"].items():
        requires_grad2, grad2, value2 = after["params"][name]
        assert requires_grad == requires_grad2, name
        assert (grad is None) == (grad2 is None), f".grad of {name} changed"
        if grad is not None:
            assert torch.equal(grad, grad2), name
        assert torch.equal(value, value2), name
    for name, value in before["buffers"].items():
        assert torch.equal(value, after["buffers"][name]), f"buffer {name} changed"


@pytest.fixture
def unchanged():
    """``with unchanged(model, *tensors): ...`` asserts the model and tensors are left as
    they were (also checks tensors' requires_grad and .grad)."""
    from contextlib import contextmanager

    @contextmanager
    def check(model: torch.nn.Module, *tensors: torch.Tensor):
        before = model_state(model)
        saved = [(t.detach().clone(), t.requires_grad, t.grad) for t in tensors]
        try:
            yield
        finally:
            assert_same_state(before, model_state(model))
            for tensor, (value, requires_grad, grad) in zip(tensors, saved, strict=True):
                assert torch.equal(tensor.detach(), value), "input tensor values changed"
                assert tensor.requires_grad == requires_grad, "input requires_grad changed"
                assert tensor.grad is grad, "input .grad changed"

    return check


@pytest.fixture
def first_tile_panels(monkeypatch) -> dict[str, list[str]]:
    """``convlens explain`` draws each panel from its first tile only (a real file, by the
    real writer) and records every panel's tiles here, ``{file stem: [tile group (the
    method), ...]}``. For tests of which methods ran on a ``--method all`` run, where drawing
    some 30 tiles (seconds of matplotlib layout per panel) proves nothing more: a whole
    ``--method all`` panel is drawn and measured by test_cli_explain's
    test_all_methods_on_a_tiny_model_file_with_progress_bars."""
    from convlens.cli import explain_tiles

    panels: dict[str, list[str]] = {}
    write_panel = explain_tiles.write_panel

    def first_tile(display, tiles, top, stem, picture, limits=None):
        panels[stem.name] = [tile.group for tile in tiles]
        first = None if limits is None else limits[:1]
        return write_panel(display, tiles[:1], top, stem, picture, first)

    monkeypatch.setattr(explain_tiles, "write_panel", first_tile)
    return panels


@pytest.fixture(scope="session")
def two_process_outputs(tmp_path_factory):
    """The folder of `tests.helpers.torchrun.TWO_PROCESS_COMMANDS`' outputs from the suite's
    one two-process torchrun launch (``<folder>/scan``, ``/embed``, ``/attribute``),
    started by the first test that asks."""
    from tests.helpers.torchrun import torchrun_commands

    return torchrun_commands(tmp_path_factory.mktemp("torchrun"))
