"""Label Studio adapter: an ML backend (``/health``, ``/setup``, ``/predict``, ``/webhook``)
serving sounding-object pre-annotations, interactive refinement and fine-tuning, plus the
``auralsam2 labelstudio`` commands (``serve``, ``prelabel``)."""
