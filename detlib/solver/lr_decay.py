"""Layer-wise learning-rate decay for plain Vision Transformers (ViTDet's recipe)."""

import re

__all__ = ["get_vit_lr_decay_rate"]

_BLOCK_INDEX = re.compile(r"\.blocks\.(\d+)\.")


def get_vit_lr_decay_rate(name: str, lr_decay_rate: float = 1.0, num_layers: int = 12) -> float:
    """
    The lr multiplier of the parameter `name` (as in `model.named_parameters()`) of a detector with a
    ViT backbone: `lr_decay_rate ** (num_layers + 1 - layer)`, where `layer` is 0 for the patch and
    position embeddings, i + 1 for transformer block i, and num_layers + 1 (multiplier 1) for
    everything else, i.e. the pyramid, the heads and parameters outside the backbone. Deeper layers
    thus train with larger learning rates than the pretrained early layers.

    Use as `get_default_optimizer_params(..., lr_factor_func=partial(get_vit_lr_decay_rate, ...))`.
    """
    layer = num_layers + 1
    if name.startswith("backbone"):
        if ".pos_embed" in name or ".patch_embed" in name:
            layer = 0
        elif ".residual." not in name:
            match = _BLOCK_INDEX.search(name)
            if match:
                layer = int(match.group(1)) + 1
    return lr_decay_rate ** (num_layers + 1 - layer)
