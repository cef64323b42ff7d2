"""What the tests share and never run as tests: media made on the fly, servers started for a
session (the model service, Label Studio, an emulated CVAT), FiftyOne set-up, and independent
oracles of the model's numerics. Import as ``from helpers import media_factory`` (pytest puts
``tests/`` on ``sys.path``)."""
