"""Borrow a model for the length of a block: eval mode and private input copies, both
given back on exit (also after an exception)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from convlens.errors import LayerError, MethodError
from convlens.models.outputs import selected_output_hook


@contextmanager
def borrowed_model(
    model: nn.Module, eval_mode: bool = True, copy_inputs: bool = True
) -> Iterator[nn.Module]:
    """Put every module in eval mode for the duration, then restore each module's own
    ``training`` flag (also after an exception). Nothing else about the model changes.

    For the duration, every call of ``model`` gets private copies of its tensor arguments,
    positional and keyword alike (a forward pre-hook, removed on exit), so a model that
    edits an input in place (``x.sub_(mean)``) changes neither the caller's tensor nor the
    tensor a method reuses for its next forward pass. The copy is differentiable: input
    gradients still reach the caller's leaf. A model whose output is a dict, a tuple or a
    ``ModelOutput``-like object hands back the one tensor `convlens.models.outputs.
    select_output` picks (a forward hook, removed on exit), so every method's forward
    passes see that tensor. (Not for TorchScript modules, which cannot be hooked.)
    ``copy_inputs=False`` leaves out the private copies, for callers whose every input is
    a tensor of their own that they rebuild or check before reading it again (a perturbed
    batch rebuilt in full, or one whose version counter shows that the model wrote into
    it): the copy would only cost a pass over it.
    """
    flags = [(module, module.training) for module in model.modules()]
    # TorchScript modules take no hooks; they run on the tensor as given.
    scripted = isinstance(model, torch.jit.ScriptModule)
    handles = []
    if not scripted:
        if copy_inputs:
            handles.append(model.register_forward_pre_hook(_private_inputs, with_kwargs=True))
        handles.append(model.register_forward_hook(selected_output_hook))
    try:
        if eval_mode:
            model.eval()
        yield model
    finally:
        for handle in handles:
            handle.remove()
        for module, training in flags:
            module.training = training


def require_autograd(what: str) -> None:
    """`MethodError` when autograd is off for good: inside ``torch.inference_mode()`` no
    gradient can be taken (``torch.enable_grad()`` cannot lift it), so a gradient method
    would fail with a bare RuntimeError. ``what`` names the call in the message."""
    if torch.is_inference_mode_enabled():
        raise MethodError(
            f"{what} needs gradients, which torch.inference_mode() turns off; call it "
            "outside the inference_mode block, or leave it for the call with "
            "'with torch.inference_mode(False): ...'"
        )


def _private_inputs(_module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    return tuple(_private(a) for a in args), {k: _private(v) for k, v in kwargs.items()}


def _private(value: object) -> object:
    return value.clone() if isinstance(value, torch.Tensor) else value


def refuse_scripted(model: nn.Module, what: str) -> None:
    """`LayerError` when ``model`` (or a part of it) is TorchScript: its layers take no
    hooks, so nothing can ``what``. The message names the ways out."""
    for name, module in model.named_modules():
        if isinstance(module, torch.jit.ScriptModule):
            where = f"module {name!r} is" if name else "the model is"
            raise LayerError(
                f"{where} TorchScript, whose layers take no hooks, so convlens cannot {what}. "
                "Load the eager model instead (a torch.save(model) pickle, a torchvision:/timm: "
                "name, or --arch NAME --weights FILE for a state_dict), or use a method that "
                "needs no layer (saliency, integrated_gradients, smoothgrad, occlusion, rise, "
                "extremal_perturbation, kernel_shap, lime, superpixel_ablation)"
            )
