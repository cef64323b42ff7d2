"""AuralSAM2 core: the faithful model (SAM2 + AuralFuser), its weights and audio front end.

Imports no annotation platform; every adapter in ``plugins/`` builds on this package.
"""

__version__ = "0.1.0"
