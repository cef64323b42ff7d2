"""Running the model over videos: the streaming engine, what it writes (results format, RLE,
instances, review renders) and the feature cache."""
