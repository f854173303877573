"""An adapter for users who keep the loss function separate from the model."""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Union

import torch
from torch import nn

__all__ = ["ModelWithLoss"]


class ModelWithLoss(nn.Module):
    """Wrap `(model, loss_fn)` into a model that returns its losses in training, as trainers expect.

    Training mode: `loss_fn(model(inputs(batch)), batch)`, a dict of scalar losses (a bare tensor
    becomes `{"loss": tensor}`). Eval mode: `model(inputs(batch))`, the predictions.
    `train()`/`eval()` switch the wrapped model too, and its parameters are this module's.

    Args:
        model: any module mapping inputs to predictions.
        loss_fn: `(predictions, batch) -> dict[str, Tensor] | Tensor`; it reads the targets from
            the batch however the user's data is laid out.
        inputs: `batch -> model input` (default: the whole batch is the input).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[Any, Any], Union[Dict[str, torch.Tensor], torch.Tensor]],
        inputs: Optional[Callable[[Any], Any]] = None,
    ):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn
        self.inputs = inputs

    def forward(self, batch: Any):
        predictions = self.model(batch if self.inputs is None else self.inputs(batch))
        if not self.training:
            return predictions
        losses = self.loss_fn(predictions, batch)
        if isinstance(losses, torch.Tensor):
            losses = {"loss": losses}
        return losses
