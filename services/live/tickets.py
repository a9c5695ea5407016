"""Short-lived, single-use tickets that open a WebSocket: a browser cannot set an Authorization header on one,
and the long-lived token must never appear in a URL or a log."""
from __future__ import annotations

import secrets
import threading
import time


class TicketStore:
    def __init__(self, seconds: float = 60.0, clock=time.monotonic):
        self.seconds = seconds
        self._clock = clock
        self._expiry: dict[str, float] = {}
        self._lock = threading.Lock()

    def issue(self) -> str:
        ticket = secrets.token_urlsafe(24)
        with self._lock:
            now = self._clock()
            for old in [t for t, expiry in self._expiry.items() if expiry <= now]:
                del self._expiry[old]  # expired and never used
            self._expiry[ticket] = now + self.seconds
        return ticket

    def redeem(self, ticket: str) -> str | None:
        """None when the ticket is good (it is used up now); else why it is refused."""
        with self._lock:
            expiry = self._expiry.pop(ticket, None)
        if expiry is None:
            return "unknown or already used ticket: get a new one from POST /v1/live/tickets"
        if expiry <= self._clock():
            return f"expired ticket (valid {self.seconds:.0f} s): get a new one from POST /v1/live/tickets"
        return None
