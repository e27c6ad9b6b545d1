"""One rendered overlay as the lint rules see it, and the small helpers every rule uses."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from his.mesh.findings import Finding, located, subject
from his.mesh.routes import fqdn, istio_host
from his.mesh.sources import FieldPath, Manifest

if TYPE_CHECKING:
    from his.mesh.kustomize_lint import Patch

Locate = Callable[[Manifest], str]
# The kustomize patch that wrote the field at a path (`spec.http[3].fault`) of a rendered object,
# or None: a finding about that field names the patch, not the file the object was written in.
PatchedBy = Callable[[Manifest, FieldPath], "Patch | None"]


def _no_patches(manifest: Manifest, path: FieldPath) -> Patch | None:
    return None


@dataclass
class Cluster:
    """The rendered objects of one overlay, indexed for the rules."""

    objects: list[Manifest]
    locate: Locate  # the file a rendered object was written in
    patched_by: PatchedBy = _no_patches
    services: dict[tuple[str, str], Manifest] = field(default_factory=dict)
    accounts: set[tuple[str, str]] = field(default_factory=set)
    pods: list[tuple[str, dict[str, str]]] = field(default_factory=list)  # (namespace, labels)
    gateways: set[tuple[str, str]] = field(default_factory=set)
    tree: str = ""  # the rendered tree (deploy/kustomize/overlays/prod); empty when not known

    def __post_init__(self) -> None:
        for manifest in self.objects:
            kind, namespace, name = kind_of(manifest), namespace_of(manifest), name_of(manifest)
            if kind == "Service":
                self.services[(namespace, name)] = manifest
            elif kind == "ServiceAccount":
                self.accounts.add((namespace, name))
            elif kind == "Gateway":
                self.gateways.add((namespace, name))
            elif kind in ("Deployment", "StatefulSet", "DaemonSet"):
                template = (manifest.get("spec") or {}).get("template") or {}
                labels = (template.get("metadata") or {}).get("labels") or {}
                self.pods.append((namespace, {str(k): str(v) for k, v in labels.items()}))

    def of_kind(self, kind: str) -> list[Manifest]:
        return [m for m in self.objects if kind_of(m) == kind]

    def resolve(self, host: str, namespace: str) -> tuple[str, str] | None:
        """The Service a host of an Istio object names, as istiod resolves it (`patient` or the
        FQDN; `patient.his` is kept as written and names none), if it exists."""
        return self._service(istio_host(host, namespace))

    def resolve_dns(self, host: str, namespace: str) -> tuple[str, str] | None:
        """The Service a pod in `namespace` reaches by DNS under this name (`patient`,
        `patient.his`, `patient.his.svc`, FQDN), if it exists: for addresses a process dials
        (HIS_*_ADDR, the jwksUri istiod fetches), not for the hosts of Istio objects."""
        return self._service(fqdn(host, namespace))

    def _service(self, name: str) -> tuple[str, str] | None:
        parts = name.split(".")
        if len(parts) != 5 or parts[2:] != ["svc", "cluster", "local"]:
            return None
        wanted = (parts[1], parts[0])
        return wanted if wanted in self.services else None

    def host_problem(self, host: str, namespace: str) -> str:
        """Why a host of an Istio object names no Service: Istio does not expand a dotted
        short name the way DNS does, or it names no Service at all."""
        target = self.resolve_dns(host, namespace)
        if target is not None and istio_host(host, namespace) != fqdn(host, namespace):
            return (
                f"host {host!r} names no Service as Istio resolves it: istiod expands only a "
                f"name without a dot and keeps {host!r} as written, so it is not "
                f"{target[1]}.{target[0]}.svc.cluster.local (DNS would find it, Istio does not)"
            )
        return f"host {host!r} is not a Service of this overlay"

    def selects_pods(self, namespace: str, labels: Mapping[str, str]) -> bool:
        return any(
            ns == namespace and all(pod.get(k) == v for k, v in labels.items())
            for ns, pod in self.pods
        )


def kind_of(manifest: Manifest) -> str:
    return str(manifest.get("kind", ""))


def namespace_of(manifest: Manifest, default: str = "") -> str:
    """The namespace a manifest names (Kubernetes applies `default` when it names none)."""
    return str((manifest.get("metadata") or {}).get("namespace") or default)


def name_of(manifest: Manifest) -> str:
    return str((manifest.get("metadata") or {}).get("name") or "")


def spec_of(manifest: Manifest) -> dict[str, Any]:
    spec = manifest.get("spec")
    return spec if isinstance(spec, dict) else {}


def finding(
    cluster: Cluster,
    manifest: Manifest,
    where: str,
    problem: str,
    fix: str,
    *,
    paths: Sequence[FieldPath] = (),
) -> Finding:
    """A finding about an object, in the file it is written in; or, when a kustomize patch
    wrote the field at one of `paths` (the fields the problem is about, first the likeliest),
    in that patch's file, naming the patch."""
    for path in paths:
        patch = cluster.patched_by(manifest, path)
        if patch is not None:
            (found,) = located(
                cluster.locate(manifest), manifest, where, problem, fix, writers=[patch]
            )
            return found
    return Finding(cluster.locate(manifest), subject(manifest, where), problem, fix)


def suggest(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
