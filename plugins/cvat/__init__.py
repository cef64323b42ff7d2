"""CVAT adapter: a nuclio function for CVAT's Automatic annotation, task pre-labelling through
CVAT's REST API (one mask shape per sounding frame), and the ``auralsam2 cvat prelabel`` command."""
