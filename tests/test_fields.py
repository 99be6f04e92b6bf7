"""The request fields are described once (bgservice/fields.py), and every interface follows: the
checks and messages of the JSON API, the upload endpoint and the CLI, the OpenAPI description and
the CLI's options."""
from __future__ import annotations

import pytest

from bgservice.cli import build_parser
from bgservice.errors import BadRequest
from bgservice.fields import JSON_OPTIONS, OPTIONS, PATHS, REMOVE_FIELDS, parse_strings, refuse_unknown


def test_every_option_is_described_in_openapi_and_offered_by_the_cli(client):
    spec = client.get("/openapi.json").get_json()
    params = {p["name"]: p for p in spec["paths"]["/api/remove"]["post"]["parameters"]}
    assert list(params) == [f.name for f in OPTIONS]
    properties = spec["components"]["schemas"]["RemoveRequest"]["properties"]
    assert list(properties) == list(REMOVE_FIELDS)
    assert spec["components"]["schemas"]["RemoveRequest"]["required"] == list(PATHS)
    remove = build_parser()._subparsers._group_actions[0].choices["remove"]
    flags = {opt for action in remove._actions for opt in action.option_strings}
    for field in OPTIONS:
        assert "--" + field.name.replace("_", "-") in flags, field.name
        assert params[field.name]["description"].startswith(field.help)
    assert properties["threshold"]["maximum"] == JSON_OPTIONS["threshold"].hi == 255
    # the model field names the served models: one here, the session's u2netp
    assert params["model"]["schema"]["enum"] == properties["model"]["enum"] == ["u2netp"]


@pytest.mark.parametrize("raw, parsed", [
    ({"threshold": " 200 "}, {"threshold": 200}), ({"crop": "yes"}, {"crop": True}),
    ({"crop": ""}, {"crop": False}), ({"bg_color": "#fff"}, {"bg_color": (255, 255, 255)}),
    ({"bg_color": "1, 2,3"}, {"bg_color": (1, 2, 3)}), ({"format": "WEBP"}, {"format": "webp"}),
    ({"bg_color": "Red"}, {"bg_color": (255, 0, 0)}), ({"bg_color": "00ff00"}, {"bg_color": (0, 255, 0)}),
    ({"bg_color": "#0000ff80"}, {"bg_color": (0, 0, 255, 128)}),
    ({"bg_color": "#0000ffff"}, {"bg_color": (0, 0, 255)}), ({"format": "auto"}, {"format": "auto"}),
    ({"padding": "20"}, {"padding": (20, False)}), ({"padding": "20 PX"}, {"padding": (20, False)}),
    ({"padding": "12.5%"}, {"padding": (12.5, True)}),
])
def test_strings_parse_to_typed_values(raw, parsed):
    values = parse_strings(raw)
    assert {k: values[k] for k in parsed} == parsed


@pytest.mark.parametrize("name, value, message", [
    ("threshold", True, "'threshold' must be an integer from 0 to 255, got True"),
    ("threshold", "200", "'threshold' must be an integer from 0 to 255, got '200'"),
    ("subjectFilter", None, "'subjectFilter' must be true or false, got None"),
    ("mode", "x" * 500, "'mode' must be one of threshold, soft, refine, got 'xxxx"),
])
def test_json_values_are_checked_strictly_with_short_messages(name, value, message):
    with pytest.raises(BadRequest) as error:
        JSON_OPTIONS[name].from_json(value)
    assert error.value.message.startswith(message) and len(error.value.message) < 140


def test_unknown_names_are_listed_with_the_expected_ones():
    with pytest.raises(BadRequest, match=r"unknown field\(s\) 'treshold'; expected sourceImagePath"):
        refuse_unknown({"treshold": 1, "sourceImagePath": "/a"}, REMOVE_FIELDS, "field")
    with pytest.raises(BadRequest, match=r"unknown option\(s\) ''"):  # a nameless multipart field
        refuse_unknown({None: "x"}, [f.name for f in OPTIONS], "option")
