"""The job options wire format (auralsam2_core.serving.wire): what the client sends and the service
checks, including the optional ``clip_origin`` of refinements."""

from __future__ import annotations

import pytest

from auralsam2_core.inference.engine import PrelabelOptions
from auralsam2_core.modeling.model import PointPrompt
from auralsam2_core.serving.wire import (
    OPTION_KEYS,
    OptionsError,
    options_from_wire,
    options_record,
    options_to_wire,
)


def test_round_trip_with_every_field_and_clip_origin():
    opts = PrelabelOptions(clip_len=4, stride=2, no_audio="silent", start_frame=6,
                           stop_frame=20, audio_track=1, clip_origin=2)
    prompts = {6: PointPrompt.box(1, 2, 30, 40), 10: PointPrompt(((5.0, 6.0),), (1,))}
    wire = options_to_wire(opts, prompts)
    assert wire["clip_origin"] == 2
    got, got_prompts = options_from_wire(wire, num_frames=30, frame_size=(64, 48))
    assert got == opts
    assert {k: p.as_dict() for k, p in got_prompts.items()} == \
        {k: p.as_dict() for k, p in prompts.items()}


def test_requests_without_clip_origin_are_those_of_older_clients():
    """No clip_origin set: the request (and a job file) has exactly the older keys, so an
    older service takes it, and an older client's request still parses."""
    wire = options_to_wire(PrelabelOptions(stride=2, start_frame=4))
    assert list(wire) == [*OPTION_KEYS, "prompts"]
    assert list(options_record(PrelabelOptions())) == list(OPTION_KEYS)
    old_client = {"clip_len": 5, "stride": 1, "no_audio": "error", "start_frame": 3,
                  "stop_frame": None, "audio_track": None, "queries": [], "prompts": {}}
    opts, _ = options_from_wire(old_client)
    assert opts.clip_origin is None and opts.start_frame == 3
    assert options_from_wire({"clip_origin": None})[0].clip_origin is None


@pytest.mark.parametrize("raw, field, words", [
    ({"clip_origin": -1}, "options.clip_origin", "integer >= 0"),
    ({"clip_origin": 1.5}, "options.clip_origin", "integer >= 0"),
    ({"clip_origin": True}, "options.clip_origin", "integer >= 0"),
    ({"clip_origin": "0"}, "options.clip_origin", "integer >= 0"),
    ({"start_frame": 2, "clip_origin": 3}, "options.clip_origin", "start_frame (2)"),
    ({"start_frame": 3, "stride": 2, "clip_origin": 0}, "options.clip_origin", "stride (2)"),
    ({"clip_orgin": 0}, "options.clip_orgin", "unknown option"),
    ({"stride": 0}, "options.stride", "integer >= 1"),
    ({"no_audio": "maybe"}, "options.no_audio", '"error" or "silent"'),
])
def test_unknown_and_invalid_fields_are_named(raw, field, words):
    with pytest.raises(OptionsError) as e:
        options_from_wire(raw)
    assert e.value.field == field
    assert str(e.value).startswith(f"{field}: ") and words in str(e.value)


def test_the_client_checks_what_it_sends():
    with pytest.raises(OptionsError, match="options.prompts.9"):
        options_to_wire(PrelabelOptions(start_frame=2, stop_frame=5),
                        {9: PointPrompt.box(1, 1, 5, 5)})


def test_the_unknown_option_message_lists_clip_origin():
    with pytest.raises(OptionsError, match="clip_origin"):
        options_from_wire({"nope": 1})
