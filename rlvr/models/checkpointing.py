"""Activation checkpointing of the decoder layers, optionally with the kept inputs offloaded to CPU.

`gradient_checkpointing: true` keeps only each layer's input during the forward pass and recomputes
the layer in backward; `offload` also moves that input to pinned CPU memory on a side stream and
brings it back (prefetched one layer ahead) for the recompute, so the GPU holds no per-layer
activations at all: what is left is one layer's recompute at a time. At 20K tokens × 8B shape the
inputs alone are 32 layers × 164 MB per completion.

Ours rather than transformers' gradient_checkpointing_enable: the offload needs control over what is
saved, and one implementation for both modes means the test that pins offload's gradients to the
plain ones pins both. The layer's own forward is wrapped per instance, so nothing in transformers is
patched; any decoder whose layers take the hidden states first and return them (first) works.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from rlvr.errors import RlvrError
from rlvr.models.forward import base_causal_lm


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    decoder = base_causal_lm(model).get_decoder()
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList) or len(layers) == 0:
        raise RlvrError(f"gradient checkpointing: {type(decoder).__name__} has no `layers` list to checkpoint; "
                        "set gradient_checkpointing: false for this architecture")
    return layers


def enable_checkpointing(model: torch.nn.Module, mode: bool | str) -> ActivationOffloader | None:
    """Checkpoint every decoder layer of `model` in `mode` (True, 'offload'), or stop (False); returns
    the offloader, if any.

    Each call sets the mode, replacing the previous one (a later stage can change or remove it).
    Applies only while the model is in train mode with gradients enabled: no-grad passes (old and
    reference log-probs, rollouts) run the layers as they are.
    """
    if mode not in (False, True, "offload"):
        raise ValueError(f"gradient checkpointing mode must be False, True or 'offload', got {mode!r}")
    layers = decoder_layers(model) if mode else _checkpointed_layers(model)
    device = next(model.parameters()).device
    offloader = ActivationOffloader(device) if mode == "offload" else None
    for layer in layers:
        original = layer.__dict__.pop("_rlvr_original_forward", None)
        if original is not None:
            layer.forward = original
            if original == type(layer).forward.__get__(layer):
                del layer.forward  # the class's own forward again
        if mode:
            layer._rlvr_original_forward = layer.forward
            layer.forward = _checkpointed_forward(layer, layer.forward, offloader)
    base_causal_lm(model)._rlvr_offloader = offloader
    return offloader


def _checkpointed_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    decoder = base_causal_lm(model).get_decoder()
    return [m for m in getattr(decoder, "layers", []) if "_rlvr_original_forward" in m.__dict__]


def active_offloader(model: torch.nn.Module) -> ActivationOffloader | None:
    """The offloader of the model's current checkpointing mode ('offload'), else None."""
    return getattr(base_causal_lm(model), "_rlvr_offloader", None)


def discard_offloaded_activations(model: torch.nn.Module) -> None:
    """Drop the layer inputs a failed forward left behind (e.g. after an out of memory)."""
    offloader = active_offloader(model)
    if offloader is not None:
        offloader.discard()


def _checkpointed_forward(layer: torch.nn.Module, forward: Callable, offloader: ActivationOffloader | None):
    def run(*args, **kwargs):
        if not (layer.training and torch.is_grad_enabled()):
            return forward(*args, **kwargs)
        if args:
            hidden, rest = args[0], args[1:]
        else:
            kwargs = dict(kwargs)
            hidden, rest = kwargs.pop("hidden_states"), ()
        extra: list = []

        def call(h: torch.Tensor) -> torch.Tensor:
            out = forward(h, *rest, **kwargs)
            if isinstance(out, tuple):  # older layers return (hidden, ...): keep the rest as computed
                extra[:] = out[1:]
                return out[0]
            return out

        # A dummy input that requires grad makes the output require grad even when the hidden
        # states do not (frozen embeddings under LoRA), so backward reaches the recompute.
        out = _Checkpoint.apply(call, offloader, hidden, _requires_grad_token(hidden.device))
        return (out, *extra) if extra else out

    return run


_TOKENS: dict[torch.device, torch.Tensor] = {}


def _requires_grad_token(device: torch.device) -> torch.Tensor:
    if device not in _TOKENS:
        _TOKENS[device] = torch.empty(0, device=device, requires_grad=True)
    return _TOKENS[device]


class _Checkpoint(torch.autograd.Function):
    """Forward without keeping activations; backward recomputes with grad and backpropagates into
    the layer's parameters (their .grad accumulate, as in reentrant checkpointing)."""

    @staticmethod
    def forward(ctx, call, offloader, hidden, token):
        ctx.call, ctx.offloader = call, offloader
        ctx.device_type = hidden.device.type
        ctx.autocast = (torch.is_autocast_enabled(ctx.device_type), torch.get_autocast_dtype(ctx.device_type))
        ctx.rng = _rng_state(hidden.device)
        if offloader is not None:
            ctx.slot = offloader.save(hidden)
        else:
            ctx.save_for_backward(hidden)
        with torch.no_grad():
            return ctx.call(hidden)

    @staticmethod
    def backward(ctx, grad_out):
        hidden = ctx.offloader.load(ctx.slot) if ctx.offloader is not None else ctx.saved_tensors[0]
        wants_grad = ctx.needs_input_grad[2]
        hidden = hidden.detach().requires_grad_(wants_grad)
        enabled, dtype = ctx.autocast
        with torch.random.fork_rng(devices=_rng_devices(hidden.device)), torch.enable_grad(), \
                torch.autocast(ctx.device_type, dtype=dtype, enabled=enabled):
            _set_rng_state(hidden.device, ctx.rng)
            out = ctx.call(hidden)
        if out.requires_grad:
            torch.autograd.backward(out, grad_out)
        return None, None, hidden.grad if wants_grad else None, None


def _rng_devices(device: torch.device) -> list:
    return [device] if device.type == "cuda" else []


def _rng_state(device: torch.device):
    # Dropout in the recompute must draw what the forward drew.
    return torch.get_rng_state(), (torch.cuda.get_rng_state(device) if device.type == "cuda" else None)


def _set_rng_state(device: torch.device, state) -> None:
    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state(cuda, device)


@dataclass
class _Slot:
    host: torch.Tensor  # pinned copy (or the tensor itself off CUDA)
    shape: torch.Size
    dtype: torch.dtype
    copied: torch.cuda.Event | None = None
    fetched: torch.Tensor | None = None  # on the device, once brought back
    ready: torch.cuda.Event | None = None


class ActivationOffloader:
    """Layer inputs to pinned host memory during forward, back to the device (one layer ahead) in
    backward. Copies run on a side stream, so they overlap the layers' compute; pinned buffers are
    pooled across steps because allocating pinned memory is slow (cudaHostAlloc per call)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"
        self.stream = torch.cuda.Stream(device) if self.cuda else None
        self.slots: list[_Slot | None] = []
        self.free: list[torch.Tensor] = []  # pinned uint8 buffers
        self.host_bytes = self.peak_host_bytes = 0  # pinned bytes holding saved inputs, now and at most

    def save(self, t: torch.Tensor) -> int:
        if not self.cuda:  # nothing to offload to: keep the tensor (the recompute path is the same)
            self.slots.append(_Slot(host=t, shape=t.shape, dtype=t.dtype))
            return len(self.slots) - 1
        t = t.detach()
        host = self._buffer(t.numel() * t.element_size())[: t.numel() * t.element_size()].view(t.dtype).view(t.shape)
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream):
            host.copy_(t, non_blocking=True)
            copied = torch.cuda.Event()
            copied.record(self.stream)
        t.record_stream(self.stream)  # the caching allocator must not reuse t's memory before the copy ends
        self.slots.append(_Slot(host=host, shape=t.shape, dtype=t.dtype, copied=copied))
        self.host_bytes += host.numel() * host.element_size()
        self.peak_host_bytes = max(self.peak_host_bytes, self.host_bytes)
        return len(self.slots) - 1

    def load(self, index: int) -> torch.Tensor:
        slot = self.slots[index]
        if slot is None:
            raise RuntimeError("activation offload: a layer input was loaded twice (backward run twice?)")
        if not self.cuda:
            self.slots[index] = None
            self._reset_if_done()
            return slot.host
        if slot.fetched is None:
            self._fetch(slot)
        if index > 0 and self.slots[index - 1] is not None and self.slots[index - 1].fetched is None:
            self._fetch(self.slots[index - 1])  # the next backward step's input, while this one computes
        torch.cuda.current_stream(self.device).wait_event(slot.ready)
        out = slot.fetched
        self.slots[index] = None
        self._release(slot)
        self._reset_if_done()
        return out

    def _fetch(self, slot: _Slot) -> None:
        gpu = torch.empty(slot.shape, dtype=slot.dtype, device=self.device)
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream):
            gpu.copy_(slot.host, non_blocking=True)
            slot.ready = torch.cuda.Event()
            slot.ready.record(self.stream)
        slot.fetched = gpu

    def _buffer(self, nbytes: int) -> torch.Tensor:
        for i, buf in enumerate(self.free):
            if buf.numel() >= nbytes:
                return self.free.pop(i)
        # Round up so buffers of slightly different micro-batch lengths are reused.
        size = -(-nbytes // (1 << 22)) * (1 << 22)
        return torch.empty(size, dtype=torch.uint8, pin_memory=True)

    def _release(self, slot: _Slot) -> None:
        # Later writes to the buffer go on self.stream, after this slot's fetch: stream order suffices.
        self.host_bytes -= slot.host.numel() * slot.host.element_size()
        base = slot.host.untyped_storage()
        self.free.append(torch.empty(0, dtype=torch.uint8).set_(base, 0, (base.nbytes(),)))
        self.free.sort(key=lambda b: b.numel())

    def _reset_if_done(self) -> None:
        if all(s is None for s in self.slots):
            self.slots.clear()

    def discard(self) -> None:
        """Forget unconsumed slots (a forward whose backward never ran, e.g. after an error)."""
        for slot in self.slots:
            if slot is not None and self.cuda:
                self._release(slot)
        self.slots.clear()
