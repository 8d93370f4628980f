"""The C4 ROI head of the MoCo detection protocol: Detectron2's ``Res5ROIHeads`` plus one norm after res5.

With ``FREEZE_AT 0`` and BN in the backbone, the res5 stage that C4 models run per RoI ends in a
residual sum whose scale is not normalised; an extra norm layer after res5 (type
``MODEL.RESNETS.NORM``, over its 2048 output channels) puts the pooled RoI features fed to the box
and mask predictors on a normalised scale (docs/protocols.md#the-moco-detection-settings).

Importing this module registers ``Res5ROIHeadsExtraNorm`` with Detectron2's ``ROI_HEADS_REGISTRY``
(idempotent); it needs Detectron2, so neither ``mochi.transfer`` nor ``mochi.transfer.detectron2`` imports it
on import: :func:`mochi.transfer.detectron2.config.load_config` does, and so must a Detectron2 script that
uses the shipped configs (``import mochi.transfer.detectron2.head``).
"""

from __future__ import annotations

from detectron2.layers import get_norm
from detectron2.modeling import ROI_HEADS_REGISTRY
from detectron2.modeling.roi_heads import Res5ROIHeads

NAME = "Res5ROIHeadsExtraNorm"


class Res5ROIHeadsExtraNorm(Res5ROIHeads):
    """``Res5ROIHeads`` whose ``res5`` is ``nn.Sequential(block0, block1, block2, norm)``.

    ``res5``: RoI features ``(R, 1024, 14, 14)`` → ``(R, 2048, 7, 7)``, then ``norm`` (no activation).
    The norm's parameters are ``roi_heads.res5.norm.*``; a converted backbone has no such tensors, so
    they start at their default initialisation while ``roi_heads.res5.{0,1,2}.*`` load from ``res5.*``.
    """

    @classmethod
    def _build_res5_block(cls, cfg):
        res5, out_channels = super()._build_res5_block(cfg)
        res5.add_module("norm", get_norm(cfg.MODEL.RESNETS.NORM, out_channels))
        return res5, out_channels


def register() -> None:
    """Register the head once (a second import or call is a no-op)."""
    if NAME not in ROI_HEADS_REGISTRY:
        ROI_HEADS_REGISTRY.register(Res5ROIHeadsExtraNorm)


register()
