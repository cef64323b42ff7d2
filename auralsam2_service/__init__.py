"""``auralsam2 serve``: one process holds the model and serves every adapter over HTTP (jobs,
progress, results in the engine's format); plus batch pre-labelling, locally or on Ray."""
