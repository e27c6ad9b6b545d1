"""The mobile path as patients and their phones use it: the TypeScript client from Node and the
patient web app in headless Chromium, both through the real grpc-web gateway (Envoy) that
`his up` starts in front of the real services.

The `his up --demo` the e2e tests share (tests/e2e/conftest.py) serves them. The Node test
(clients/web/test/gateway.test.ts) is run as a subprocess against it; the browser test drives the
app the gateway serves. A failed browser test leaves a screenshot in `test-artifacts/web/`
(or `$HIS_TEST_ARTIFACTS/web/`).
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from his.gateway.policy import load as load_gateway_policy
from his.iam.v1 import iam_service_pb2 as ipb
from his.patient.v1 import patient_service_pb2 as ppb
from his.scheduling.v1 import scheduling_service_pb2 as spb
from his_client import HisClients, static_token
from his_client.patient_sign_in import last_code
from tests.e2e.his_up import CODE_TTL_S, DemoHospital
from tests.e2e.web import (
    CHROMIUM_ARGS,
    ROOT,
    WEB,
    artifacts_dir,
    require_built_app,
    require_chromium,
    require_node_modules,
)

pytestmark = pytest.mark.slow

# Demo patients (his.patient.demo.PEOPLE) by phone: four for the Node test (two sign in, one is
# locked out by wrong codes, one lets its code expire), one for the browser, and one whose booking
# takes a slot from under the browser's patient.
NODE_PHONES = ("+8613800000001", "+8613800000002", "+8613800000006", "+8613800000007")
BROWSER_PHONE = "+8613800000005"
BLOCKER_FAMILY_NAME = "Zhang"
CLINIC = "Cardiology Outpatient Clinic"  # one place per slot: a booking makes a slot full


@pytest.fixture
def hospital(demo_hospital: DemoHospital) -> DemoHospital:
    """The shared `his up --demo` (tests/e2e/conftest.py)."""
    return demo_hospital


@pytest.mark.timeout(300)
def test_node_client_through_the_gateway(hospital: DemoHospital) -> None:
    """clients/web/test/gateway.test.ts: patient token OK, no token UNAUTHENTICATED, another
    patient's appointment PERMISSION_DENIED, audit refused at the gateway, CORS, error details."""
    node = require_node_modules()
    done = subprocess.run(
        [node, "--import", "tsx", "--test", "test/gateway.test.ts"],
        cwd=WEB,
        env=dict(
            os.environ,
            HIS_GATEWAY_URL=hospital.gateway,
            HIS_SIGN_IN_CODES=str(hospital.codes),
            HIS_TEST_PHONES=",".join(NODE_PHONES),
            HIS_ALLOWED_ORIGIN=load_gateway_policy(ROOT).cors.origins[0],
            HIS_AUDITOR_TOKEN=hospital.token("audit.khan"),
            HIS_IAM_SIGN_IN_CODE_TTL_S=str(CODE_TTL_S),
        ),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    report = done.stdout + done.stderr
    assert done.returncode == 0, report
    # The runner's own count: every test ran and passed, none skipped or left as todo.
    counts = dict(re.findall(r"^# (tests|pass|fail|skipped|todo|cancelled) (\d+)$", report, re.M))
    assert counts["tests"] == counts["pass"], report
    assert int(counts["tests"]) >= 12, report


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    chromium = require_chromium()
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=str(chromium), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    """A phone-sized page of an English-speaking patient in the hospital's time zone."""
    context = await browser.new_context(
        viewport={"width": 390, "height": 844},
        locale="en-GB",
        timezone_id="Asia/Shanghai",
        is_mobile=True,
    )
    try:
        yield await context.new_page()
    finally:
        await context.close()


@contextlib.asynccontextmanager
async def screenshot_on_failure(page: Page, name: str) -> AsyncIterator[None]:
    """Keeps the page as it was when the test failed: test-artifacts/web/<name>.png."""
    try:
        yield
    except BaseException:
        shot = artifacts_dir() / f"{name}.png"
        with contextlib.suppress(Exception):
            await page.screenshot(path=str(shot), full_page=True, timeout=10_000)
            print(f"screenshot of the failed page: {shot}")
        raise


async def _booked(his: HisClients, patient: str) -> list[spb.Appointment]:
    """The patient's booked appointments, as scheduling has them."""
    reply = await his.scheduling.ListAppointments(
        spb.ListAppointmentsRequest(patient=patient, statuses=[spb.APPOINTMENT_STATUS_BOOKED])
    )
    return list(reply.appointments)


async def _take_first_free_slot(his: HisClients, clinic: str) -> spb.Appointment:
    """Another patient books the clinic's first free slot, the first one the app shows."""
    departments = await his.iam.ListDepartments(
        ipb.ListDepartmentsRequest(kind=ipb.DEPARTMENT_KIND_OUTPATIENT)
    )
    department = next(d.name for d in departments.departments if d.display_name == clinic)
    free = await his.scheduling.ListSlots(
        spb.ListSlotsRequest(department=department, only_free=True, page_size=1)
    )
    found = await his.patient.ListPatients(
        ppb.ListPatientsRequest(name_prefix=BLOCKER_FAMILY_NAME.lower())
    )
    blocker = found.patients[0].name
    return await his.scheduling.BookAppointment(
        spb.BookAppointmentRequest(
            patient=blocker, slot=free.slots[0].name, request_id="web-e2e-blocker"
        )
    )


@pytest.mark.timeout(300)
async def test_patient_signs_in_books_sees_and_cancels_in_the_browser(
    hospital: DemoHospital, page: Page
) -> None:
    require_built_app()
    async with screenshot_on_failure(page, "patient_books_and_cancels"):
        await _book_and_cancel(hospital, page)


async def _book_and_cancel(hospital: DemoHospital, page: Page) -> None:
    await page.goto(f"{hospital.gateway}/")

    # Sign in: the phone number, a wrong code (refused with a sentence), then the right one.
    await page.get_by_label("Mobile phone number").fill(BROWSER_PHONE)
    await page.get_by_role("button", name="Send code").click()
    code_box = page.get_by_label("Code from the text message")
    await expect(code_box).to_be_visible()
    code = last_code(hospital.codes, BROWSER_PHONE)
    assert code is not None, f"no sign-in code for {BROWSER_PHONE} in {hospital.codes}"
    await code_box.fill(code[:-1] + str((int(code[-1]) + 1) % 10))
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("alert")).to_have_text(re.compile("That code is not right"))
    await code_box.fill(code)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("heading", name="My appointments")).to_be_visible()

    # Pick the clinic; while the page shows its free times, another patient takes the first.
    await page.get_by_label("Department").select_option(label=CLINIC)
    book_buttons = page.get_by_role("button", name=re.compile(f"^Book {CLINIC} on "))
    await expect(book_buttons.first).to_be_visible()
    registrar = static_token(hospital.token("reg.amina"))
    async with HisClients(token=registrar) as his:
        patient = await page.evaluate("JSON.parse(sessionStorage.getItem('his.session')).patient")
        # The demo may have booked this patient already (another clinic): only the new counts.
        earlier = {a.name for a in await _booked(his, patient)}
        blocker = await _take_first_free_slot(his, CLINIC)
        try:
            taken = await book_buttons.first.get_attribute("aria-label")
            await book_buttons.first.click()
            await expect(page.get_by_role("alert")).to_have_text(
                "Sorry, that time has just been taken. Please pick another."
            )
            await expect(book_buttons.first).not_to_have_attribute("aria-label", taken or "")

            # The app showed the times again without the taken one: book the first of them.
            first = book_buttons.first
            label = await first.get_attribute("aria-label")
            assert label is not None
            when = label.removeprefix(f"Book {CLINIC} on ")
            await first.click()
            await expect(page.get_by_role("status")).to_have_text(f"Booked: {CLINIC}, {when}.")

            # The booking is in "My appointments", and really in scheduling.
            mine = page.get_by_role("listitem").filter(has_text=f"{CLINIC}, {when}")
            await expect(mine).to_have_count(1)
            booked = [a for a in await _booked(his, patient) if a.name not in earlier]
            assert len(booked) == 1

            # Cancel it: gone from the list, cancelled in scheduling.
            await page.get_by_role("button", name=f"Cancel the appointment on {when}").click()
            await expect(page.get_by_role("status")).to_have_text(
                f"Your appointment on {when} is cancelled."
            )
            await expect(mine).to_have_count(0)
            cancelled = await his.scheduling.GetAppointment(
                spb.GetAppointmentRequest(name=booked[0].name)
            )
            assert cancelled.status == spb.APPOINTMENT_STATUS_CANCELLED
        finally:
            await his.scheduling.CancelAppointment(
                spb.CancelAppointmentRequest(name=blocker.name, reason="web e2e cleanup")
            )

    # A token the gateway no longer accepts sends the patient back to sign-in, with the reason.
    await page.evaluate(
        """() => {
          const session = JSON.parse(sessionStorage.getItem('his.session'));
          session.token = session.token.slice(0, -8) + 'AAAAAAAA';
          sessionStorage.setItem('his.session', JSON.stringify(session));
        }"""
    )
    await page.get_by_label("Department").select_option(label=CLINIC)
    await expect(page.get_by_role("alert")).to_have_text(
        "Please sign in again: your session has ended."
    )
    await expect(page.get_by_label("Mobile phone number")).to_be_visible()
