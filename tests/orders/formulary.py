"""The formulary orders asks before prescribing, for tests.

Until the pharmacy service is implemented in this repository (its catalog entry says so), a small
gRPC server on the session's pharmacy port answers GetMedication from a fixed list; every other
rpc of PharmacyService is UNIMPLEMENTED, so the prescriptions orders sends it wait in its outbox
(the relay retries, they are never lost). Once the pharmacy service is implemented, the session's
real pharmacy is used and the medications are created through its API as a pharmacist.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.field_mask_pb2 import FieldMask

from his.common.v1 import types_pb2
from his.pharmacy.v1 import pharmacy_service_pb2 as pb
from his.pharmacy.v1 import pharmacy_service_pb2_grpc as pb_grpc

ATC = "http://www.whocc.no/atc"
TABLET = "{tablet}"


@dataclass(frozen=True)
class Formulary:
    """The medications prescriptions may name: one active, one inactive."""

    active: pb.Medication
    inactive: pb.Medication
    other: pb.Medication


def medication(code: str, display: str, price_minor: int, *, active: bool = True) -> pb.Medication:
    """A formulary medication dispensed in tablets."""
    return pb.Medication(
        code=types_pb2.Coding(system=ATC, code=code, display=display),
        display_name=f"{display} tablet",
        form=types_pb2.Coding(system="http://snomed.info/sct", code="385055001", display="Tablet"),
        strength=types_pb2.Quantity(value=500, unit="mg"),
        dispense_unit=TABLET,
        unit_price=types_pb2.Money(currency_code="CNY", amount_minor=price_minor),
        active=active,
    )


def catalogue() -> Formulary:
    """The medications of the tests, not yet named."""
    return Formulary(
        active=medication("N02BE01", "Paracetamol", 35),
        inactive=medication("M01AE01", "Ibuprofen", 50, active=False),
        other=medication("C07AB07", "Bisoprolol", 120),
    )


class _StandIn(pb_grpc.PharmacyServiceServicer):
    def __init__(self, medications: list[pb.Medication]) -> None:
        self._by_name = {m.name: m for m in medications}

    async def GetMedication(self, request: pb.GetMedicationRequest, context: Any) -> pb.Medication:
        found = self._by_name.get(request.name)
        if found is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"{request.name} not found")
            raise AssertionError("abort raises")
        return found


@asynccontextmanager
async def stand_in(port: int) -> AsyncIterator[Formulary]:
    """The stand-in formulary listening on `port` until the block ends."""
    made = catalogue()
    for item in (made.active, made.inactive, made.other):
        item.name = f"medications/{uuid.uuid4()}"
    server = grpc.aio.server()
    # Only GetMedication is served; every other rpc answers UNIMPLEMENTED.
    stand_in_servicer = _StandIn([made.active, made.inactive, made.other])  # type: ignore[abstract]
    pb_grpc.add_PharmacyServiceServicer_to_server(stand_in_servicer, server)
    server.add_insecure_port(f"[::]:{port}")
    await server.start()
    try:
        yield made
    finally:
        await server.stop(grace=None)


async def in_pharmacy(stub: Any, pharmacist: Any) -> Formulary:
    """The medications created in the real pharmacy service by a pharmacist (`pharmacist.md`)."""
    made = catalogue()
    created = []
    for item in (made.active, made.inactive, made.other):
        new = await stub.CreateMedication(
            pb.CreateMedicationRequest(medication=item), metadata=pharmacist.md
        )
        if not item.active:
            new = await stub.UpdateMedication(
                pb.UpdateMedicationRequest(
                    medication=pb.Medication(name=new.name, active=False),
                    update_mask=FieldMask(paths=["active"]),
                ),
                metadata=pharmacist.md,
            )
        created.append(new)
    return Formulary(*created)
