"""Weight initializations used by Caffe2-era Detectron models, reproduced so trained behaviour matches."""

import torch.nn as nn

__all__ = ["c2_msra_fill", "c2_xavier_fill"]


def c2_msra_fill(module: nn.Module) -> None:
    """
    He (MSRA) normal init with fan-out, as Caffe2's `MSRAFill`; zero bias.

    Used for ResNet convolutions, which are followed by ReLUs.
    """
    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    if module.bias is not None:
        nn.init.constant_(module.bias, 0)


def c2_xavier_fill(module: nn.Module) -> None:
    """
    Caffe2's `XavierFill`: uniform in +-sqrt(3 / fan_in); zero bias.

    Kaiming-uniform with negative slope a=1 has exactly that bound (gain 1), which is why it is used here.
    """
    nn.init.kaiming_uniform_(module.weight, a=1)
    if module.bias is not None:
        nn.init.constant_(module.bias, 0)
