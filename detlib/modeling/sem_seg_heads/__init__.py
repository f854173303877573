"""Semantic segmentation heads, selected from `SEM_SEG_HEADS_REGISTRY` by `MODEL.SEM_SEG_HEAD.NAME`."""

from .build import SEM_SEG_HEADS_REGISTRY, build_sem_seg_head
from .fpn_head import SemSegFPNHead, sem_seg_loss

__all__ = ["SEM_SEG_HEADS_REGISTRY", "build_sem_seg_head", "SemSegFPNHead", "sem_seg_loss"]
