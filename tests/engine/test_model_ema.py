"""ModelEMA: the average by hand, swapping the averaged weights in and out, and its checkpoint state."""

import torch
from torch import nn

from detlib.engine.model_ema import EMAHook, ModelEMA


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))


def test_average_by_hand_covers_parameters_and_float_buffers():
    model = _model()
    ema = ModelEMA(model, decay=0.9)
    w0 = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
        model[1].running_mean.fill_(2.0)
    ema.update(model)
    torch.testing.assert_close(ema.average["0.weight"], w0 + 0.1)
    torch.testing.assert_close(ema.average["1.running_mean"], torch.full((2,), 0.2))
    assert "1.num_batches_tracked" not in ema.average  # integer buffers are not averaged


def test_apply_to_swaps_weights_and_restores_them():
    model = _model()
    ema = ModelEMA(model, decay=0.5)
    original = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.mul_(3.0)
    ema.update(model)  # average = (original + 3 original) / 2 = 2 original
    with ema.apply_to(model):
        torch.testing.assert_close(model[0].weight, 2 * original)
    torch.testing.assert_close(model[0].weight, 3 * original)


def test_state_round_trip_and_hook():
    model = _model()
    ema = ModelEMA(model, decay=0.0)  # decay 0: the average is the latest weights
    with torch.no_grad():
        model[0].bias.fill_(5.0)

    class Trainer:
        pass

    hook = EMAHook(ema, model)
    hook.trainer = Trainer()
    hook.after_step()
    restored = ModelEMA(_model(), decay=0.0)
    restored.load_state_dict(ema.state_dict())
    torch.testing.assert_close(restored.average["0.bias"], torch.full((2,), 5.0))
