"""Resuming a scan: the saved state is checksummed, read without unpickling code, and
recognises the model's weights, the options and every item; any change is refused with
one line, and ``--restart`` starts over."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tests.helpers.networks import small_convnet
from tests.helpers.scans import SCAN_ARGS, Stop, stop_after, stopped_cli_scan

from convlens.cli import main
from convlens.data.preprocess import Preprocess
from convlens.errors import DataError
from convlens.models.loading import LoadedModel
from convlens.scan.embed import embed
from convlens.scan.stream import STATE_MAGIC
from convlens.scan.topk import top_activating

pytestmark = pytest.mark.usefixtures("one_thread")
PREPROCESS = Preprocess(size=10, mode="stretch", mean=(0.5,) * 3, std=(0.5,) * 3)
SETTINGS = dict(k=2, projections=(), batch_size=2, save_every=1)


def _pictures(folder: Path, count: int = 6) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        pixels = rng.integers(0, 256, (10, 10, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"p{i}.png")
    return folder


def _model() -> LoadedModel:
    return LoadedModel(small_convnet(), "small", PREPROCESS)


def _stopped_scan(tmp_path: Path, model: LoadedModel, **changes) -> tuple[Path, Path]:
    """A scan of 6 pictures stopped after 2 of 3 batches: (data folder, state prefix)."""
    data, state = _pictures(tmp_path / "data"), tmp_path / "state" / "scan"
    with pytest.raises(Stop):
        top_activating(
            model, data, ["3"], checkpoint=state, on_batch=stop_after(2), **SETTINGS | changes
        )
    return data, state


def _state_file(state: Path) -> Path:
    return state.with_name(f"{state.name}.rank0-of-1.pt")


def _resume(model, data, state, **changes):
    return top_activating(model, data, ["3"], checkpoint=state, resume=True, **SETTINGS | changes)


def test_an_unchanged_run_resumes_to_the_uninterrupted_result(tmp_path):
    model = _model()
    data, state = _stopped_scan(tmp_path, model)
    seen: list[int] = []
    resumed = _resume(model, data, state, on_batch=seen.append)
    whole = top_activating(model, data, ["3"], **SETTINGS)
    assert seen == [3]
    assert [[(u.index, u.value) for u in units] for units in resumed.layers["3"].channels] == [
        [(u.index, u.value) for u in units] for units in whole.layers["3"].channels
    ]


def test_other_weights_are_refused(tmp_path):
    model = _model()
    data, state = _stopped_scan(tmp_path, model)
    with torch.no_grad():
        model.module[0].bias[0] += 1e-3  # same file name, same architecture, one weight off
    with pytest.raises(DataError, match=r"model's weights.*--restart"):
        _resume(model, data, state)


def test_changed_options_are_named(tmp_path):
    model = _model()
    data, state = _stopped_scan(tmp_path, model)
    with pytest.raises(DataError, match=r"options changed \(k 2 -> 3\).*--restart"):
        _resume(model, data, state, k=3)
    with pytest.raises(DataError, match=r"batch_size 2 -> 3"):
        _resume(model, data, state, batch_size=3)
    other = LoadedModel(model.module, "small", Preprocess(size=12, mode="stretch"))
    with pytest.raises(DataError, match=r"options changed \(preprocess"):
        _resume(other, data, state)


def test_a_changed_image_is_named(tmp_path):
    model = _model()
    data, state = _stopped_scan(tmp_path, model)
    picture = data / "p4.png"
    stat = picture.stat()
    os.utime(picture, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with pytest.raises(DataError, match=r"p4.png changed .*modification time.*--restart"):
        _resume(model, data, state)
    Image.new("RGB", (12, 10)).save(picture)
    with pytest.raises(DataError, match=r"p4.png changed .*\(its size\)"):
        _resume(model, data, state)
    picture.unlink()
    with pytest.raises(DataError, match=r"it has 5 items, the state was saved with 6"):
        _resume(model, data, state)


def test_restart_ignores_an_incompatible_state(tmp_path):
    model = _model()
    data, state = _stopped_scan(tmp_path, model)
    seen: list[int] = []
    top_activating(
        model, data, ["3"], checkpoint=state, on_batch=seen.append, **SETTINGS | {"k": 3}
    )
    assert seen == [1, 2, 3]  # from the start
    assert _resume(model, data, state, k=3).scanned == 6  # the new state resumes


def _corrupt(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "flipped bit":
        data[len(data) // 2] ^= 0x10
    elif how == "truncated":
        data = data[: len(data) - 100]
    elif how == "foreign":  # a valid checksum over something that is no scan state
        buffer = io.BytesIO()
        torch.save({"batches": 2}, buffer)
        payload = buffer.getvalue()
        data = STATE_MAGIC + hashlib.sha256(payload).digest() + payload
    else:
        data = bytearray()
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("how", "says"),
    [
        ("flipped bit", "is damaged"),
        ("truncated", "is damaged"),
        ("empty", "is empty"),
        ("foreign", "is not a convlens scan state"),
    ],
)
def test_a_damaged_state_is_one_clear_error(tmp_path, how, says):
    model = _model()
    data, state = _stopped_scan(tmp_path, model)
    _corrupt(_state_file(state), how)
    with pytest.raises(DataError, match=rf"{says}.*--restart") as caught:
        _resume(model, data, state)
    assert "\n" not in str(caught.value)


class Planted:
    """Unpickling this creates ``marker`` (as an attacker's code would run)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _planted_payload(marker: Path) -> bytes:
    buffer = io.BytesIO()
    torch.save({"fingerprint": Planted(marker), "batches": 1}, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("with_checksum", [True, False])
def test_a_planted_pickle_in_the_state_never_runs(tmp_path, with_checksum):
    model = _model()
    data, state = _stopped_scan(tmp_path, model)
    marker = tmp_path / "ran"
    payload = _planted_payload(marker)
    if with_checksum:  # a forger who also writes a valid checksum
        payload = STATE_MAGIC + hashlib.sha256(payload).digest() + payload
    _state_file(state).write_bytes(payload)
    with pytest.raises(DataError, match="--restart"):
        _resume(model, data, state)
    assert not marker.exists()


def test_embed_resume_refuses_other_weights(tmp_path):
    model = _model()
    data = _pictures(tmp_path / "data")
    state = tmp_path / "state" / "embed"
    with pytest.raises(Stop):
        embed(
            model, data, "3", batch_size=2, checkpoint=state, save_every=1, on_batch=stop_after(1)
        )
    with torch.no_grad():
        model.module[3].weight.mul_(2)
    with pytest.raises(DataError, match="model's weights"):
        embed(model, data, "3", batch_size=2, checkpoint=state, resume=True)


def test_cli_names_the_change_in_one_line_and_restart_starts_over(tmp_path, capsys):
    args = SCAN_ARGS
    out = tmp_path / "out"
    stopped_cli_scan(out)
    capsys.readouterr()
    assert main(["scan", *args, "--k", "3", "--out", str(out), "--resume"]) == 1
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "k 2 -> 3" in error and "--restart" in error
    assert main(["scan", *args, "--k", "3", "--out", str(out), "--resume", "--restart"]) == 0
    assert main(["scan", *args, "--k", "3", "--out", str(tmp_path / "whole")]) == 0
    whole = (tmp_path / "whole" / "features.2" / "topk.json").read_text()
    assert (out / "features.2" / "topk.json").read_text() == whole
    _state_file(out / ".state" / "scan").write_bytes(b"")
    capsys.readouterr()
    assert main(["scan", *args, "--k", "3", "--out", str(out), "--resume"]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "is empty" in error and "aborted" not in error


def test_each_saved_state_is_in_the_ledger_before_the_run_goes_on(tmp_path, monkeypatch):
    # a run killed right after a save (no exit handler runs) must leave a state that --resume
    # accepts as convlens's: its ledger entry cannot wait for the periodic flush
    import convlens.files as files

    monkeypatch.setattr(files, "_FLUSH_SECONDS", 1e9)
    model, data = _model(), _pictures(tmp_path / "data")
    state = tmp_path / "out" / ".state" / "scan"
    owned_after_each_save = []

    def check(_batch: int) -> None:  # what a new process would read: the ledger on disk
        path = _state_file(state)
        entry = files.ledger_entries(path.parent).get(path.name, {})
        owned_after_each_save.append(entry.get("sha256") == files._digest(path))

    with files.writing(tmp_path / "out", "scan"):
        top_activating(model, data, ["3"], checkpoint=state, on_batch=check, **SETTINGS)
    assert owned_after_each_save == [True, True, True]
