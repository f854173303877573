"""Faster ways to run a built model: the weights' memory layout (`MODEL.MEMORY_FORMAT`, channels_last on the CPU
by default), and the opt-in low-precision inference (`TEST.AMP`) and `torch.compile` (`MODEL.COMPILE`); on the CPU,
freed memory handed back to the OS during inference (`trim_freed_memory_at_inference`).

All work on the model in place (weight layout, hooks, `nn.Module.compile`), so parameter names, checkpoints and
the model's interface stay those of the eager float32 model.
"""

import ctypes
import logging
from typing import Callable, Iterable, List, Optional

import torch
from torch import nn

__all__ = [
    "COMPILED_PARTS",
    "LOW_PRECISION_PARTS",
    "accelerate_from_config",
    "autocast_at_inference",
    "compile_parts",
    "cpu_has_fast_bfloat16",
    "memory_format_for",
    "trim_freed_memory_at_inference",
]

# The parts whose work is convolutions and matrix products. Box regression, decoding, NMS and mask pasting stay
# in float32: box coordinates need more than bfloat16's 8 bits of mantissa.
LOW_PRECISION_PARTS = ("backbone", "proposal_generator.rpn_head", "roi_heads.box_head")
COMPILED_PARTS = ("backbone", "proposal_generator.rpn_head", "roi_heads.box_head")
# The parts after which CPU inference hands freed heap memory back to the OS: each leaves tens of MB of freed
# feature maps behind in glibc's heap (the stride-4 maps of the stem and res2, the bottom-up maps, the FPN's
# temporaries, the pooled RoIs).
TRIMMED_PARTS = (
    "backbone.bottom_up.stem",
    "backbone.bottom_up.res2",
    "backbone.bottom_up",
    "backbone",
    "roi_heads.box_head",
    "roi_heads",
)


def cpu_has_fast_bfloat16() -> bool:
    """Whether this CPU computes in bfloat16 natively (AVX-512 BF16 or AMX); elsewhere oneDNN emulates it, slower
    than float32."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _parts(model: nn.Module, names: Iterable[str]) -> List[nn.Module]:
    found = []
    for name in names:
        try:
            found.append(model.get_submodule(name))
        except AttributeError:
            continue  # this architecture has no such part (e.g. no RPN in RetinaNet)
    return found


def _to_float32(value):
    if isinstance(value, torch.Tensor):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, dict):
        return {k: _to_float32(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_float32(v) for v in value)
    return value


def autocast_at_inference(module: nn.Module, device_type: str, dtype: torch.dtype) -> None:
    """
    Run `module` under `torch.autocast(device_type, dtype)` whenever it is in eval mode, and give its floating
    outputs back in float32, so the code after it is unchanged. Training is not affected.
    """
    state = {}

    def enter(mod, args):
        if not mod.training:
            state[id(mod)] = context = torch.autocast(device_type, dtype=dtype)
            context.__enter__()

    def leave(mod, args, output):
        context = state.pop(id(mod), None)
        if context is None:
            return None
        context.__exit__(None, None, None)
        return _to_float32(output)

    module.register_forward_pre_hook(enter)
    module.register_forward_hook(leave, always_call=True)


def compile_parts(model: nn.Module, names: Iterable[str] = COMPILED_PARTS) -> None:
    """`torch.compile` the named parts in place (their state-dict names do not change)."""
    for part in _parts(model, names):
        part.compile()


def _malloc_trim() -> Optional[Callable[[int], int]]:
    """glibc's `malloc_trim`, or None where the C library has none (musl, macOS, Windows)."""
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None


def trim_freed_memory_at_inference(model: nn.Module, names: Iterable[str] = TRIMMED_PARTS) -> None:
    """
    After each named part runs in eval mode, return the heap memory freed so far to the OS (`malloc_trim(0)`).
    glibc serves tensors below its mmap threshold (which grows up to 32 MB as large blocks are freed) from its
    heap, and keeps their memory once they are freed: on a 800x1216 image that is 50-100 MB of freed stride-4
    and stride-8 maps still counted in the process's memory when the next stage allocates its own, and the
    amount varies from run to run. Trimming after these parts lowers Mask R-CNN R50-FPN's inference peak by about
    that much (docs/benchmarks.md), for 10-50 ms per call. Values are untouched; training, compiled and exported
    programs are not affected.
    """
    trim = _malloc_trim()
    if trim is None:
        return

    def release(module, args, output):
        if not module.training and not torch.compiler.is_compiling():
            trim(0)

    for part in _parts(model, names):
        part.register_forward_hook(release)


_MEMORY_FORMATS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}


def memory_format_for(name: str, device: torch.device) -> torch.memory_format:
    """The layout `MODEL.MEMORY_FORMAT` = `name` means on `device` ("auto": channels_last on the CPU only)."""
    if name == "auto":
        return torch.channels_last if device.type == "cpu" else torch.contiguous_format
    if name not in _MEMORY_FORMATS:
        raise ValueError(f"MODEL.MEMORY_FORMAT must be 'auto' or one of {sorted(_MEMORY_FORMATS)}, got {name!r}")
    return _MEMORY_FORMATS[name]


def accelerate_from_config(model: nn.Module, cfg) -> nn.Module:
    """Apply `cfg.MODEL.MEMORY_FORMAT`, `cfg.TEST.AMP` and `cfg.MODEL.COMPILE` to a built `model` on
    `cfg.MODEL.DEVICE`."""
    # Convolutions give their output the layout of their weight, so converting the weights is enough: from the
    # first convolution on, feature maps are channels_last too. Checkpoints load into and save from it by value.
    model.to(memory_format=memory_format_for(cfg.MODEL.MEMORY_FORMAT, torch.device(cfg.MODEL.DEVICE)))
    if torch.device(cfg.MODEL.DEVICE).type == "cpu":
        trim_freed_memory_at_inference(model)
    if cfg.TEST.AMP.ENABLED:
        device_type = torch.device(cfg.MODEL.DEVICE).type
        if device_type == "cuda":
            dtype = torch.float16
        elif cpu_has_fast_bfloat16():
            dtype = torch.bfloat16
        else:
            dtype = None
            logging.getLogger(__name__).warning(
                "TEST.AMP.ENABLED: this CPU has no fast bfloat16 (no AVX-512 BF16/AMX); inference stays float32."
            )
        if dtype is not None:
            for part in _parts(model, LOW_PRECISION_PARTS):
                autocast_at_inference(part, device_type, dtype)
    if cfg.MODEL.COMPILE:
        compile_parts(model)
    return model
