"""The registry of proposal generators and the function that builds the configured one."""

from typing import Dict, Optional

from torch import nn

from detlib.utils.registry import Registry

__all__ = ["PROPOSAL_GENERATOR_REGISTRY", "build_proposal_generator"]

PROPOSAL_GENERATOR_REGISTRY = Registry("PROPOSAL_GENERATOR")
PROPOSAL_GENERATOR_REGISTRY.__doc__ = """
Proposal generators, built from `(cfg, input_shape: Dict[str, ShapeSpec])`. Called as
`(images: ImageList, features: Dict[str, Tensor], gt_instances: Optional[List[Instances]])`, they
return `(proposals: List[Instances], losses: Dict[str, Tensor])`.
"""


def build_proposal_generator(cfg, input_shape: Dict) -> Optional[nn.Module]:
    """
    The proposal generator named by `cfg.MODEL.PROPOSAL_GENERATOR.NAME`, or None for
    "PrecomputedProposals" (proposals then come with the inputs).
    """
    name = cfg.MODEL.PROPOSAL_GENERATOR.NAME
    if name == "PrecomputedProposals":
        return None
    return PROPOSAL_GENERATOR_REGISTRY.get(name)(cfg, input_shape)
