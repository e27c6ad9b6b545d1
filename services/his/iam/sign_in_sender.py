"""Who delivers a patient's one-time sign-in code: a small protocol, and the local sender.

Production plugs an SMS gateway's sender into IamService (`sender=`). The local sender used by
`his up` and the tests writes the code where a developer can read it. It is the only place a
code may ever appear in a log: no other log line, error message, audit event or trace attribute
carries one (tests/iam/test_patient_sign_in.py checks the logs).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)


class CodeSender(Protocol):
    """Delivers a sign-in code to a phone number; raises if it could not."""

    # True only for a sender whose delivery is instant and local (the development one): the
    # answer then waits for it, so the code is in place when the caller reads it. A real
    # gateway's sender says False: it delivers after the answer, so the time an answer takes
    # tells nothing about whether the number is registered.
    delivers_before_answer: bool

    async def send(self, phone: str, code: str, *, expire_time: dt.datetime) -> None:
        """Deliver `code` to `phone` (valid until `expire_time`)."""


class LocalCodeSender:
    """Development delivery: one log line, and a line appended to `path` (under `.his/`)."""

    delivers_before_answer = True

    def __init__(self, path: Path) -> None:
        self.path = path

    async def send(self, phone: str, code: str, *, expire_time: dt.datetime) -> None:
        expires = expire_time.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        # The one log line that may carry a code: this sender stands in for the SMS a patient
        # would receive (never use it in production). The number is shortened to its last four
        # digits, as logs carry no phone numbers; the file below is the "phone" itself.
        log.warning(
            "patient sign-in code for the phone ending %s: %s (local sender, development only; "
            "also in %s)",
            phone[-4:],
            code,
            self.path,
        )
        await asyncio.to_thread(self._append, f"{phone} {code} expires {expires}")

    def _append(self, line: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as codes:
            codes.write(line + "\n")
