"""The `his` command: run the hospital locally, run one service, migrate, get a token."""

from __future__ import annotations

import argparse
import gc
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from his.base.canary_plan import PLAN, PLAN_TEXT
from his.base.catalog import CATALOG, implemented, lookup

if TYPE_CHECKING:
    from his.runtime.server import ServiceSpec

# Each command imports what it needs when it runs: `his serve` is timed from process start to
# SERVING (bench/startup.py), and the other commands need neither the server nor each other.


def service_spec(name: str) -> ServiceSpec:
    """The ServiceSpec of an implemented service (`his.<name>.spec.SPEC`)."""
    entry = lookup(name)
    if not entry.implemented:
        raise SystemExit(f"his: service {name!r} has a contract but no implementation yet")
    spec: ServiceSpec = importlib.import_module(f"{entry.module}.spec").SPEC
    return spec


def _serve(args: argparse.Namespace) -> int:
    # No cyclic garbage collection while start-up imports build ~0.5 s worth of objects that live
    # as long as the process (measured: ~5 % of the import time); `run` freezes them and enables
    # it again once the server is started.
    gc.disable()
    from his.runtime import shared_policy  # noqa: PLC0415

    # The policies compile on another core while the server and the service are imported.
    shared_policy.begin()
    from his.runtime.config import load  # noqa: PLC0415
    from his.runtime.server import run  # noqa: PLC0415

    run(service_spec(args.service), load(args.service))
    return 0


def _up(args: argparse.Namespace) -> int:
    from his.local import up  # noqa: PLC0415

    return up(demo=args.demo)


def _migrate(args: argparse.Namespace) -> int:
    from his.local import migrate_all  # noqa: PLC0415

    names = args.services or [entry.name for entry in implemented()]
    for name in names:
        service_spec(name)  # rejects unknown and unimplemented names before touching the database
    migrate_all(names)
    return 0


def _token(args: argparse.Namespace) -> int:
    import asyncio  # noqa: PLC0415
    import os  # noqa: PLC0415

    import grpc  # noqa: PLC0415

    from his.login import issue_token, local_login_possible  # noqa: PLC0415
    from his_client import describe  # noqa: PLC0415
    from his_client.config import ClientConfig  # noqa: PLC0415

    start = "Start the hospital with `make run` (or `his up --demo`) in another terminal."
    if not local_login_possible():
        print(
            f"his token: no hospital has run here yet (no local secrets). {start}", file=sys.stderr
        )
        return 1
    try:
        print(asyncio.run(issue_token(args.user)))
    except LookupError as error:
        print(f"his token: {error}", file=sys.stderr)
        return 1
    except grpc.aio.AioRpcError as error:
        if error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            where = ClientConfig.from_env(os.environ).address("iam")
            print(f"his token: iam is not reachable at {where}. {start}", file=sys.stderr)
        else:
            print(f"his token: {describe(error)}", file=sys.stderr)
        return 1
    return 0


def _keys(args: argparse.Namespace) -> int:
    import asyncio  # noqa: PLC0415

    from his.local import database_url  # noqa: PLC0415
    from his.runtime.config import load  # noqa: PLC0415
    from his.runtime.fieldcrypt import Keyring, rewrap_all, rotate_data_key_all  # noqa: PLC0415

    config = load(args.service)
    keyring = Keyring.from_config(config.crypto)
    with database_url(config.database) as url:
        if args.action == "rewrap":
            count = asyncio.run(rewrap_all(url, args.service, keyring))
            current = keyring.current_master_id
            print(f"{args.service}: {count} data keys re-wrapped under master key {current}")
        else:
            key_id = asyncio.run(rotate_data_key_all(url, args.service, keyring))
            print(f"{args.service}: new values are encrypted under data key {key_id}")
    return 0


def _export_research(args: argparse.Namespace) -> int:
    import asyncio  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    import grpc  # noqa: PLC0415

    from his.research_export import ExportError, run  # noqa: PLC0415

    try:
        summary = asyncio.run(
            run(Path(args.directory), user=args.user, force=args.force, time_zone=args.time_zone)
        )
    except ExportError as error:
        print(f"his export research: {error}", file=sys.stderr)
        return 1
    except grpc.aio.AioRpcError as error:
        print(f"his export research: {error.code().name}: {error.details()}", file=sys.stderr)
        return 1
    print(
        f"{summary.patients} patients and {summary.appointments} appointments written to "
        f"{summary.directory} (pseudonym key {summary.key_id}; "
        f"{summary.appointments_left_out} appointments of patients without research consent "
        "left out)"
    )
    return 0


def _billing_reconcile(args: argparse.Namespace) -> int:
    import asyncio  # noqa: PLC0415

    import grpc  # noqa: PLC0415

    from his.billing.report import instant, reconcile  # noqa: PLC0415

    try:
        since, until = instant(args.since), instant(args.until)
    except ValueError as error:
        print(f"his billing reconcile: {error}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(reconcile(since, until, user=args.user, out=sys.stdout))
    except grpc.aio.AioRpcError as error:
        print(f"his billing reconcile: {error.code().name}: {error.details()}", file=sys.stderr)
        return 2


# What the mesh tools import that the service image leaves out (the `mesh` extra).
MESH_EXTRA_MODULES = ("yaml", "ruamel", "jsonschema", "referencing", "re2", "cel_expr_python")


def _mesh_tool(module: str, name: str) -> Callable[[argparse.Namespace], int]:
    """A command of his.mesh.<module>, imported when run: the image has no mesh extra."""

    def run(args: argparse.Namespace) -> int:
        try:
            command = importlib.import_module(f"his.mesh.{module}").command
        except ModuleNotFoundError as missing:
            if (missing.name or "").partition(".")[0] not in MESH_EXTRA_MODULES:
                raise
            print(
                f"{name}: {missing.name} is not installed; install the mesh extra: "
                "pip install 'his-mesh[mesh]'",
                file=sys.stderr,
            )
            return 2
        return int(command(args))

    return run


def _services(_: argparse.Namespace) -> int:
    import os  # noqa: PLC0415

    from his.gateway.config import GatewayConfig  # noqa: PLC0415

    print(f"{'service':<12} {'grpc':>6} {'metrics':>8} {'http':>6}  status")
    for entry in CATALOG:
        status = "implemented" if entry.implemented else "contract only"
        http = "-" if entry.http_port is None else str(entry.http_port)
        print(f"{entry.name:<12} {entry.port:>6} {entry.metrics_port:>8} {http:>6}  {status}")
    gateway = GatewayConfig.from_env(os.environ)
    if gateway.enabled:
        print(
            f"\ngateway      {gateway.url} (Envoy: gRPC-web and the web app; admin "
            f"127.0.0.1:{gateway.admin_port}, web app server 127.0.0.1:{gateway.app_port})"
        )
    return 0


def _gateway_config(args: argparse.Namespace) -> int:
    import json  # noqa: PLC0415
    import os  # noqa: PLC0415
    import tempfile  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    from his.gateway import envoy  # noqa: PLC0415
    from his.gateway.config import GatewayConfig  # noqa: PLC0415
    from his.gateway.envoy_config import LocalAddresses  # noqa: PLC0415
    from his.gateway.policy import PolicyError  # noqa: PLC0415
    from his.gateway.runner import LocalGateway, repository_root, services_trust  # noqa: PLC0415

    try:
        # The same generation `his up` runs, with the same trust, so what is printed is what runs.
        iam_http = lookup("iam").http_port or 0
        generated = LocalGateway(
            GatewayConfig.from_env(os.environ),
            LocalAddresses({entry.name: entry.port for entry in implemented()}, iam_http),
            root=repository_root(Path(args.root) if args.root else None),
            work_dir=Path(tempfile.gettempdir()),
            trust=services_trust(os.environ),
        ).configuration()
    except PolicyError as error:
        print(f"his gateway config: {error}", file=sys.stderr)
        return 1
    if not args.check:
        print(json.dumps(generated, indent=2))
        return 0
    with tempfile.TemporaryDirectory() as directory:
        try:
            envoy.validate(envoy.write_bootstrap(generated, Path(directory) / "envoy.json"))
        except (ValueError, envoy.EnvoyMissing) as error:
            print(f"his gateway config: {error}", file=sys.stderr)
            return 1
    print("his gateway config: envoy accepts the gateway generated from mesh/istio/gateway")
    return 0


def _add_mesh_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`his mesh check|explain` and `his canary`: the SRE tools for mesh/ and deploy/."""
    mesh = commands.add_parser("mesh", help="check and explain the Istio policy and manifests")
    meshes = mesh.add_subparsers(dest="mesh", required=True)
    check = meshes.add_parser(
        "check", help="render every overlay, validate schemas strictly and lint the policy"
    )
    check.add_argument("--root", help="repository root (default: found from the working dir)")
    check.add_argument(
        "--overlay",
        action="append",
        help="check only this overlay of deploy/kustomize/overlays (repeatable)",
    )
    check.set_defaults(run=_mesh_tool("check", "his mesh check"))
    explain = meshes.add_parser("explain", help="show how the mesh routes one call")
    explain.add_argument("service", help="service name, e.g. patient")
    explain.add_argument("method", help="rpc name, e.g. GetPatient")
    explain.add_argument(
        "-H",
        "--header",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a request header of the call, e.g. -H x-canary=always (repeatable)",
    )
    explain.add_argument("--gateway", action="store_true", help="a call through the mobile gateway")
    explain.add_argument("--drill", help="with a drill applied, e.g. patient/unavailable")
    explain.add_argument("--root", help="repository root (default: found from the working dir)")
    explain.set_defaults(run=_mesh_tool("explain", "his mesh explain"))
    canary = commands.add_parser(
        "canary", help="move traffic between a service's stable and canary versions"
    )
    named: dict[str, argparse.ArgumentParser] = {}  # the steps whose help names the service
    canary.add_argument(
        "service", action=_CanaryService, steps=named, help="service name, e.g. scheduling"
    )
    canary.add_argument("--root", help="repository root (default: found from the working dir)")
    steps = canary.add_subparsers(dest="action", required=True)
    allowed = ", ".join(map(str, PLAN))
    weight = steps.add_parser("set", help=f"send this percentage to the canary ({allowed})")
    weight.add_argument(
        "weight",
        type=int,
        choices=PLAN,
        metavar="WEIGHT",
        help=f"the percentage of calls sent to the canary: one of {allowed} (plan {PLAN_TEXT})",
    )
    promote = steps.add_parser("promote", help=f"the next step of the plan: {PLAN_TEXT}")
    rollback = steps.add_parser("rollback", help="all traffic back to stable")
    state = steps.add_parser("status", help="the canary weight of every route")
    # Filled in with the service's name once it is parsed (_CanaryService).
    weight.description = (
        "Send WEIGHT% of {service}'s calls to its canary subset and the rest to stable, on "
        "every route splitting {service} between the two (its VirtualService and the mobile "
        f"gateway's routes). Allowed weights: {allowed}. The files are written only after "
        "`his mesh check` passes with the edit."
    )
    promote.description = f"Move {{service}}'s canary to the next step of the plan {PLAN_TEXT}."
    rollback.description = "Send all of {service}'s calls back to its stable subset (weight 0)."
    state.description = "Show the canary weight of every route splitting {service}."
    named.update(set=weight, promote=promote, rollback=rollback, status=state)
    canary.set_defaults(run=_mesh_tool("canary", "his canary"))


class _CanaryService(argparse.Action):
    """The service of `his canary <service> ...`, written into its steps' help.

    argparse builds the steps' parsers before the service is known; this action runs when the
    service is parsed, before the step's parser, so `his canary patient set --help` can name
    patient (a template's `{service}` is filled in) and its prog reads `his canary patient set`.
    """

    def __init__(
        self, *args: Any, steps: dict[str, argparse.ArgumentParser], **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.steps = steps

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        name = str(values)
        setattr(namespace, self.dest, name)
        for step, sub in self.steps.items():
            sub.prog = f"{parser.prog} {name} {step}"
            if sub.description:
                sub.description = sub.description.replace("{service}", name)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `his`."""
    parser = argparse.ArgumentParser(prog="his", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    up = commands.add_parser(
        "up", help="start embedded PostgreSQL and every implemented service until Ctrl-C"
    )
    up.add_argument("--demo", action="store_true", help="load the demo data set once started")
    up.set_defaults(run=_up)

    serve = commands.add_parser("serve", help="run one service in the foreground (containers)")
    serve.add_argument("service", choices=[entry.name for entry in CATALOG])
    serve.set_defaults(run=_serve)

    migrate = commands.add_parser("migrate", help="migrate service schemas to the latest revision")
    migrate.add_argument("services", nargs="*", help="default: every implemented service")
    migrate.set_defaults(run=_migrate)

    token = commands.add_parser(
        "token", help="print a bearer token for a staff member from the local iam (his up)"
    )
    token.add_argument("--user", required=True, help="username, for example reg.amina")
    token.set_defaults(run=_token)

    keys = commands.add_parser(
        "keys", help="encryption keys: re-wrap data keys under the current master key, or rotate"
    )
    keys.add_argument(
        "action",
        choices=("rewrap", "rotate"),
        help="rewrap: after adding a new first master key to HIS_CRYPTO_MASTER_KEYS; "
        "rotate: start a new data key for new values (old values stay readable)",
    )
    keys.add_argument("--service", default="patient", help="whose schema (default: patient)")
    keys.set_defaults(run=_keys)

    export = commands.add_parser("export", help="export data out of the hospital")
    exports = export.add_subparsers(dest="export", required=True)
    research = exports.add_parser(
        "research",
        help="de-identified patients (research consent only) and appointments as CSV files",
    )
    research.add_argument("directory", help="where patients.csv, appointments.csv go (created)")
    research.add_argument(
        "--user", default="admin", help="who exports (an administrator; HIS_TOKEN overrides)"
    )
    research.add_argument("--force", action="store_true", help="overwrite an earlier export")
    research.add_argument(
        "--time-zone", default="UTC", help="IANA zone of appointment dates (default: UTC)"
    )
    research.set_defaults(run=_export_research)

    billing = commands.add_parser("billing", help="billing office tools")
    billings = billing.add_subparsers(dest="billing", required=True)
    reconcile = billings.add_parser(
        "reconcile",
        help="compare charges with what was rendered; exit 1 if any is missing or duplicated",
    )
    reconcile.add_argument("--since", required=True, help="start (ISO date or time, UTC)")
    reconcile.add_argument("--until", required=True, help="end, exclusive; at most 31 days later")
    reconcile.add_argument(
        "--user", default="bill.garcia", help="who asks (a billing clerk; HIS_TOKEN overrides)"
    )
    reconcile.set_defaults(run=_billing_reconcile)

    _add_mesh_parsers(commands)

    gateway = commands.add_parser("gateway", help="the local mobile gateway (Envoy) of `his up`")
    gateways = gateway.add_subparsers(dest="gateway", required=True)
    config = gateways.add_parser(
        "config", help="print Envoy's configuration generated from mesh/istio/gateway"
    )
    config.add_argument("--check", action="store_true", help="validate it with envoy instead")
    config.add_argument("--root", help="repository root (default: found from the working dir)")
    config.set_defaults(run=_gateway_config)

    services = commands.add_parser("services", help="list services and their local ports")
    services.set_defaults(run=_services)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the `his` console script."""
    args = build_parser().parse_args(argv)
    sys.exit(args.run(args))


if __name__ == "__main__":
    main()
