"""The audio-track choice reaches every adapter the same way: one env variable
(``AURALSAM2_AUDIO_TRACK``), one field on the service's wire format."""

import pytest

from auralsam2_core.env import audio_track
from auralsam2_core.inference.engine import PrelabelOptions
from auralsam2_core.serving.wire import OptionsError, options_from_wire, options_to_wire


def test_env_audio_track_parses_indices_and_refuses_others():
    assert audio_track({}) is None
    assert audio_track({"AURALSAM2_AUDIO_TRACK": ""}) is None
    assert audio_track({"AURALSAM2_AUDIO_TRACK": "1"}) == 1
    for bad in ("-1", "1.5", "one"):
        with pytest.raises(ValueError, match="AURALSAM2_AUDIO_TRACK"):
            audio_track({"AURALSAM2_AUDIO_TRACK": bad})


def test_wire_format_carries_the_audio_track_and_checks_it():
    wire = options_to_wire(PrelabelOptions(audio_track=2))
    opts, _ = options_from_wire(wire)
    assert opts.audio_track == 2
    assert options_from_wire({})[0].audio_track is None
    for bad in (-1, 1.5, True, "1"):
        with pytest.raises(OptionsError) as err:
            options_from_wire({"audio_track": bad})
        assert err.value.field == "options.audio_track"


def test_cvat_and_label_studio_settings_read_the_track():
    from auralsam2_plugins.cvat.config import CvatFunctionSettings
    from auralsam2_plugins.label_studio.config import LabelStudioBackendSettings

    env = {"AURALSAM2_AUDIO_TRACK": "1"}
    assert CvatFunctionSettings.from_env(env).audio_track == 1
    assert LabelStudioBackendSettings.from_env(env).audio_track == 1
    assert CvatFunctionSettings.from_env({}).audio_track is None
