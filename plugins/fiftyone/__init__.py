"""AuralSAM2 FiftyOne plugin ``@auralsam2/auralsam2``: pre-label sounding objects in videos.

FiftyOne imports this file under a synthetic module name; the plugin's code is the
``auralsam2_fiftyone`` package, installed with the ``auralsam2`` project
(``pip install "auralsam2[fiftyone]"``) in FiftyOne's Python environment.
"""

from auralsam2_fiftyone.operators import (
    EvaluateSoundingObjects,
    PrelabelSoundingObjects,
    ReviewSoundingObjects,
)
from auralsam2_fiftyone.panel import SoundingObjectsSound

# Registration order is the operator browser's order among equals (see operators.py): the
# workflow's order. The panel is listed in the modal's panel menu, not in the browser.
OPERATORS = (PrelabelSoundingObjects, ReviewSoundingObjects, EvaluateSoundingObjects,
             SoundingObjectsSound)


def register(p):
    for operator in OPERATORS:
        p.register(operator)
