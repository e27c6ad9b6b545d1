"""The declared calls (his.mesh.calls) against the code: every rpc the code calls on another
service is declared, every declared rpc is really called, and a service's own package calls
only what is declared for it. The mesh and network policies are linted against the same table."""

from __future__ import annotations

import ast
from pathlib import Path

from his.base.catalog import implemented
from his.mesh.calls import CALLS
from his.mesh.contracts import all_paths
from tests.mesh.conftest import REPOSITORY

SERVICES = REPOSITORY / "services/his"
SDK = REPOSITORY / "clients/python/his_client"
METHODS = {rpc.method: rpc for rpc in all_paths().values()}
# The services having an rpc of each name (DeliverEvents is on orders, lab and pharmacy).
SERVICES_OF: dict[str, set[str]] = {}
for _rpc in all_paths().values():
    SERVICES_OF.setdefault(_rpc.method, set()).add(_rpc.service)


# Code that runs outside the mesh as a person, not as a workload: demo loaders (`his up --demo`),
# `his token`, `his billing reconcile` (billing/report.py, a clerk through the gateway); the
# SDK's PatientClient, whose calls are its importers' (see below); and the SDK's patient sign-in,
# which a patient's tool or test makes through the gateway, never a workload.
OUTSIDE = ("demo.py", "login.py", "report.py")


def _code() -> list[Path]:
    """Code workloads run that can call a service (no stubs, mesh tools or person-run tools)."""
    files = sorted(SERVICES.rglob("*.py")) + sorted(SDK.rglob("*.py"))
    return [
        path
        for path in files
        if "/v1/" not in path.as_posix()
        and "/mesh/" not in path.as_posix()
        and "/migrations/" not in path.as_posix()
        and path.name not in OUTSIDE
        and path != SDK / "patient.py"
        and path != SDK / "patient_sign_in.py"
    ]


def _rpc_calls(path: Path) -> set[str]:
    """Names of rpcs called as `<something>.<Rpc>(...)` in one file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {
        node.func.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in METHODS
    }


# What the SDK's patient helpers call for the service that imports them.
SDK_PATIENT = {
    "require_active": {"GetPatient"},
    "PatientClient": {"GetPatient"},
    "privacy_consent": {"ListConsents"},
}


def _sdk_patient_calls(path: Path) -> set[str]:
    """The rpcs a file makes through the SDK's patient helpers it imports."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {
        rpc
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == "his_client.patient"
        for alias in node.names
        for rpc in SDK_PATIENT.get(alias.name, set())
    }


def _declared(caller: str | None = None) -> set[str]:
    return {
        method
        for name, callees in CALLS.items()
        if caller is None or name == caller
        for methods in callees.values()
        for method in methods
    }


def test_every_rpc_the_code_calls_is_declared_and_every_declared_rpc_is_called() -> None:
    called = set().union(*(_rpc_calls(path) | _sdk_patient_calls(path) for path in _code()))
    assert called == _declared(), (
        f"called but not declared: {sorted(called - _declared())}; "
        f"declared but never called: {sorted(_declared() - called)}"
    )


def test_a_service_package_calls_only_what_is_declared_for_it() -> None:
    # The helpers really make the calls the table says they make.
    assert set().union(*SDK_PATIENT.values()) <= _rpc_calls(SDK / "patient.py")
    for caller in CALLS:
        package = SERVICES / caller
        if not package.is_dir():
            continue
        files = [p for p in _code() if p.is_relative_to(package)]
        called = set().union(*(_rpc_calls(p) | _sdk_patient_calls(p) for p in files))
        assert called <= _declared(caller), (
            f"{caller} calls undeclared {called - _declared(caller)}"
        )


def test_the_research_export_calls_what_is_declared_for_it() -> None:
    called = _rpc_calls(SERVICES / "research_export.py")
    assert called - {"IssueToken"} <= _declared("research-export")
    assert called, "the research export makes no call: the scan is broken"


def test_declared_rpcs_are_rpcs_of_the_named_service() -> None:
    # Several services share an rpc name (DeliverEvents): the named service must have it.
    for callees in CALLS.values():
        for service, methods in callees.items():
            for method in methods:
                assert service in SERVICES_OF[method], (service, method)


def test_every_service_declares_the_calls_its_runtime_makes() -> None:
    # runtime/server.py gives every service but audit an AuditTrail (WriteAuditEvents), and every
    # service verifies tokens with iam's key set (runtime/security.py: GetJwks).
    server = (SERVICES / "runtime/server.py").read_text(encoding="utf-8")
    exemption = 'if spec.name == "audit":'
    assert exemption in server, "the audit trail's exemption moved: update this test"
    for entry in implemented():
        assert "GetJwks" in _declared(entry.name), entry.name
        if entry.name != "audit":
            assert "WriteAuditEvents" in _declared(entry.name), entry.name
