"""Every user-facing option, once: name, type, default, bounds or choices, help. The CLI's arguments and ``--help``
(``add_arguments``), the API's form fields (``swapstream.services.http``), the live ``start`` validation
(``check``), the pages' controls and ``GET /v1/options`` (``published``) are all built from these tables.

Adding an option is one entry here plus the code that uses it. Imports nothing of ours: every room may read it.

Below a score threshold of about 0.1 the detector reports noise as faces (a one-face photo gave 1000 "faces" at
1e-6) and its post-processing slows to a crawl (the engine also keeps at most 32 faces per frame).
"""
from __future__ import annotations

import argparse
import json
import math
import os
from dataclasses import dataclass
from typing import Any, Callable

MB = 1 << 20
MAX_POINTS = 32  # picked faces, as many as the engine swaps per frame


def names(text: str) -> tuple[str, ...]:
    """A comma-separated list -> its items, stripped (empty: none)."""
    return tuple(item.strip() for item in text.split(",") if item.strip())


def points(text: str) -> tuple[tuple[float, float], ...]:
    """X,Y (one point) or a JSON list of [x, y] (several) -> the points, in pixels from the top-left corner."""
    text = str(text).strip()
    try:
        value = json.loads(text) if text.startswith("[") else [[float(v) for v in text.split(",")]]
    except ValueError:
        value = None
    if isinstance(value, list) and len(value) == 2 and all(_coordinate(v) for v in value):
        value = [value]  # one [x, y]
    if not (isinstance(value, list) and 0 < len(value) <= MAX_POINTS and all(
            isinstance(p, list) and len(p) == 2 and all(_coordinate(v) for v in p) for p in value)):
        raise ValueError(f"expected X,Y or a JSON list of up to {MAX_POINTS} [x, y] pixel positions such as "
                         f"[[320, 180], [500, 200]], got {text[:40]!r}")
    return tuple((float(x), float(y)) for x, y in value)


def indices(text: str) -> tuple[int, ...]:
    """0,1,... or a JSON list of integers -> the indices (each >= 0)."""
    text = str(text).strip()
    try:
        value = json.loads(text) if text.startswith("[") else [int(v) for v in text.split(",")]
    except ValueError:
        value = None
    if not (isinstance(value, list) and 0 < len(value) <= MAX_POINTS and all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)):
        raise ValueError(f"expected 0,1,... or a JSON list of up to {MAX_POINTS} photo numbers from 0, such as "
                         f"[0, 1], got {text[:40]!r}")
    return tuple(value)


def _coordinate(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


def pixels(text: str) -> int:
    """WIDTHxHEIGHT -> the pixel count."""
    width, _, height = str(text).lower().partition("x")
    if not (width.isdigit() and height.isdigit()):
        raise ValueError(f"expected WIDTHxHEIGHT such as 1920x1080, got {text!r}")
    return int(width) * int(height)


@dataclass(frozen=True)
class Option:
    name: str
    kind: type                       # int, float, bool or str
    default: Any                     # None: unset (the help says what happens then)
    help: str
    choices: tuple = ()              # the allowed values, if only some are
    labels: tuple = ()               # how the pages name the choices (same order)
    low: float | None = None         # bounds of a number
    high: float | None = None
    low_open: bool = False           # low itself is excluded
    high_open: bool = False
    step: float | None = None        # the pages' input step
    form: bool = False               # also a form field of the API (swap) / a field of the live ``start`` (live)
    cli: bool = True                 # also a command-line argument
    env: str | None = None           # environment variable read when the argument is not given
    parse: Callable[[str], Any] | None = None  # text -> value when not ``kind`` (e.g. WIDTHxHEIGHT)
    flag: str = ""                   # the CLI flag, when not --name-with-dashes (bools: --no-name / --name)
    repeat: bool = False             # the CLI flag may be given several times; the values (parsed) are joined

    # ----------------------------------------------------------------------------------------- checking

    def describe(self) -> str:
        if self.low is None and self.high is None:
            return ""
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        return f"{'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"

    def problem(self, value) -> str | None:
        """Why ``value`` is not allowed, or None."""
        if self.choices and value not in self.choices:
            return f"{value!r} is not one of {', '.join(map(str, self.choices))}"
        too_low = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        too_high = self.high is not None and (value >= self.high if self.high_open else value > self.high)
        if too_low or too_high:
            return f"{value:g} is {'outside' if self.high is not None else 'not'} {self.describe()}"
        return None

    def check(self, value):
        """``value`` if it has this option's type and is allowed; else ValueError saying what is allowed."""
        if value is None and self.default is None:
            return None  # unset: the run chooses (the help says how)
        typed = isinstance(value, self.kind) and not (self.kind is not bool and isinstance(value, bool))
        if self.kind is float and isinstance(value, int) and not isinstance(value, bool):
            typed = True
        if not typed:
            raise ValueError(f"{self.name} must be {self.describe_kind()}")
        problem = self.problem(value)
        if problem:
            raise ValueError(f"{self.name}: {problem}")
        return value

    def describe_kind(self) -> str:
        if self.choices:
            return " or ".join(f'"{c}"' if isinstance(c, str) else str(c) for c in self.choices)
        if self.kind is bool:
            return "true or false"
        kind = {int: "an integer", float: "a number", str: "text"}[self.kind]
        return f"{kind} in {self.describe()}" if self.describe() else kind

    # ----------------------------------------------------------------------------------------- the CLI

    def argparse_type(self):
        """An argparse ``type=`` that parses the option and refuses values outside its bounds (a usage error)."""
        def parse(text: str):
            try:
                value = self.parse(text) if self.parse else self.kind(text)
            except ValueError as error:
                what = "an integer" if self.kind is int else "a number" if self.kind is float else "a value"
                raise argparse.ArgumentTypeError(str(error) if self.parse else f"expected {what}, got {text!r}") \
                    from None
            problem = None if self.parse else self.problem(value)
            if problem:
                raise argparse.ArgumentTypeError(problem)
            return value

        parse.__name__ = self.name
        return parse

    def help_text(self) -> str:
        bounds = self.describe()
        extra = f", {'in ' if self.high is not None else ''}{bounds}" if bounds else ""
        if self.default is not None and self.kind is not bool:
            extra += f" ({self.default})"
        if self.env:
            extra += f" (default: ${self.env})"
        return self.help + extra

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        dest = self.name
        if self.kind is bool:
            flag = self.flag or (f"--no-{dest.replace('_', '-')}" if self.default else f"--{dest.replace('_', '-')}")
            parser.add_argument(flag, dest=dest, action="store_false" if self.default else "store_true",
                                help=f"do not {self.help}" if self.default else self.help)
            return
        flag = self.flag or f"--{dest.replace('_', '-')}"
        default = os.environ.get(self.env) if self.env else None
        parser.add_argument(flag, dest=dest, type=self.argparse_type(), choices=self.choices or None,
                            default=self.default if default is None else default, help=self.help_text(),
                            **({"action": "extend"} if self.repeat else {}))

    # --------------------------------------------------------------------------------------- published

    def published(self) -> dict:
        """The option as ``GET /v1/options`` shows it (the pages build their controls from this)."""
        kind = {int: "integer", float: "number", bool: "boolean", str: "string"}[self.kind]
        entry = {"name": self.name, "type": kind, "default": self.default, "help": self.help}
        if self.choices:
            entry["choices"] = [{"value": c, "label": label} for c, label in zip(self.choices, self.labels or
                                                                                  self.choices)]
        for key in ("low", "high", "step"):
            if getattr(self, key) is not None:
                entry[key] = getattr(self, key)
        if self.low is not None:
            entry["low_open"] = self.low_open
        if self.high is not None:
            entry["high_open"] = self.high_open
        return entry


def _table(*options: Option) -> dict[str, Option]:
    return {option.name: option for option in options}


FACES = ("all", "largest")
FACE_LABELS = ("all faces", "the largest face")
PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")
DEVICE = Option("device", str, "cpu", "where DALI runs", choices=("cpu", "gpu"))
SMOOTHING = Option("smoothing", bool, True, "smooth the faces' landmarks and meshes across frames", form=True)
SWAPPERS = ("mesh", "simswap")
# Unset (None): the run's default, chosen by ``engine.swappers.choice`` (the service's own for jobs and streams).
SWAPPER = Option("swapper", str, None, "the face swapper; default: simswap if its real weights are present, else "
                 "mesh (every run says which and why)", choices=SWAPPERS,
                 labels=("mesh (geometric)", "simswap (neural)"), form=True)

# The options of one swap: ``swapstream swap``, ``POST /v1/jobs``, ``POST /v1/swap-image``.
SWAP = _table(
    Option("faces", str, "all", "which faces to swap", choices=FACES + ("reference",),
           labels=FACE_LABELS + ("the person in a reference photo",), form=True),
    Option("reference_distance", float, 0.6, "cosine distance to the reference below which a face counts as that "
           "person", low=0.0, high=2.0, low_open=True, step=0.05, form=True),
    Option("score_threshold", float, 0.6, "detector score threshold", low=0.1, high=1.0, high_open=True, step=0.05,
           form=True),
    SMOOTHING,
    Option("tracking", str, "mesh", "how faces are followed between frames: mesh (each face's mesh gives its next "
           "crop; the detector runs every 10 frames, at cuts and when a face is lost) or detector (every frame)",
           choices=("mesh", "detector")),
    Option("batch_size", int, 16, "frames per batch", low=1, high=64, step=1, form=True),
    Option("encoder", str, "libx264", "ffmpeg video encoder (libx264, libx265, libvpx-vp9 ...)"),
    Option("crf", int, 18, "encoder quality, lower is better", low=0, high=51, step=1, form=True),
    Option("preset", str, "medium", "x264 encoder preset", choices=PRESETS, form=True),
    Option("audio", bool, True, "copy the target's audio", form=True),
    DEVICE,
    SWAPPER,
    Option("start", float, None, "start of the part of a target video to swap, seconds from its first frame "
           "(default: its beginning)", low=0, step=0.1, form=True),
    Option("end", float, None, "end of the part of a target video to swap, seconds from its first frame (default: "
           "its end)", low=0, low_open=True, step=0.1, form=True),
    Option("max_height", int, None, "highest output video, pixels: a taller target is scaled down to it, keeping its "
           "shape (default: the target's size)", low=16, high=4320, step=2, form=True),
    Option("fps", float, None, "output frame rate, at most the target's: frames are left out evenly to reach it "
           "(default: the target's rate)", low=1, high=120, step=1, form=True),
    # Picking faces by pointing at them (the pages' clicks); each picked face is followed by its track and identity.
    Option("pick_time", float, None, "seconds from the target video's first frame of the frame the pick points are "
           "on (default: its first frame; a photo has one)", low=0, step=0.1, form=True),
    Option("pick_points", str, None, "swap only the faces under these points, in the frame at pick_time: X,Y in "
           "pixels from the top-left (repeat --pick for more) or, in the API, a JSON list such as [[320,180]]; each "
           "face is followed through the video, and re-found by its look after cuts", form=True, parse=points,
           flag="--pick", repeat=True),
    Option("pick_sources", str, None, "which source photo each picked face becomes, in pick_points order: photo "
           "numbers from 0 in the order given, e.g. 1,0 or [1,0] (default: all the photos make one identity for "
           "every picked face)", form=True, parse=indices),
)

# ``swapstream serve``: the service's addresses, store, workers and limits.
SERVE = _table(
    Option("host", str, "127.0.0.1", "address to listen on (any other than loopback needs a token)"),
    Option("port", int, 8080, "port to listen on", low=0, high=65535),
    Option("data", str, "swapstream-data", "folder for uploads, results and the SQLite store"),
    Option("store", str, None, "job store URL, e.g. postgresql://user@db/swapstream (default: SQLite in --data)"),
    Option("workers", int, 1, "jobs run at once by this process; 0 only queues them", low=0),
    Option("max_queued", int, 16, "queued jobs before new ones get 429", low=0, low_open=True),
    Option("max_attempts", int, 3, "times a job is started before it fails, when its worker dies or Triton fails; "
           "a full disk does not count", low=0, low_open=True),
    Option("token", str, None, "bearer token required on /v1", env="SWAPSTREAM_TOKEN"),
    Option("max_video_mb", float, 1024.0, "largest video upload, MB", low=0, low_open=True),
    Option("max_photo_mb", float, 20.0, "largest photo upload, MB", low=0, low_open=True),
    Option("max_duration", float, 600.0, "longest video, seconds", low=0, low_open=True),
    Option("max_fps", float, 120.0, "highest average frame rate", low=0, low_open=True),
    Option("max_frames", int, 36000, "most frames in a video", low=0, low_open=True),
    Option("max_resolution", str, "3840x2160", "largest frame and largest photo, WIDTHxHEIGHT", parse=pixels),
    Option("min_free_mb", float, 100.0, "free space kept on the data folder's disk: below it /readyz is 503, no "
           "job starts and submissions get 507", low=0),
    Option("stale_after", float, 300.0, "seconds without a heartbeat before a running job is re-queued", low=0,
           low_open=True),
    Option("triton_timeout", float, 120.0, "deadline of every Triton call, seconds", low=0, low_open=True),
    Option("triton_unresponsive", float, 30.0, "seconds without an answer before the embedded Triton is restarted",
           low=0, low_open=True),
    Option("drain_timeout", float, 0.0, "on SIGTERM, drain first: readiness 503, no new job or stream, live streams "
           "closed with 1012 (reconnect), and running jobs get this many seconds to finish before they go back to "
           "the queue without spending an attempt; 0: stop at once", low=0),
    DEVICE,
    Option("max_streams", int, 8, "live streams open at once; one more is closed with 1013, try later", low=0,
           low_open=True),
    Option("live_window_ms", float, 4.0, "how long the live scheduler waits for other streams' frames to join a "
           "batch, ms", low=0),
    Option("live_max_batch", int, 16, "live frames per detect/swap batch; 1 = frame by frame, batch-1 calls", low=0,
           low_open=True),
    Option("live_latency_ms", float, 200.0, "latency budget of a live frame, ms: a batch stops waiting for other "
           "streams' frames when waiting would take its oldest frame past it (with the time a batch takes, as "
           "measured); 0: no budget", low=0),
    Option("live_idle_timeout", float, 30.0, "seconds without a frame before a live stream is closed", low=0,
           low_open=True),
    Option("allowed_hosts", str, "", "comma-separated Host names the API answers besides IP addresses and "
           "localhost (e.g. the name behind a proxy); * accepts any", parse=names),
    Option("swapper", str, None, "the service's default face swapper (a job, photo or stream may name another); "
           "default: simswap if its real weights are present, else mesh (logged at start)", choices=SWAPPERS),
    Option("allowed_origins", str, "", "comma-separated page origins allowed to call the API besides the "
           "service's own pages (e.g. https://app.example.com); * accepts any", parse=names),
)

# A live stream: the ``start`` message of ``WS /v1/live``, ``swapstream live``, the live page.
LIVE = _table(
    Option("faces", str, "all", "which faces to swap", choices=FACES, labels=FACE_LABELS, form=True),
    SMOOTHING,
    Option("quality", int, 80, "JPEG quality of the frames sent and returned", low=1, high=100, step=1, form=True),
    SWAPPER,
)

TABLES = {"swap": SWAP, "serve": SERVE, "live": LIVE}
# The swap's numeric options with bounds on both sides (the CLI refuses values outside them, exit 2; so does the API).
SWAP_OPTION_BOUNDS = {name: o for name, o in SWAP.items() if o.low is not None and o.high is not None}


def default(name: str, table: str = "swap"):
    return TABLES[table][name].default


def add_arguments(parser: argparse.ArgumentParser, table: str) -> None:
    """The table's command-line options as arguments of ``parser`` (types, bounds, choices, defaults, help)."""
    for option in TABLES[table].values():
        if option.cli:
            option.add_to(parser)


def check(table: str, values: dict) -> dict:
    """The table's form options in ``values`` (missing ones: their defaults), checked; ValueError says which one
    is wrong and what is allowed."""
    return {name: option.check(values.get(name, option.default))
            for name, option in TABLES[table].items() if option.form}


def check_bounds(table: str, values: dict) -> None:
    """Raises ValueError naming every numeric option in ``values`` out of its bounds."""
    problems = [f"{name}: {problem}" for name, option in TABLES[table].items()
                if name in values and option.kind in (int, float) and values[name] is not None
                and (problem := option.problem(values[name]))]
    if problems:
        raise ValueError("; ".join(problems))


def published() -> dict:
    """Every table, as ``GET /v1/options`` shows it."""
    return {table: [option.published() for option in options.values()] for table, options in TABLES.items()}
