"""The README's walk-through and break-the-glass snippets, exactly as written there, run twice in
a row against `his up --demo` (the one the e2e tests share, tests/e2e/conftest.py): a newcomer can
paste them, and paste them again."""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import sys
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from his.scheduling.demo import TIME_ZONE
from tests.e2e.his_up import DemoHospital

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parents[2] / "README.md"
TRACE = re.compile(r"trace [0-9a-f]{32}$")


def _section(heading: str) -> str:
    """The text of a README section (`## heading`) up to the next section."""
    text = README.read_text()
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def _sh_blocks(section: str) -> list[str]:
    return re.findall(r"```sh\n(.*?)```", section, flags=re.DOTALL)


def _walkthrough() -> str:
    """Terminal 2 of the walk-through: every ```sh block but terminal 1's `make run`."""
    blocks = [b for b in _sh_blocks(_section("Walk-through")) if b.strip() != "make run"]
    # The token, the registrar's snippet, the auditor's, the cardiologist's, the order loop's,
    # the billing clerk's.
    assert len(blocks) == 6, blocks
    assert blocks[0].startswith("export TOKEN=")
    assert all(".venv/bin/python - <<'PY'" in block for block in blocks[1:])
    return "\n".join(blocks)


def _break_the_glass() -> str:
    blocks = [b for b in _sh_blocks(_section("Security")) if "<<'PY'" in b]
    assert len(blocks) == 1, blocks
    return blocks[0]


def _paste(script: str, workdir: Path, data_dir: Path) -> list[str]:
    """Run README text in a shell as a newcomer does, from a checkout with `.venv` (this one's)."""
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=workdir,
        env=dict(os.environ, HIS_DATA_DIR=str(data_dir)),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    assert "Traceback" not in done.stderr, done.stderr
    lines: list[str] = done.stdout.splitlines()
    return lines


def _one(lines: list[str], prefix: str) -> str:
    found = [line for line in lines if line.startswith(prefix)]
    assert len(found) == 1, (prefix, lines)
    return found[0]


def _first_clinic_day() -> str:
    """Tomorrow in the clinics' zone, or the next weekday (cardiology works Monday to Friday)."""
    day = dt.datetime.now(ZoneInfo(TIME_ZONE)).date() + dt.timedelta(days=1)
    while day.weekday() >= 5:
        day += dt.timedelta(days=1)
    return day.isoformat()


def _check_walkthrough(lines: list[str]) -> tuple[str, str]:
    """The walk-through's promises; the patient and the appointment it printed."""
    patient = _one(lines, "registered patients/").split()[1]
    assert _one(lines, "found ").startswith("found [('Sun', ")
    refused = _one(lines, "refused: ")
    assert refused.startswith("refused: INVALID_ARGUMENT (patient.his): patient.birth_date: ")
    booked = _one(lines, "booked appointments/").split()
    assert booked[2] == "APPOINTMENT_STATUS_BOOKED"
    assert booked[3].startswith(_first_clinic_day() + "T"), booked  # tomorrow's, really
    assert _one(lines, "replayed the booking: ") == "replayed the booking: same appointment: True"
    assert _one(lines, "checked in: ") == "checked in: APPOINTMENT_STATUS_ARRIVED"
    denied = _one(lines, "audit.khan reads the patient: ")
    assert "PERMISSION_DENIED NO_CLINICAL_ACCESS (patient.his)" in denied
    events = [line for line in lines if re.match(r"\d+ AUDIT_EVENT_ACTION_", line)]
    assert len(events) == 6, lines
    assert all(TRACE.search(e) and " PURPOSE_OF_USE_" in e for e in events), events
    assert any("CheckInAppointment AUDIT_EVENT_OUTCOME_SUCCESS" in e for e in events), events
    refusal = events[-1]  # the auditor's refused read: a failure, naming no patient
    assert "GetPatient AUDIT_EVENT_OUTCOME_MINOR_FAILURE" in refusal
    assert "['AUDITOR']" in refusal and "(no patient)" in refusal
    assert _one(lines, "chain intact: ").startswith("chain intact: True events 1 to ")
    # The check-in opened the visit's encounter; the cardiologist documents it.
    opened = _one(lines, "encounter encounters/").split()
    assert opened[2:] == ["ENCOUNTER_STATUS_IN_PROGRESS", "from", booked[1]], opened
    assert _one(lines, "note ") == "note NOTE_STATUS_FINAL"
    assert "FAILED_PRECONDITION NOTE_SIGNED (emr.his)" in _one(lines, "changing the signed note: ")
    assert _one(lines, "versions ") == "versions ['NOTE_STATUS_FINAL', 'NOTE_STATUS_AMENDED']"
    assert _one(lines, "diagnosis ") == "diagnosis I20.9 CONDITION_VERIFICATION_STATUS_PROVISIONAL"
    assert _one(lines, "finished: ") == "finished: ENCOUNTER_STATUS_FINISHED"
    # The order loop: the lab's flag, completion from the lab, a dispense of exactly 15 from the
    # lot that expires first, the pharmacist refused, completion from the pharmacy.
    assert _one(lines, "glucose ") == "glucose 180.0 mg/dL OBSERVATION_INTERPRETATION_HIGH"
    assert _one(lines, "lab order ") == "lab order SERVICE_REQUEST_STATUS_COMPLETED"
    dispensed = _one(lines, "dispensed ").split()
    assert dispensed[1:4] == ["15", "from", "lot"], dispensed
    assert dispensed[4] == f"J01CA04-{dt.datetime.now(dt.UTC).year + 1}", dispensed
    assert int(dispensed[6]) - int(dispensed[8]) == 15, dispensed
    locked = _one(lines, "the pharmacist changes the quantity: ")
    assert "PERMISSION_DENIED PRESCRIPTION_FIELDS_LOCKED (orders.his)" in locked
    assert _one(lines, "prescription ") == (
        "prescription MEDICATION_REQUEST_STATUS_COMPLETED dispensed 15.0 remaining 0.0"
    )
    _check_bill(lines)
    return patient, booked[1]


def _check_bill(lines: list[str]) -> None:
    """The billing clerk's snippet: the loop's two charges at the price list's prices, their
    invoice paid, and the glucose test refunded from the payment once though asked twice."""
    charges = [line for line in lines if line.startswith("charge ")]
    # Sorted by code system: LOINC, then the medication. The glucose price is the one billing's
    # migration seeds; the tablets' the demo formulary's.
    assert len(charges) == 2, lines
    assert charges[0] == "charge serviceRequests 'Glucose' 1.0 x CNY 12.00 = CNY 12.00"
    drug = charges[1].split()
    assert drug[:2] == ["charge", "medicationDispenses"], drug
    assert charges[1].startswith("charge medicationDispenses 'Amoxicillin "), drug
    assert drug[-7:-5] == ["15.0", "x"] and drug[-2] == "CNY", drug
    assert round(float(drug[-4]) * 15, 2) == float(drug[-1]), drug
    total = f"{12.0 + float(drug[-1]):.2f}"
    assert _one(lines, "invoice ") == f"invoice INVOICE_STATUS_ISSUED 2 charges total CNY {total}"
    assert _one(lines, "paid ") == f"paid CNY {total} -> INVOICE_STATUS_BALANCED"
    assert _one(lines, "refunded ") == (
        f"refunded CNY 12.00 of CNY {total} -> PAYMENT_STATUS_COMPLETED "
        "INVOICE_STATUS_ISSUED due CNY 12.00"
    )


@pytest.mark.timeout(420)
def test_readme_snippets_run_cleanly_twice_against_make_run(
    demo_hospital: DemoHospital, tmp_path: Path
) -> None:
    walkthrough, glass = _walkthrough(), _break_the_glass()
    workdir = tmp_path / "checkout"
    workdir.mkdir()
    (workdir / ".venv").symlink_to(sys.prefix)
    data_dir = demo_hospital.data_dir
    first = _check_walkthrough(_paste(walkthrough, workdir, data_dir))
    second = _check_walkthrough(_paste(walkthrough, workdir, data_dir))
    assert second[0] == first[0]  # the patient's request_id replayed: the same patient
    assert second[1] != first[1]  # a new booking, into the next free slot
    for run in range(2):
        lines = _paste(glass, workdir, data_dir)
        if run == 0:
            refused = _one(lines, "dr.sun without a grant: ")
            assert "PERMISSION_DENIED DEPARTMENT_MISMATCH (scheduling.his)" in refused
        else:  # the first run's grant (10 minutes) still opens the record, and a second
            # one for the same patient is refused (one open grant per person and patient)
            _one(lines, "dr.sun may read it already")
        granted = "emergencyAccessGrants/" if run == 0 else "the grant of an earlier run"
        assert _one(lines, f"dr.sun with {granted}").endswith("-> APPOINTMENT_STATUS_BOOKED")
        flagged = [line for line in lines if line.startswith("audit: ")]
        assert any("GetAppointment" in line for line in flagged), lines
    # Ctrl-C leaving nothing behind is checked when the shared hospital stops (conftest.py).
