"""Borrow a model: capture layer outputs (and make them differentiable) with hooks that are
always removed, in eval mode that is always undone.

``capture`` is the one place where methods hook a model. With ``gradients=True`` each
captured output is part of an autograd graph, so a method asks for exactly the gradient it
needs with ``torch.autograd.grad(score, cap.activation(name))``; parameter ``.grad`` is
never touched. With ``graph_from_layer=True`` the forward pass runs without autograd up to
the first captured layer, so nothing before it is recorded and the backward pass stops
there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from convlens.errors import LayerError
from convlens.layers.borrow import refuse_scripted
from convlens.layers.find import LayerSpec, resolve_layer
from convlens.layers.tokens import Reshape, auto_reshape, grid_output, is_grid_model
from convlens.models.loading import LoadedModel, as_module


@dataclass
class Capture:
    """What a `capture` block recorded: for each layer name, one output per call."""

    names: list[str]
    calls: dict[str, list[torch.Tensor]] = field(default_factory=dict)

    def activation(self, name: str | None = None, call: int = -1) -> torch.Tensor:
        """Output of ``name`` (default: the only/first captured layer) at call ``call``
        (default the last call, as a module reused in one forward is called more than once)."""
        name = self.names[0] if name is None else name
        if name not in self.names:
            raise LayerError(
                f"layer {name!r} is not captured here (captured: {', '.join(self.names)}); "
                "name it in capture(model, ...)"
            )
        outputs = self.calls.get(name, [])
        if not outputs:
            raise LayerError(
                f"layer {name!r} was not called during the forward pass; "
                "choose a layer the forward pass uses (see 'convlens layers')"
            )
        if not -len(outputs) <= call < len(outputs):
            raise LayerError(
                f"layer {name!r} ran {len(outputs)} time(s) in this forward pass; call must "
                f"be in {-len(outputs)} .. {len(outputs) - 1}, got {call}"
            )
        return outputs[call]

    def all_calls(self, name: str | None = None) -> list[torch.Tensor]:
        name = self.names[0] if name is None else name
        return list(self.calls.get(name, []))

    def clear(self) -> None:
        """Forget every recorded output and keep capturing: for a loop that runs many
        forward passes in one block and reads only the latest."""
        for outputs in self.calls.values():
            outputs.clear()


@contextmanager
def capture(
    model: nn.Module | LoadedModel,
    layers: LayerSpec | Sequence[LayerSpec],
    *,
    gradients: bool = False,
    graph_from_layer: bool = False,
    reshape: Reshape | str | None = "auto",
) -> Iterator[Capture]:
    """Record the outputs of ``layers`` during forward passes run inside the block.

    Args:
        model: the network; its hooks are removed on exit, also after an exception.
        layers: one layer or several (dotted names, indices or module objects).
        gradients: keep each captured output differentiable (a leaf that requires grad
            when nothing upstream does), for ``torch.autograd.grad``.
        graph_from_layer: with ``gradients``, run the forward without autograd up to the
            first captured layer (cheaper; gradients w.r.t. the input are then unavailable).
        reshape: how an output that is an image in another layout is recorded as
            ``Tensor[B, C, h, w]`` (`convlens.layers.tokens`): ``"auto"`` (token grids of
            ViT/DeiT, channels-last maps of Swin, reshapes registered with
            `register_reshape`; plain CNN outputs as they are), ``None`` (every output as
            it is) or a callable ``output -> Tensor[B, C, h, w]`` that selects or permutes
            elements. With ``gradients`` the gradient w.r.t. the recorded grid is exact.

    With ``gradients`` the module's output is replaced by a copy downstream, so an in-place
    activation right after the layer neither changes the captured tensor nor breaks its
    gradient. Without ``gradients`` a detached copy is recorded and the forward pass (and
    any autograd graph through it) is exactly what it would be without the hook.
    """
    model = as_module(model)
    specs = layers if isinstance(layers, (list, tuple)) else [layers]
    refuse_scripted(model, "capture a layer's output (CAM methods, feature maps)")
    resolved = [resolve_layer(model, spec) for spec in specs]
    result = Capture(names=[name for name, _ in resolved])
    result.calls = {name: [] for name in result.names}
    handles = []
    grad_mode = torch.is_grad_enabled()
    batch: list[int] = []

    def make_hook(name: str):
        def hook(module, _inputs, output):
            if not isinstance(output, torch.Tensor):
                raise LayerError(
                    f"layer {name!r} returns a {type(output).__name__}, not a tensor; "
                    "capture a layer whose output is a single tensor"
                )
            rule = _reshape_rule(reshape, model, module, output, batch[-1] if batch else None)
            if rule is not None:
                recorded, downstream = grid_output(output, rule, gradients)
                result.calls[name].append(recorded)
                if downstream is not None:
                    torch.set_grad_enabled(True)
                return downstream
            if not gradients:
                # A detached copy; the forward graph itself is left untouched.
                result.calls[name].append(output.detach().clone())
                return None
            if not output.requires_grad:
                output = output.detach().requires_grad_(True)
                torch.set_grad_enabled(True)
            result.calls[name].append(output)
            # Downstream gets a copy, so in-place activations cannot overwrite the record.
            return output.clone()

        return hook

    def stop_graph(_module, _inputs):
        torch.set_grad_enabled(False)

    def note_batch(_module, inputs):
        if inputs and isinstance(inputs[0], torch.Tensor) and inputs[0].dim() > 0:
            batch.append(inputs[0].shape[0])

    try:
        if reshape == "auto" and is_grid_model(model):  # batch size: see auto_reshape
            handles.append(model.register_forward_pre_hook(note_batch))
        for name, module in resolved:
            handles.append(module.register_forward_hook(make_hook(name)))
        if gradients and graph_from_layer:
            # Every forward in the block starts without autograd, not only the first.
            handles.append(model.register_forward_pre_hook(stop_graph))
        elif gradients:
            torch.set_grad_enabled(True)
        yield result
    finally:
        for handle in handles:
            handle.remove()
        torch.set_grad_enabled(grad_mode)


def _reshape_rule(
    reshape: Reshape | str | None, model: nn.Module, module: nn.Module, output, batch
) -> Reshape | None:
    if reshape is None:
        return None
    if reshape == "auto":
        return auto_reshape(model, module, output, batch)
    if not callable(reshape):
        raise LayerError(f"reshape must be 'auto', None or a callable, got {reshape!r}")
    return reshape


@contextmanager
def replaced_output(
    model: nn.Module | LoadedModel,
    layer: LayerSpec,
    replace: Callable[[torch.Tensor], torch.Tensor],
) -> Iterator[None]:
    """Inside the block, every forward pass continues from ``replace(output)`` instead of
    ``layer``'s own tensor output (to ablate channels, for instance); the hook is removed
    on exit, also after an exception."""
    model = as_module(model)
    refuse_scripted(model, "replace a layer's output (Ablation-CAM)")
    name, module = resolve_layer(model, layer)

    def hook(_module, _inputs, output):
        if not isinstance(output, torch.Tensor):
            raise LayerError(
                f"layer {name!r} returns a {type(output).__name__}, not a tensor; "
                "choose a layer whose output is a single tensor"
            )
        return replace(output)

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
