"""DeformBottleneckBlock against the same block written out with torchvision's deform_conv2d, and its names."""

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import deform_conv2d

from detlib.config import get_cfg
from detlib.layers import ShapeSpec
from detlib.modeling.backbone.resnet import BottleneckBlock, DeformBottleneckBlock, build_resnet_backbone


def _randomized(block: DeformBottleneckBlock) -> DeformBottleneckBlock:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
        for name, buffer in block.named_buffers():
            buffer.copy_(
                torch.rand(buffer.shape, generator=g) + 0.5
                if "var" in name
                else torch.randn(buffer.shape, generator=g) * 0.1
            )
    return block.eval()


def _frozen_bn(x, norm):
    return (x - norm.running_mean[:, None, None]) / (norm.running_var[:, None, None] + norm.eps).sqrt() * norm.weight[
        :, None, None
    ] + norm.bias[:, None, None]


@pytest.mark.parametrize("modulated, offset_groups, stride, dilation", [(False, 1, 2, 1), (True, 2, 1, 2)])
def test_block_equals_torchvision_written_out(modulated, offset_groups, stride, dilation):
    block = DeformBottleneckBlock(
        16, 32, bottleneck_channels=8, stride=stride, num_groups=2, norm="FrozenBN", stride_in_1x1=False,
        dilation=dilation, deform_modulated=modulated, deform_num_groups=offset_groups,
    )  # fmt: skip
    block = _randomized(block)
    x = torch.randn(2, 16, 11, 13, dtype=torch.float32)
    with torch.no_grad():
        out = block(x)
        # By hand: 1x1 -> 3x3 deformable (offsets, and masks = sigmoid of the last third, from conv2_offset) -> 1x1.
        h = F.relu(_frozen_bn(F.conv2d(x, block.conv1.weight), block.conv1.norm))
        predicted = F.conv2d(h, block.conv2_offset.weight, block.conv2_offset.bias, stride, dilation, dilation)
        n = 18 * offset_groups
        offset, mask = (predicted[:, :n], predicted[:, n:].sigmoid()) if modulated else (predicted, None)
        h = deform_conv2d(h, offset, block.conv2.weight, None, stride, dilation, dilation, mask)
        h = F.relu(_frozen_bn(h, block.conv2.norm))
        h = _frozen_bn(F.conv2d(h, block.conv3.weight), block.conv3.norm)
        shortcut = _frozen_bn(F.conv2d(x, block.shortcut.weight, stride=stride), block.shortcut.norm)
        expected = F.relu(h + shortcut)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


def test_new_block_starts_as_the_plain_bottleneck():
    # Zero offsets (and masks of 0.5 in v2, hence half the plain conv) until trained.
    torch.manual_seed(0)
    deform = DeformBottleneckBlock(16, 16, bottleneck_channels=8, norm="", deform_modulated=False).eval()
    plain = BottleneckBlock(16, 16, bottleneck_channels=8, norm="").eval()
    plain.load_state_dict({k: v for k, v in deform.state_dict().items() if not k.startswith("conv2_offset")})
    x = torch.randn(1, 16, 9, 9)
    torch.testing.assert_close(deform(x), plain(x), rtol=1e-4, atol=1e-5)


def test_config_puts_deformable_blocks_in_the_stages_it_names():
    cfg = get_cfg()
    cfg.merge_from_list(["MODEL.RESNETS.DEFORM_ON_PER_STAGE", [False, False, True, True]])
    cfg.merge_from_list(["MODEL.RESNETS.DEFORM_MODULATED", True, "MODEL.RESNETS.DEFORM_NUM_GROUPS", 2])
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res5"]
    resnet = build_resnet_backbone(cfg, ShapeSpec(channels=3))
    kinds = {name: type(stage[0]) for name, stage in zip(resnet.stage_names, resnet.stages)}
    assert kinds == {"res2": BottleneckBlock, "res3": BottleneckBlock, "res4": DeformBottleneckBlock,
                     "res5": DeformBottleneckBlock}  # fmt: skip
    # Detectron2's names and shapes: 27 channels (dy, dx, mask) per offset group.
    assert resnet.res4[0].conv2_offset.weight.shape == (27 * 2, 256, 3, 3)
    assert resnet.res4[0].conv2.weight.shape == (256, 256, 3, 3) and resnet.res4[0].conv2.bias is None
    cfg.merge_from_list(["MODEL.RESNETS.DEPTH", 34, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64])
    with pytest.raises(ValueError, match="ResNet-34.*DEFORM_ON_PER_STAGE"):
        build_resnet_backbone(cfg, ShapeSpec(channels=3))
