"""Patient sign-in for Python callers (tests, tools): phone number → code → patient token.

`await patient_sign_in(his, phone, read_code)` runs both steps through `HisClients` (its
channel, deadlines and breaker; both rpcs are public, so `his` needs no token) and returns the
patient's token; `static_token(signed_in.access_token)` makes a HisClients that speaks as the
patient. Locally, `local_code(path)` reads the code the local sender of `his up` wrote to
`.his/sign-in-codes.log`; with a real SMS gateway, `read_code` asks a person.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from his.iam.v1 import iam_service_pb2 as iam_pb
from his_client.clients import HisClients

# Reads the code sent for a sign-in: (phone, sign_in) -> code.
ReadCode = Callable[[str, str], Awaitable[str]]


@dataclass(frozen=True)
class PatientSignedIn:
    """A signed-in patient: their token (kept out of repr), name and the token's expiry."""

    access_token: str = field(repr=False)
    patient: str
    expire_time: dt.datetime


async def start_patient_sign_in(his: HisClients, phone: str) -> iam_pb.StartPatientSignInResponse:
    """Ask for a code for `phone` (StartPatientSignIn)."""
    return await his.iam.StartPatientSignIn(iam_pb.StartPatientSignInRequest(phone=phone))


async def complete_patient_sign_in(his: HisClients, sign_in: str, code: str) -> PatientSignedIn:
    """Exchange the code for the patient's token (CompletePatientSignIn)."""
    reply = await his.iam.CompletePatientSignIn(
        iam_pb.CompletePatientSignInRequest(sign_in=sign_in, code=code)
    )
    return PatientSignedIn(
        access_token=reply.access_token,
        patient=reply.patient,
        expire_time=reply.expire_time.ToDatetime(tzinfo=dt.UTC),
    )


async def patient_sign_in(his: HisClients, phone: str, read_code: ReadCode) -> PatientSignedIn:
    """Both steps: start, read the code sent, complete."""
    started = await start_patient_sign_in(his, phone)
    code = await read_code(phone, started.sign_in)
    return await complete_patient_sign_in(his, started.sign_in, code)


def local_code(path: Path) -> ReadCode:
    """The code the local sender (`his up`, tests) wrote for the phone number to `path`
    (`<HIS_DATA_DIR>/sign-in-codes.log`, one `<phone> <code> expires <time>` line per code). The
    sender writes it before StartPatientSignIn answers, so the last line for the number is the
    code of the sign-in just started."""

    async def read(phone: str, sign_in: str) -> str:
        code = await asyncio.to_thread(last_code, path, phone)
        if code is None:
            raise LookupError(f"no sign-in code for this phone number in {path}")
        return code

    return read


def last_code(path: Path, phone: str) -> str | None:
    """The last code the local sender wrote for `phone` to `path`, None if none."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return None
    for line in reversed(lines):
        parts = line.split()
        if len(parts) >= 2 and parts[0] == phone:
            return parts[1]
    return None
