"""Short-lived, single-use tickets that open a WebSocket: a browser cannot set an Authorization header on one,
and the long-lived token must never appear in a URL or a log.

Tickets are kept in the job store (``add_ticket`` / ``take_ticket``), by their SHA-256 only, so that a ticket
issued by one service replica opens a stream on any other, and a ticket is used once across all of them.
"""
from __future__ import annotations

import hashlib
import secrets
import time
from typing import Protocol


class TicketBackend(Protocol):
    def add_ticket(self, digest: str, expires_at: float, now: float) -> None: ...

    def take_ticket(self, digest: str) -> float | None: ...


def _digest(ticket: str) -> str:
    return hashlib.sha256(ticket.encode()).hexdigest()


class TicketStore:
    def __init__(self, backend: TicketBackend, seconds: float = 60.0, clock=time.time):
        """``clock``: epoch seconds, the same on every replica (a ticket crosses machines)."""
        self.backend = backend
        self.seconds = seconds
        self._clock = clock

    def issue(self) -> str:
        ticket = secrets.token_urlsafe(24)
        now = self._clock()
        self.backend.add_ticket(_digest(ticket), now + self.seconds, now)
        return ticket

    def redeem(self, ticket: str) -> str | None:
        """None when the ticket is good (it is used up now); else why it is refused."""
        expiry = self.backend.take_ticket(_digest(ticket))
        if expiry is None:
            return "unknown or already used ticket: get a new one from POST /v1/live/tickets"
        if expiry <= self._clock():
            return f"expired ticket (valid {self.seconds:.0f} s): get a new one from POST /v1/live/tickets"
        return None
