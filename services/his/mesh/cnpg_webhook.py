"""What CloudNativePG's admission webhook refuses in a `Cluster` that its CRD schema lets through.

The operator validates a Cluster in code (internal/webhook/v1/cluster_webhook.go, `validate*`),
not in the CRD: `kubectl apply` of a Cluster breaking one of these rules fails at admission,
after the schema check passed. The rules kept here are the ones an SRE editing
components/postgres or an overlay's postgres.yaml is likely to break, each as the webhook says it:

- storage.size / walStorage.size / tablespaces[].storage.size a valid quantity, or a storage
  request in the pvcTemplate (`validateStorageConfigurationSize`);
- minSyncReplicas ≤ maxSyncReplicas < instances, both ≥ 0, not mixed with the legacy
  postgresql.synchronous, whose `number` stays below the instances plus the standby names;
- affinity.podAntiAffinityType `preferred` or `required`; primaryUpdateStrategy `supervised`
  not with one instance; imageName not tagged `latest`;
- resources requests not above limits (cpu, memory, ephemeral-storage); shared_buffers within
  the memory request; min_wal_size below max_wal_size, and both below the WAL volume;
- parameters the operator owns (port, listen_addresses, ssl*, archive_command, ...) left unset;
- metadata.name a DNS-1035 label of at most 50 characters.

Not checkable here: the webhook's update rules (a storage size that shrinks, a walStorage
removed) compare with the object in the cluster, which a check of the repository never sees.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from decimal import Decimal
from typing import Any

from his.mesh import quantity

Problem = tuple[tuple[int | str, ...], str, str]  # field path, problem, fix

_REFUSED = " (CloudNativePG's admission webhook refuses the Cluster)"
# Parameters the operator sets itself; the webhook refuses any value for these (those it also
# gives a default, e.g. logging_collector, are left out: their default value is accepted).
_OPERATOR_OWNED = frozenset(
    {
        "allow_system_table_mods",
        "archive_cleanup_command",
        "archive_command",
        "bonjour",
        "bonjour_name",
        "config_file",
        "data_directory",
        "data_sync_retry",
        "event_source",
        "external_pid_file",
        "hba_file",
        "hot_standby",
        "ident_file",
        "jit_provider",
        "listen_addresses",
        "log_file_mode",
        "port",
        "primary_conninfo",
        "primary_slot_name",
        "promote_trigger_file",
        "recovery_end_command",
        "recovery_min_apply_delay",
        "recovery_target",
        "recovery_target_action",
        "recovery_target_inclusive",
        "recovery_target_lsn",
        "recovery_target_name",
        "recovery_target_time",
        "recovery_target_timeline",
        "recovery_target_xid",
        "restart_after_crash",
        "restore_command",
        "ssl",
        "ssl_ca_file",
        "ssl_cert_file",
        "ssl_crl_file",
        "ssl_dh_params_file",
        "ssl_key_file",
        "ssl_passphrase_command",
        "ssl_passphrase_command_supports_reload",
        "ssl_prefer_server_ciphers",
        "stats_temp_directory",
        "syslog_facility",
        "syslog_ident",
        "syslog_sequence_numbers",
        "syslog_split_messages",
        "unix_socket_directories",
        "unix_socket_group",
        "unix_socket_permissions",
    }
)
_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_MAX_NAME = 50
_STORAGE_FIELDS = frozenset({"size", "storageClass", "pvcTemplate", "resizeInUseVolumes"})
_WAL_DEFAULTS = {"min_wal_size": "80MB", "max_wal_size": "1GB"}


def check(manifest: Mapping[str, Any]) -> Iterator[Problem]:
    """Every webhook rule the Cluster breaks."""
    spec = manifest.get("spec")
    spec = spec if isinstance(spec, Mapping) else {}
    yield from _name(manifest)
    yield from _storage(spec)
    yield from _sync_replicas(spec)
    yield from _affinity_and_updates(spec)
    yield from _resources(spec)
    yield from _parameters(spec)


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _int(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _name(manifest: Mapping[str, Any]) -> Iterator[Problem]:
    name = str(_mapping(manifest.get("metadata")).get("name") or "")
    if name and not _DNS_1035.match(name):
        yield (
            ("metadata", "name"),
            f"{name!r} is not a DNS label (the operator names Services after it){_REFUSED}",
            "use lower-case letters, digits and '-', starting with a letter",
        )
    if len(name) > _MAX_NAME:
        yield (
            ("metadata", "name"),
            f"is {len(name)} characters, more than {_MAX_NAME}{_REFUSED}",
            f"shorten it to {_MAX_NAME} characters at most",
        )


def _storage(spec: Mapping[str, Any]) -> Iterator[Problem]:
    places: list[tuple[tuple[int | str, ...], Any]] = [(("storage",), spec.get("storage"))]
    if spec.get("walStorage") is not None:
        places.append((("walStorage",), spec.get("walStorage")))
    for index, tablespace in enumerate(spec.get("tablespaces") or []):
        places.append((("tablespaces", index, "storage"), _mapping(tablespace).get("storage")))
    for where, raw in places:
        storage = _mapping(raw)
        size = storage.get("size")
        path = ("spec", *where, "size")
        if size not in (None, ""):
            if quantity.parse(size) is None:
                yield (
                    path,
                    f"{size!r} is {quantity.MESSAGE}{_REFUSED}",
                    quantity.fix(str(size)),
                )
            continue
        template = _mapping(storage.get("pvcTemplate"))
        requested = _mapping(_mapping(template.get("resources")).get("requests")).get("storage")
        # A misspelt `size` is the schema's finding already: one mistake, one finding.
        if not requested and set(storage) <= _STORAGE_FIELDS:
            yield (
                path,
                f"no size: neither size nor a storage request in pvcTemplate{_REFUSED}",
                "set size (e.g. 20Gi)",
            )


def _sync_replicas(spec: Mapping[str, Any]) -> Iterator[Problem]:
    instances = _int(spec.get("instances"), 1)
    if instances < 1:
        return  # the schema's finding (at least 1)
    low, high = _int(spec.get("minSyncReplicas"), 0), _int(spec.get("maxSyncReplicas"), 0)
    for field, value in (("minSyncReplicas", low), ("maxSyncReplicas", high)):
        if value < 0:
            yield ("spec", field), f"{value} is negative{_REFUSED}", "use 0 or more"
    if high >= instances:
        yield (
            ("spec", "maxSyncReplicas"),
            f"{high} is not lower than instances ({instances}): the primary cannot wait for "
            f"that many synchronous standbys{_REFUSED}",
            f"use at most {instances - 1}, or raise instances",
        )
    if low > high:
        yield (
            ("spec", "minSyncReplicas"),
            f"{low} is greater than maxSyncReplicas ({high}){_REFUSED}",
            "make minSyncReplicas at most maxSyncReplicas",
        )
    synchronous = _mapping(_mapping(spec.get("postgresql")).get("synchronous"))
    if not synchronous:
        return
    path = ("spec", "postgresql", "synchronous")
    if low > 0 or high > 0:
        yield (
            path,
            f"set together with minSyncReplicas/maxSyncReplicas{_REFUSED}",
            "keep one: postgresql.synchronous (current) or min/maxSyncReplicas (legacy)",
        )
    names = len(synchronous.get("standbyNamesPre") or []) + len(
        synchronous.get("standbyNamesPost") or []
    )
    number = _int(synchronous.get("number"), 0)
    if number >= instances + names:
        yield (
            (*path, "number"),
            f"{number} is not lower than instances plus standby names ({instances + names}): "
            f"no standby is left to fail over to{_REFUSED}",
            f"use at most {instances + names - 1}, or raise instances",
        )


def _affinity_and_updates(spec: Mapping[str, Any]) -> Iterator[Problem]:
    kind = _mapping(spec.get("affinity")).get("podAntiAffinityType")
    if kind not in (None, "", "preferred", "required"):
        yield (
            ("spec", "affinity", "podAntiAffinityType"),
            f"{kind!r} is not a pod anti-affinity type{_REFUSED}",
            "use preferred (the default) or required",
        )
    if spec.get("primaryUpdateStrategy") == "supervised" and _int(spec.get("instances"), 1) == 1:
        yield (
            ("spec", "primaryUpdateStrategy"),
            f"supervised with one instance: there is no replica to switch over to{_REFUSED}",
            "use unsupervised, or raise instances",
        )
    image = str(spec.get("imageName") or "")
    if image and image.rsplit("/", 1)[-1].partition("@")[0].partition(":")[2] == "latest":
        yield (
            ("spec", "imageName"),
            f"{image!r} is tagged latest: the operator cannot tell an upgrade{_REFUSED}",
            "tag it with the PostgreSQL version (ghcr.io/cloudnative-pg/postgresql:16.6)",
        )


def _resources(spec: Mapping[str, Any]) -> Iterator[Problem]:
    resources = _mapping(spec.get("resources"))
    requests, limits = _mapping(resources.get("requests")), _mapping(resources.get("limits"))
    for name in ("cpu", "memory", "ephemeral-storage"):
        asked, bound = quantity.parse(requests.get(name)), quantity.parse(limits.get(name))
        if asked and bound and asked > bound:
            yield (
                ("spec", "resources", "requests", name),
                f"{requests.get(name)} is above the limit {limits.get(name)}{_REFUSED}",
                f"lower the request or raise limits.{name}",
            )
    memory = quantity.parse(requests.get("memory"))
    raw = _mapping(_mapping(spec.get("postgresql")).get("parameters")).get("shared_buffers")
    buffers = _postgres_size(str(raw)) if raw not in (None, "") else None
    if memory and buffers is not None and buffers > memory:
        yield (
            ("spec", "resources", "requests", "memory"),
            f"{requests.get('memory')} is less than shared_buffers ({raw}){_REFUSED}",
            "raise the memory request, or lower shared_buffers (a quarter of it is usual)",
        )


def _parameters(spec: Mapping[str, Any]) -> Iterator[Problem]:
    postgresql = _mapping(spec.get("postgresql"))
    parameters = _mapping(postgresql.get("parameters"))
    path = ("spec", "postgresql", "parameters")
    for name in sorted(set(parameters) & _OPERATOR_OWNED):
        yield (
            (*path, name),
            f"the operator sets {name} itself{_REFUSED}",
            "remove it: CloudNativePG manages it",
        )
    sizes: dict[str, Decimal] = {}
    for name, default in _WAL_DEFAULTS.items():
        written = parameters.get(name)
        value = _postgres_size(str(written if written not in (None, "") else default))
        if value is None:
            yield (
                (*path, name),
                f"{written!r} is not a PostgreSQL size such as 1GB or 512MB{_REFUSED}",
                "write a number with kB, MB, GB or TB",
            )
        else:
            sizes[name] = value
    if len(sizes) == len(_WAL_DEFAULTS) and sizes["min_wal_size"] >= sizes["max_wal_size"]:
        yield (
            (*path, "min_wal_size"),
            f"min_wal_size is not below max_wal_size (defaults 80MB and 1GB){_REFUSED}",
            "keep min_wal_size below max_wal_size",
        )
    volume = quantity.parse(_mapping(spec.get("walStorage")).get("size"))
    if volume is None:
        return
    for name in _WAL_DEFAULTS:
        if name in parameters and name in sizes and sizes[name] >= volume:
            yield (
                (*path, name),
                f"{parameters[name]} is not below the WAL volume size "
                f"({_mapping(spec.get('walStorage')).get('size')}){_REFUSED}",
                f"lower {name}, or enlarge walStorage.size",
            )


def _postgres_size(text: str) -> Decimal | None:
    """A PostgreSQL size (`128MB`, `1GB`, `512`) as the webhook reads it: a bare number is MB,
    else the unit must end in B (kB, MB, GB, TB: powers of 1024)."""
    text = text.replace(" ", "")
    if text.isdigit():
        text += "MB"
    if not text.endswith("B"):
        return None
    body = text[:-1]
    if body.isdigit():
        return Decimal(body)
    converted = body + "i"
    converted = converted.replace("ki", "Ki")
    return quantity.parse(converted)
