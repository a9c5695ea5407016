"""The options table is the one definition: the CLI, the API's form fields, the live start schema and the published
table all follow it."""
from __future__ import annotations

import inspect
import json

import pytest

from swapstream.services import options
from swapstream.services.cli import build_parser
from swapstream.services.http.forms import swap_form
from swapstream.services.live import protocol

ALL = [(table, option) for table, entries in options.TABLES.items() for option in entries.values()]


@pytest.mark.parametrize("table, option", ALL, ids=lambda v: v if isinstance(v, str) else v.name)
def test_every_default_is_allowed_by_its_own_entry(table, option):
    if option.default is not None and option.parse is None:
        assert option.check(option.default) == option.default


def test_the_cli_takes_every_swap_option_with_the_tables_defaults():
    args = build_parser().parse_args(["swap", "--source", "a.jpg", "--target", "b.mp4", "-o", "c.mp4"])
    for name, option in options.SWAP.items():
        assert getattr(args, name) == option.default, name
    args = build_parser().parse_args(["serve"])
    assert args.max_resolution == options.pixels(options.SERVE["max_resolution"].default)


@pytest.mark.parametrize("argv", [["swap", "--faces", "nobody"], ["swap", "--preset", "fastest"],
                                  ["serve", "--workers", "-1"], ["live", "--quality", "0"]])
def test_the_cli_refuses_what_the_table_refuses(argv, capsys):
    required = {"swap": ["--source", "a", "--target", "b", "-o", "c"], "serve": [], "live": ["--source", "a",
                                                                                           "--input", "b"]}
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(argv[:1] + required[argv[0]] + argv[1:])
    assert exit_.value.code == 2 and argv[1] in capsys.readouterr().err


def test_the_api_form_has_the_swap_form_options_with_their_defaults():
    fields = inspect.signature(swap_form).parameters
    expected = {name: o.default for name, o in options.SWAP.items() if o.form}
    assert {name: p.default for name, p in fields.items()} == expected


def test_the_live_start_schema_follows_the_live_table():
    for name, option in options.LIVE.items():
        field = protocol.START[name]
        assert (field.kind, field.choices, field.low, field.high) == (option.kind, option.choices, option.low,
                                                                       option.high)
    with pytest.raises(protocol.ProtocolError, match="quality"):
        protocol.validate({"type": "start", "quality": options.LIVE["quality"].high + 1}, protocol.START, "start")


def test_the_published_table_is_json_with_choices_and_bounds():
    published = json.loads(json.dumps(options.published()))
    faces = next(o for o in published["swap"] if o["name"] == "faces")
    assert [c["value"] for c in faces["choices"]] == list(options.SWAP["faces"].choices)
    score = next(o for o in published["swap"] if o["name"] == "score_threshold")
    assert (score["low"], score["high"], score["high_open"]) == (0.1, 1.0, True)
