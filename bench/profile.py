"""Where the time goes: py-spy on the service processes under load, grouped into the costs that
can be named and removed (SQLAlchemy, asyncpg, grpc, OpenTelemetry, policy, logging, the audit
hop, crypto ...).

Starts the benchmark hospital (bench/harness.py: iam, audit, patient, scheduling on a private
PostgreSQL), then:

- getpatient: GetPatient (secured, audited) driven by h2load, 4 connections x 16 streams, while
  py-spy records the patient and audit processes;
- booking: BookAppointment at concurrency 32 from this process, while py-spy records the
  scheduling, patient and audit processes.

For each process it prints the CPU it used (cores, main thread and others, from psutil) and the
ranked groups, as a share of the samples in which the process was on CPU (py-spy leaves idle
samples out; the few waiting samples that get past it, in select/poll, are dropped here). A sample
is charged to the outermost frame that claims all below it (the audit hop, logging, policy, token
checks: see CLAIMS), else to the innermost frame that belongs to a named group (RULES);
standard-library frames (asyncio, json, uuid, ...) are charged to their caller; a sample with
nothing but the event loop in it is time in the C extensions the loop calls directly (grpc core,
asyncpg's protocol). `--native` shows C frames too, but grpc's are unsymbolized and it slows the
process down by half.
Then the functions charged most (self) and our own functions with the most samples under them
(inclusive). The raw stacks stay in --out (folded format: speedscope.app and flamegraph.pl read
it). py-spy needs ptrace: run as root or with CAP_SYS_PTRACE.

Run: `make profile` or `python -m bench.profile [--seconds 15] [--scenario getpatient]`.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

from bench.grpc_h2load import GET_PATIENT, PATIENT_SERVICE, grpc_frame
from bench.harness import (
    Hospital,
    address,
    channel,
    drive,
    handled_ok,
    metrics_url,
    services,
    staff_token,
)
from bench.patient_load import patient
from bench.scheduling_load import _schedule
from his.patient.v1 import patient_service_pb2 as ppb
from his.patient.v1 import patient_service_pb2_grpc as ppb_grpc
from his.scheduling.v1 import scheduling_service_pb2 as spb
from his.scheduling.v1 import scheduling_service_pb2_grpc as spb_grpc

PY_SPY = str(Path(sys.executable).with_name("py-spy"))
STDLIB = Path(sysconfig.get_paths()["stdlib"]).resolve().as_posix() + "/"

AUDIT_HOP = "audit hop (event, check, WriteAuditEvents, wait)"
LOGGING = "logging (JSON)"
POLICY = "policy (regopy)"
AUTHN = "token verification (authn)"
GRPC = "grpc (Python + cygrpc)"
CLIENT = "his_client (outbound calls)"
EVENT_LOOP = "event loop + C it calls (uvloop, grpc core, asyncpg protocol)"
THREADS = "other threads, in C (grpc's poller thread)"
# Not counted: a thread waiting in select/poll. py-spy leaves idle samples out, but some get past
# its check (~3 % of a waiting thread's samples here); the process's CPU time (psutil) is exact.
WAITING = "waiting"
_WAITS = (("stdlib:selectors.py", "select"), ("libc", "poll"), ("libc", "epoll_wait"))

# (module path prefix, qualified function name pattern or None, group): a frame of one of these
# claims its whole sample, everything called under it included; the outermost claim wins. So
# "audit hop" is all a service does to audit (building the event, checking it, the batch call to
# the audit service, its grpc and SDK work), and logging is all a log line costs.
CLAIMS: tuple[tuple[str, str | None, str], ...] = (
    ("his/runtime/audit_trail.py", None, AUDIT_HOP),
    ("his/runtime/access.py", r"Access\.record(_each)?$", AUDIT_HOP),
    ("his/", r"Service\._audit$", AUDIT_HOP),
    ("his/runtime/logs.py", None, LOGGING),
    ("stdlib:logging/", None, LOGGING),
    ("his/runtime/policy.py", None, POLICY),
    ("regopy", None, POLICY),
    ("his/runtime/tokens.py", None, AUTHN),
)

# (module path prefix, group): otherwise a sample is charged to its innermost frame with a group
# here, the first match winning. Paths are relative: `sqlalchemy/orm/...` for installed packages,
# `his/runtime/...` for ours, `stdlib:json/...` for the library (no group: charged to its caller).
RULES: tuple[tuple[str, str], ...] = (
    ("his/audit/", "audit service code (his.audit)"),
    ("his/runtime/access.py", "access (authorize)"),
    ("his/runtime/authn.py", AUTHN),
    ("his/runtime/identity.py", AUTHN),
    ("jwt/", AUTHN),
    ("his/runtime/fieldcrypt.py", "field encryption"),
    ("cryptography/", "crypto (cryptography)"),
    ("opentelemetry/", "OpenTelemetry"),
    ("prometheus_client/", "prometheus metrics"),
    ("sqlalchemy/", "SQLAlchemy"),
    ("asyncpg/", "asyncpg"),
    ("his/runtime/database.py", "his.runtime.database"),
    ("google/protobuf/", "protobuf"),
    ("his_client/", CLIENT),
    ("pybreaker", CLIENT),
    ("tenacity/", CLIENT),
    ("grpc_health/", GRPC),
    ("grpc_reflection/", GRPC),
    ("grpc_status/", GRPC),
    ("grpc/", GRPC),
    ("his/runtime/interceptors.py", "his interceptors (metrics, errors, admission)"),
    ("his/runtime/request_guard.py", "his interceptors (metrics, errors, admission)"),
    ("his/runtime/", "his.runtime (other)"),
    ("his/", "servicer + store (his.<service>)"),
)
_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>.*?)(?::\d+)?\)$")


def module_path(filename: str) -> str:
    """`/.../site-packages/sqlalchemy/x.py` → `sqlalchemy/x.py`; ours → `his/...`; the
    standard library → `stdlib:asyncio/...`; anything else as it is."""
    for marker in ("/site-packages/", "/services/", "/clients/python/"):
        if marker in filename:
            return filename.rsplit(marker, 1)[1]
    if filename.startswith(STDLIB):
        return "stdlib:" + filename[len(STDLIB) :]
    return filename


def group_of(path: str) -> str | None:
    """The named group of a module path; None for frames charged to their caller."""
    for prefix, group in RULES:
        if path.startswith(prefix):
            return group
    return None


def claim_of(frame: Frame) -> str | None:
    """The group that claims everything under `frame`, if any."""
    for prefix, function, group in CLAIMS:
        if frame.path.startswith(prefix) and (
            function is None or re.search(function, frame.function)
        ):
            return group
    return None


def dispatched(frames: list[Frame]) -> list[Frame]:
    """The frames below the event loop: what a callback or task runs (the loop itself, and the
    `his serve` / asyncio.run frames above it, are left out); the whole stack for other threads.
    Under uvloop the loop is C: what runs below `Runner.run` is the callback or task itself."""
    for index in range(len(frames) - 1, -1, -1):
        frame = frames[index]
        if frame.path == "stdlib:asyncio/base_events.py" and frame.function.endswith("_run_once"):
            rest = frames[index + 1 :]
            if rest and rest[0].path == "stdlib:asyncio/events.py":
                rest = rest[1:]  # Handle._run
            return rest
    for index, frame in enumerate(frames):
        if frame.path == "stdlib:asyncio/runners.py" and frame.function == "Runner.run":
            return frames[index + 1 :]
    return frames


def charge(frames: list[Frame]) -> tuple[str, str]:
    """(group, function) a sample is charged to."""
    if frames:
        leaf = frames[-1]
        if any(where in leaf.path and leaf.function.endswith(f) for where, f in _WAITS):
            return WAITING, leaf.function
        if leaf.path == "stdlib:threading.py" and leaf.function == "Thread.run":
            return THREADS, "Thread.run (C below)"
    for frame in frames:
        claim = claim_of(frame)
        if claim is not None:
            return claim, f"{frame.function} ({frame.path})"
    for frame in reversed(frames):
        group = group_of(frame.path)
        if group is not None:
            return group, f"{frame.function} ({frame.path})"
    if frames and not frames[-1].path.startswith("stdlib:"):
        return "other", f"{frames[-1].function} ({frames[-1].path})"
    return EVENT_LOOP, frames[-1].function if frames else "event loop"


@dataclass(frozen=True)
class Frame:
    function: str
    path: str


def parse_folded(text: str) -> Iterator[tuple[list[Frame], int]]:
    """(stack root first, samples) for every line of py-spy's raw (folded) output."""
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = []
        for part in stack.split(";"):
            match = _FRAME.match(part)
            if match is None:
                # A thread or process name, or a native frame without a file.
                frames.append(Frame(part, part))
            else:
                frames.append(Frame(match["function"], module_path(match["file"])))
        yield frames, int(count)


@dataclass(frozen=True)
class Summary:
    """One process's samples, charged to groups, to functions (self) and to our own functions
    (inclusive)."""

    samples: int
    groups: Counter[str]
    functions: Counter[str]
    ours: Counter[str]


def summarize(text: str) -> Summary:
    groups: Counter[str] = Counter()
    functions: Counter[str] = Counter()
    ours: Counter[str] = Counter()
    total = 0
    for stack, count in parse_folded(text):
        frames = dispatched(stack)
        charged, where = charge(frames)
        if charged == WAITING:
            continue
        total += count
        groups[charged] += count
        functions[where] += count
        for name in {
            f"{f.function} ({f.path})" for f in frames if f.path.startswith(("his/", "his_client/"))
        }:
            ours[name] += count
    return Summary(total, groups, functions, ours)


def print_summary(title: str, summary: Summary, cores: tuple[float, float], top: int) -> None:
    print(
        f"\n== {title}: {sum(cores):.2f} cores busy ({cores[0]:.2f} main thread, {cores[1]:.2f} "
        f"other threads), {summary.samples} on-CPU samples"
    )
    if not summary.samples:
        return

    def share(n: int) -> str:
        return f"{100 * n / summary.samples:5.1f} %"

    print("  groups (self, stdlib charged to its caller):")
    for group, n in summary.groups.most_common():
        print(f"    {share(n)}  {group}")
    print(f"  top {top} functions (self):")
    for name, n in summary.functions.most_common(top):
        print(f"    {share(n)}  {name}")
    print(f"  top {top} of our functions (inclusive):")
    for name, n in summary.ours.most_common(top):
        print(f"    {share(n)}  {name}")


class Recording:
    """py-spy recording some processes for a fixed time, and the CPU time they used meanwhile."""

    def __init__(self, pids: dict[str, int], seconds: float, out: Path, tag: str, native: bool):
        self.out = out
        self.tag = tag
        self.files = {name: out / f"{tag}-{name}.folded" for name in pids}
        self.processes = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.cpu_before = {name: _cpu(p) for name, p in self.processes.items()}
        self.started = time.monotonic()
        self.recorders = [
            subprocess.Popen(  # noqa: S603
                [
                    PY_SPY,
                    "record",
                    "--pid",
                    str(pid),
                    "--duration",
                    str(round(seconds)),
                    "--rate",
                    "100",
                    "--format",
                    "raw",
                    "--full-filenames",
                    "--output",
                    str(self.files[name]),
                    *(["--native"] if native else []),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            for name, pid in pids.items()
        ]

    def running(self) -> bool:
        return any(r.poll() is None for r in self.recorders)

    def finish(self, top: int) -> None:
        for recorder in self.recorders:
            _, err = recorder.communicate()
            if recorder.returncode:
                raise RuntimeError(f"py-spy failed: {err.decode(errors='replace')}")
        wall = time.monotonic() - self.started
        for name, path in self.files.items():
            main, other = _cpu(self.processes[name])
            main0, other0 = self.cpu_before[name]
            cores = ((main - main0) / wall, (other - other0) / wall)
            print_summary(f"{self.tag}: {name}", summarize(path.read_text()), cores, top)


def _cpu(process: psutil.Process) -> tuple[float, float]:
    """CPU seconds so far: (main thread, all other threads)."""
    main = other = 0.0
    for thread in process.threads():
        seconds = float(thread.user_time + thread.system_time)
        if thread.id == process.pid:
            main += seconds
        else:
            other += seconds
    return main, other


async def _setup(
    hospital: Hospital, patients: int, bookings: int
) -> tuple[str, list[str], list[str]]:
    """A registrar's token, registered patients, and slots to book."""
    token = await staff_token(hospital, "bench.registrar", "REGISTRAR")
    async with (
        channel(address("patient"), token) as patient_channel,
        channel(address("scheduling"), token) as scheduling_channel,
    ):
        stub = ppb_grpc.PatientServiceStub(patient_channel)
        names: list[str] = []

        async def register(i: int) -> None:
            created = await stub.CreatePatient(
                ppb.CreatePatientRequest(patient=patient(i)), timeout=10
            )
            names.append(created.name)

        await drive("CreatePatient (setup)", patients, 16, register, quiet=True)
        slots = await _schedule(
            spb_grpc.SchedulingServiceStub(scheduling_channel), capacity=1, days=bookings // 287 + 1
        )
    return token, names, slots


def getpatient(hospital: Hospital, token: str, name: str, args: argparse.Namespace) -> None:
    """GetPatient under h2load (4 x 16 unless --h2load says otherwise) while the patient and
    audit processes are recorded."""
    connections, streams = (int(n) for n in args.h2load.split("x"))
    with tempfile.NamedTemporaryFile(suffix=".grpc") as body:
        body.write(grpc_frame(ppb.GetPatientRequest(name=name).SerializeToString()))
        body.flush()
        before = handled_ok(metrics_url("patient"), PATIENT_SERVICE, GET_PATIENT)
        command = [
            "h2load",
            f"--duration={round(args.seconds) + 3}",
            "--warm-up-time=1",
            f"--clients={connections}",
            f"--max-concurrent-streams={streams}",
            "--threads=1",
            f"--data={body.name}",
            "--header=content-type: application/grpc",
            "--header=te: trailers",
            f"--header=authorization: Bearer {token}",
            f"http://{address('patient')}/{PATIENT_SERVICE}/{GET_PATIENT}",
        ]
        load = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)  # noqa: S603
        time.sleep(1.5)
        pids = {n: hospital.pids[n] for n in ("patient", "audit")}
        recording = Recording(pids, args.seconds, args.out, "getpatient", args.native)
        out, _ = load.communicate()
        ok = handled_ok(metrics_url("patient"), PATIENT_SERVICE, GET_PATIENT) - before
    done = re.search(r"(\d+) succeeded", out)
    rate = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", out)
    print(
        f"\ngetpatient: h2load {args.h2load}, {rate[1] if rate else '?'} req/s, "
        f"{done[1] if done else '?'} HTTP-succeeded, {ok} gRPC OK on the server"
    )
    recording.finish(args.top)


async def booking(
    hospital: Hospital, token: str, names: list[str], slots: list[str], args: argparse.Namespace
) -> None:
    """BookAppointment at concurrency 32 (from this process) while scheduling, patient and
    audit are recorded."""
    async with channel(address("scheduling"), token) as scheduling_channel:
        stub = spb_grpc.SchedulingServiceStub(scheduling_channel)

        def book(i: int) -> Awaitable[object]:
            # A patient books many slots; theirs never overlap (5-minute slots, one schedule).
            request = spb.BookAppointmentRequest(patient=names[i % len(names)], slot=slots[i])
            return stub.BookAppointment(request, timeout=10)

        warm = await drive("BookAppointment (warm-up)", 64, 32, book, quiet=True)
        pids = {n: hospital.pids[n] for n in ("scheduling", "patient", "audit")}
        recording = Recording(pids, args.seconds, args.out, "booking", args.native)
        offset = warm.calls
        runs = []
        while recording.running() and offset + 256 <= len(slots):
            runs.append(await drive("BookAppointment", 256, 32, book, offset=offset, quiet=True))
            offset += 256
        if recording.running():
            print("booking: ran out of slots before the recording ended (raise --bookings)")
    calls = sum(r.calls for r in runs)
    elapsed = sum(r.elapsed_s for r in runs)
    codes: Counter[str] = Counter()
    for r in runs:
        codes.update(r.codes)
    print(
        f"\nbooking: BookAppointment c=32, {calls / elapsed:.0f} calls/s, "
        f"codes {dict(codes)} (client: this process)"
    )
    recording.finish(args.top)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=15, help="recording time per scenario")
    parser.add_argument("--scenario", choices=("getpatient", "booking", "all"), default="all")
    parser.add_argument(
        "--h2load", default="4x16", help="getpatient load: connections x streams, e.g. 1x1"
    )
    parser.add_argument("--bookings", type=int, default=4000, help="slots made for booking")
    parser.add_argument("--top", type=int, default=12, help="functions listed per process")
    parser.add_argument("--native", action="store_true", help="py-spy --native (C frames too)")
    parser.add_argument("--out", type=Path, help="where the folded stacks go (default: /tmp/...)")
    args = parser.parse_args()
    for tool in ("h2load", PY_SPY):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is needed (h2load: apt-get install -y nghttp2-client)")
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    args.out = args.out or Path(tempfile.gettempdir()) / f"his-profile-{stamp}"
    args.out.mkdir(parents=True, exist_ok=True)
    with services("patient", "scheduling") as hospital:
        token, names, slots = asyncio.run(_setup(hospital, 200, args.bookings))
        if args.scenario in ("getpatient", "all"):
            getpatient(hospital, token, names[0], args)
        if args.scenario in ("booking", "all"):
            asyncio.run(booking(hospital, token, names, slots, args))
    print(f"\nfolded stacks in {args.out} (speedscope.app or flamegraph.pl read them)")


if __name__ == "__main__":
    main()
