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
- server → client ``error``: ``{"type": "error", "seq": N | null, "detail": "..."}``: one frame was refused
  (not an image, out of order, too large...); the stream goes on.
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
"""
from __future__ import annotations

import json
import struct

SUBPROTOCOL = "swapstream.live.v1"
TICKET_PREFIX = "ticket."

# Close codes: the standard ones where they fit, 44xx (private range) for the rest.
CLOSE_NORMAL = 1000
CLOSE_SERVICE_RESTART = 1012     # the service is stopping (uvicorn closes every socket with it): reconnect later
CLOSE_POLICY = 1008              # missing, wrong or expired ticket
CLOSE_TOO_BIG = 1009             # a message larger than the frame limit
CLOSE_TRY_LATER = 1013           # too many streams
CLOSE_BAD_START = 4400           # no or malformed ``start``, or a frame before ``start``
CLOSE_UNKNOWN_SOURCE = 4404      # ``source_id`` not found
CLOSE_IDLE = 4408                # no frame within the idle timeout
CLOSE_NO_FACE = 4422             # the source photo has no face

_LENGTH = struct.Struct(">I")


class ProtocolError(ValueError):
    """A binary message that is not a well-formed frame."""


def pack_frame(header: dict, image: bytes) -> bytes:
    encoded = json.dumps(header, separators=(",", ":")).encode()
    return _LENGTH.pack(len(encoded)) + encoded + image


def unpack_frame(message: bytes) -> tuple[dict, bytes]:
    if len(message) < _LENGTH.size:
        raise ProtocolError("a frame starts with a 4-byte header length")
    (length,) = _LENGTH.unpack_from(message)
    end = _LENGTH.size + length
    if end > len(message):
        raise ProtocolError(f"the header length ({length} bytes) runs past the message ({len(message)} bytes)")
    try:
        header = json.loads(message[_LENGTH.size:end])
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ProtocolError(f"the frame header is not JSON: {error}") from None
    if not isinstance(header, dict):
        raise ProtocolError("the frame header must be a JSON object")
    return header, bytes(message[end:])
