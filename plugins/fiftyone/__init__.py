"""AuralSAM2 FiftyOne plugin ``@auralsam2/auralsam2``: pre-label sounding objects in videos.

FiftyOne imports this file under a synthetic module name, so the plugin's code lives in the
``auralsam2_fiftyone`` package next to it, put on ``sys.path`` here. It needs the
``auralsam2`` package (``auralsam2_core``) installed in FiftyOne's Python environment.
"""

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from auralsam2_fiftyone.operators import (  # noqa: E402
    EvaluateSoundingObjects,
    PrelabelSoundingObjects,
    ReviewSoundingObjects,
)
from auralsam2_fiftyone.panel import SoundingObjectsSound  # noqa: E402

# Registration order is the operator browser's order among equals (see operators.py): the
# workflow's order. The panel is listed in the modal's panel menu, not in the browser.
OPERATORS = (PrelabelSoundingObjects, ReviewSoundingObjects, EvaluateSoundingObjects,
             SoundingObjectsSound)


def register(p):
    for operator in OPERATORS:
        p.register(operator)
