"""Former home of the vision objectives, kept so existing imports work; each family now has its own module
(see ``hfssl.objectives.vision``)."""

from hfssl.objectives.vision.base import VisionObjective
from hfssl.objectives.vision.contrastive import ContrastiveObjective, nt_xent
from hfssl.objectives.vision.generative import (
    ColorizationObjective,
    InpaintingObjective,
    MaskedImageModelingObjective,
)
from hfssl.objectives.vision.pretext import JigsawObjective, RelativePositionObjective, RotationObjective

__all__ = [
    "ColorizationObjective",
    "ContrastiveObjective",
    "InpaintingObjective",
    "JigsawObjective",
    "MaskedImageModelingObjective",
    "RelativePositionObjective",
    "RotationObjective",
    "VisionObjective",
    "nt_xent",
]
