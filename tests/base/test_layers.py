"""Layers point one way (docs/adr/0003-layers.md): services → runtime → his_client → his.base →
generated stubs. The SDK and the base never import the server runtime or a service; services reach
each other only through the SDK."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]
SERVICES = REPOSITORY / "services/his"
SDK = REPOSITORY / "clients/python/his_client"
BASE = SERVICES / "base"


def _generated(module: str) -> bool:
    """Generated stubs: `his.<domain>.v1...` (and the `his.<domain>` package holding them)."""
    parts = module.split(".")
    return parts[0] == "his" and len(parts) >= 3 and parts[2] == "v1"


def _allowed_below_sdk(module: str, *, sdk: bool) -> bool:
    """May code of the SDK (sdk=True) or of his.base (sdk=False) import `module`?"""
    top = module.split(".", maxsplit=1)[0]
    if top == "his_client":
        return sdk
    if top != "his":
        return True  # the standard library and third-party packages
    return module == "his" or module.startswith("his.base") or _generated(module)


def _imported(path: Path) -> set[str]:
    """Every module a file imports, anywhere in it (inside functions too)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            assert node.level == 0, f"{path}: relative import"
            found.add(node.module)
            # `from his.base import errors` imports the module his.base.errors
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _violations(root: Path, *, sdk: bool) -> list[str]:
    return sorted(
        f"{path.relative_to(REPOSITORY)} imports {module}"
        for path in root.rglob("*.py")
        for module in _imported(path)
        if not _allowed_below_sdk(module, sdk=sdk)
    )


def test_the_rule_refuses_the_runtime_and_services_and_allows_stubs() -> None:
    assert not _allowed_below_sdk("his.runtime.config", sdk=True)
    assert not _allowed_below_sdk("his.scheduling.store", sdk=True)
    assert not _allowed_below_sdk("his.mesh.calls", sdk=True)
    assert not _allowed_below_sdk("his_client.config", sdk=False)
    assert _allowed_below_sdk("his.patient.v1.patient_service_pb2", sdk=True)
    assert _allowed_below_sdk("his.base.errors", sdk=True)
    assert _allowed_below_sdk("grpc", sdk=False)


def test_the_sdk_imports_neither_the_runtime_nor_a_service() -> None:
    assert _imported(SDK / "errors.py") >= {"his.base.errors"}, "the scan reads nothing"
    assert _violations(SDK, sdk=True) == []


def test_the_base_imports_nothing_above_it() -> None:
    assert _imported(BASE / "identity.py") >= {"his.base.errors"}, "the scan reads nothing"
    assert _violations(BASE, sdk=False) == []


def test_importing_the_sdk_loads_no_server_module() -> None:
    # What Python really loads, transitively: a third-party module importing back into `his`, or a
    # `his.<domain>/__init__.py` gaining imports, would show here and not in the scan above.
    script = (
        "import sys, pkgutil, importlib, his.base, his_client\n"
        "for m in pkgutil.walk_packages(his_client.__path__, 'his_client.'):\n"
        "    importlib.import_module(m.name)\n"
        "for m in pkgutil.walk_packages(his.base.__path__, 'his.base.'):\n"
        "    importlib.import_module(m.name)\n"
        "from his_client.idempotency import retryable_methods\n"
        "retryable_methods()\n"  # imports every service's generated stubs
        "print('\\n'.join(sorted(sys.modules)))\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout.split()
    assert "his.patient.v1.patient_service_pb2" in loaded, "the check loads nothing"
    server = [
        module
        for module in loaded
        if module.split(".")[0] == "his"
        and module != "his"
        and not module.startswith("his.base")
        and not _generated(module)
        # a domain's package itself, as the parent of its generated v1 package
        and not (module.count(".") == 1 and f"{module}.v1" in loaded)
    ]
    assert server == []


def _stub_calls(path: Path) -> list[str]:
    """Where a file builds a gRPC stub or opens a channel itself."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if name.endswith("Stub") or name in ("insecure_channel", "secure_channel"):
            found.append(f"{path.relative_to(REPOSITORY)} {name}")
    return found


# `his up` and the tests' health waits poll grpc.health.v1 on a bare channel: a supervisor probing
# a process, not one service calling another.
HEALTH_PROBE = ["services/his/runtime/health.py insecure_channel"]


def test_services_call_each_other_only_through_the_sdk() -> None:
    code = [p for p in SERVICES.rglob("*.py") if "/v1/" not in p.as_posix()]
    found = [call for path in code for call in _stub_calls(path)]
    assert found == HEALTH_PROBE
    assert _stub_calls(SDK / "clients.py"), "the scan finds no stub even in the SDK"
