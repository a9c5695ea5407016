"""The ``WS /v1/live`` wire protocol, shared by the server, the ``swapstream live`` client and (in JavaScript) the
``/live`` page.

Connecting: when the service has a token, the client first asks ``POST /v1/live/tickets`` (bearer token) for a
short-lived, single-use ticket and offers it as a WebSocket subprotocol, ``Sec-WebSocket-Protocol:
swapstream.live.v1, ticket.<ticket>`` (a browser cannot set headers on a WebSocket, and a secret in the URL ends
up in logs). The server accepts with ``swapstream.live.v1``.

Text messages are JSON objects with a ``type``:

- client → server ``start``: ``{"type": "start", "source_id": "..."}`` (an identity stored by ``POST
  /v1/sources``) or ``{"type": "start", "source_image": "<base64 JPEG/PNG/WebP>"}``, with options ``faces``
  (``all`` | ``largest``), ``smoothing`` (bool) and ``quality`` (1–100, of the returned frames).
- server → client ``ready``: ``{"type": "ready", "stream": "<id>", "limits": {...}}`` once the source is known.
- client → server ``source``: ``{"type": "source", "source_id": "..."}`` or ``{"type": "source", "source_image":
  "<base64 photo>"}``: from now on swap in this person, without reconnecting. Bounded like ``start``'s source
  (``MAX_START_BYTES``, the service's photo worker, a stored source of the stream's swapper) and one at a time: a
  ``source`` sent while the previous one is still being made is refused. Frames keep flowing, with the previous
  face until the new one is ready.
- server → client ``switched``: ``{"type": "switched", "source_id": "..." | null}``: the answers to frames
  taken from now on carry the new face.
- server → client ``error``: ``{"type": "error", "seq": N | null, "code": "...", "detail": "...", "request":
  "source" (only for a refused ``source``)}``: one frame (``seq``) or one message was refused (not an image,
  out of order, too large, a source without a face...); the stream goes on. ``code`` is the machine-readable kind
  (``ErrorCode`` in ``swapstream.services.engine.errors``; clients word it themselves), ``detail`` says what to do.
- client → server ``stop``: the client is done; the server answers what is in flight, sends ``end`` and closes
  (1000).
- server → client ``end``: ``{"type": "end", "answered": n, "dropped": [seq, ...]}``, the last message after a
  ``stop``: ``dropped`` lists the drops no answer has reported yet.

Binary messages are frames, both ways: a 4-byte big-endian length, a UTF-8 JSON header of that length, then the
image bytes (JPEG or WebP; the answer uses the encoding of the frame it answers).

- client → server header: ``{"seq": N, "ts": capture_time_ms}`` (``seq`` strictly increasing).
- server → client header: ``{"seq": N, "ts": <echoed>, "faces": k, "batch": frames in the server's batch,
  "timings": {"queue": ms, "detect": ms, "track": ms, "align": ms, "swap": ms, "blend": ms, "encode": ms,
  "total": ms}, "dropped": [seq, ...]}`` — ``dropped`` lists the frames the server dropped since its previous
  answer (a newer frame arrived first, or the client was not reading). ``detect`` to ``blend`` are the times of
  the batch's shared calls; ``queue`` is from the frame's arrival to its batch's start, ``total`` to its answer.

Every frame sent is either answered or reported dropped (or refused with an ``error``): sent = answered + dropped
+ refused. A stream that breaks a limit is closed with one of the close codes below and a reason that says what to
do.

The messages a client sends are checked against ``START``, ``SOURCE`` and ``FRAME_HEADER`` below (the schema;
the server validates every message with ``parse_start``, ``parse_message`` and ``unpack_frame``): JSON without
``NaN``/``Infinity``, numbers that overflow or runaway nesting, each field of its type and within its range;
fields not in the schema are ignored.
"""
from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass

from swapstream.services import options
from swapstream.services.engine.errors import ErrorCode

SUBPROTOCOL = "swapstream.live.v1"
TICKET_PREFIX = "ticket."

# Close codes: the standard ones where they fit, 44xx (private range) for the rest.
CLOSE_NORMAL = 1000
CLOSE_SERVICE_RESTART = 1012     # the service is stopping (uvicorn closes every socket with it): reconnect later
CLOSE_POLICY = 1008              # missing, wrong or expired ticket
CLOSE_TOO_BIG = 1009             # a message larger than its limit (a frame, a ``start``, its source photo)
CLOSE_TRY_LATER = 1013           # too many streams, or the inference server failed
CLOSE_BAD_START = 4400           # no or malformed ``start`` (or its photo is not a usable image), or a frame before it
CLOSE_UNKNOWN_SOURCE = 4404      # ``source_id`` not found
CLOSE_IDLE = 4408                # no frame within the idle timeout
CLOSE_NO_FACE = 4422             # the source photo has no face (and only that)

MAX_HEADER_BYTES = 1024          # a frame's JSON header
MAX_START_BYTES = 2 * 1024 * 1024  # a ``start`` message, its base64 ``source_image`` included
MAX_TS = 1e15                    # |ts|, ms: far beyond any clock (the year 33658)

_LENGTH = struct.Struct(">I")


class ProtocolError(ValueError):
    """A message that is not well-formed: not the framing, not JSON, or outside the schema. ``seq``: the frame's,
    when its header has a usable one; ``code``: its kind in an ``error`` message."""

    def __init__(self, message: str, seq: int | None = None, code: ErrorCode = ErrorCode.BAD_MESSAGE):
        super().__init__(message)
        self.seq = seq
        self.code = code


@dataclass(frozen=True)
class Field:
    """One field of a message: its JSON type, whether it must be there, and its range or choices."""
    kind: type                          # int, float (any finite number), str or bool
    required: bool = False
    low: float | None = None
    high: float | None = None
    choices: tuple = ()
    max_length: int | None = None       # of a string

    def problem(self, value) -> str | None:
        if self.kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            expected = "a finite number"
        elif self.kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
            expected = "an integer"
        else:
            ok = isinstance(value, self.kind)
            expected = {str: "a string", bool: "true or false"}[self.kind]
        if not ok:
            return f"must be {expected}"
        if self.choices and value not in self.choices:
            return "must be " + " or ".join(json.dumps(c) for c in self.choices)
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            return f"must be from {self.low:g} to {self.high:g}"
        if self.max_length is not None and len(value) > self.max_length:
            return f"must be at most {self.max_length} characters"
        return None


# client -> server; fields not named here are ignored
START = {"type": Field(str, required=True, choices=("start",)),
         "source_id": Field(str, max_length=64),
         "source_image": Field(str, max_length=MAX_START_BYTES),
         **{name: Field(o.kind, choices=o.choices, low=o.low, high=o.high)  # the options table's live options
            for name, o in options.LIVE.items() if o.form}}
SOURCE = {"type": Field(str, required=True, choices=("source",)),
          "source_id": Field(str, max_length=64),
          "source_image": Field(str, max_length=MAX_START_BYTES)}
FRAME_HEADER = {"seq": Field(int, required=True, low=0, high=2 ** 53),
                "ts": Field(float, low=-MAX_TS, high=MAX_TS)}


def validate(message, schema: dict[str, Field], what: str) -> dict:
    """``message`` when it is an object whose fields follow ``schema``; else ProtocolError naming the field."""
    if not isinstance(message, dict):
        raise ProtocolError(f"the {what} must be a JSON object")
    for name, field in schema.items():
        if name not in message:
            if field.required:
                raise ProtocolError(f"the {what} needs {name!r}")
            continue
        problem = field.problem(message[name])
        if problem:
            raise ProtocolError(f"the {what}'s {name!r} {problem}")
    return message


def _no_constant(name: str):
    raise ProtocolError(f"{name} is not allowed in a message: send finite numbers")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ProtocolError(f"the number {text[:20]} is too large: send finite numbers")
    return value


def parse_json(text: str | bytes, what: str):
    """Strict JSON: no NaN/Infinity, no number that overflows to infinity, no nesting deep enough to exhaust the
    parser's recursion."""
    try:
        return json.loads(text, parse_constant=_no_constant, parse_float=_finite)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ProtocolError(f"the {what} is not JSON: {error}") from None
    except RecursionError:
        raise ProtocolError(f"the {what} is nested too deeply; send a flat JSON object") from None
    except ProtocolError as error:
        raise ProtocolError(f"the {what}: {error}") from None


def parse_start(text: str) -> dict:
    """A ``start`` message checked against ``START``; ProtocolError says what is wrong."""
    if len(text) > MAX_START_BYTES:
        raise ProtocolError(f"the start message is {len(text)} bytes, more than {MAX_START_BYTES}: send a smaller "
                            "source photo (its face at a few hundred pixels is enough), or a source_id")
    start = parse_json(text, "first message")
    if not isinstance(start, dict) or start.get("type") != "start":
        raise ProtocolError('the first message must be {"type": "start", ...}')
    start = validate(start, START, "start message")
    if not isinstance(start.get("source_id"), str) and not isinstance(start.get("source_image"), str):
        raise ProtocolError("the start message needs source_id or source_image (a base64 photo)")
    return start


def parse_message(text: str) -> dict:
    """A text message after ``start``: ``stop`` or ``source`` (checked against ``SOURCE``); ProtocolError (its
    ``code`` says what kind) otherwise."""
    if len(text) > MAX_START_BYTES:
        raise ProtocolError(f"the message is {len(text)} bytes, more than {MAX_START_BYTES}: send a smaller source "
                            "photo (its face at a few hundred pixels is enough), or a source_id",
                            code=ErrorCode.TOO_LARGE)
    message = parse_json(text, "text message")
    kind = message.get("type") if isinstance(message, dict) else None
    if kind == "stop":
        return message
    if kind != "source":
        raise ProtocolError(f"unexpected text message {str(kind)[:20]!r} after start: send frames (binary), "
                            '{"type": "source", ...} or {"type": "stop"}')
    message = validate(message, SOURCE, "source message")
    if not isinstance(message.get("source_id"), str) and not isinstance(message.get("source_image"), str):
        raise ProtocolError("the source message needs source_id or source_image (a base64 photo)")
    return message


def error_message(code: ErrorCode, detail: str, seq: int | None = None, request: str | None = None) -> dict:
    """The ``error`` message: ``code`` beside ``detail``; ``request``: the kind of message refused, if not a frame."""
    message = {"type": "error", "seq": seq, "code": str(code), "detail": detail}
    if request:
        message["request"] = request
    return message


def pack_frame(header: dict, image: bytes) -> bytes:
    encoded = json.dumps(header, separators=(",", ":")).encode()
    return _LENGTH.pack(len(encoded)) + encoded + image


def unpack_frame(message: bytes, max_header_bytes: int | None = None) -> tuple[dict, bytes]:
    """(header, image) of a frame either way; the server gives ``MAX_HEADER_BYTES`` (an answer's header carries a
    ``dropped`` list of any length)."""
    if len(message) < _LENGTH.size:
        raise ProtocolError("a frame starts with a 4-byte header length", code=ErrorCode.BAD_FRAME)
    (length,) = _LENGTH.unpack_from(message)
    end = _LENGTH.size + length
    if end > len(message):
        raise ProtocolError(f"the header length ({length} bytes) runs past the message ({len(message)} bytes)",
                            code=ErrorCode.BAD_FRAME)
    if max_header_bytes is not None and length > max_header_bytes:
        raise ProtocolError(f"the frame header is {length} bytes, more than {max_header_bytes}",
                            code=ErrorCode.BAD_FRAME)
    text = bytes(message[_LENGTH.size:end])
    try:
        header = validate(parse_json(text, "frame header"), FRAME_HEADER, "frame header")
    except ProtocolError as error:
        raise ProtocolError(str(error), _seq_of(text), ErrorCode.BAD_FRAME) from None
    return header, bytes(message[end:])


def _seq_of(text: bytes) -> int | None:
    """The ``seq`` of a refused header when it has a valid one (said in the error), read leniently."""
    try:
        seq = json.loads(text).get("seq")
    except Exception:  # noqa: BLE001 - not even lenient JSON, or not an object: no seq to report
        return None
    return seq if FRAME_HEADER["seq"].problem(seq) is None else None
