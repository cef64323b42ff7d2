"""The model: SAM2 plus the AuralFuser (AVS and Ref-AVS), its audio and text encoders, ``build_*``
functions and checkpoint / weight-file handling. Touches no files but weights and configs."""
