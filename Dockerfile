# One image for every HIS service; the argument picks which: `his serve <service>` (see
# deploy/kustomize/base/<service>/deployment.yaml). Pin the base by digest in the release pipeline.

# --- build: install the package and its pinned dependencies into a venv -----------------------
FROM python:3.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
# Only what the wheel is built from (.dockerignore keeps tests, .venv and .git out anyway).
WORKDIR /src
COPY pyproject.toml README.md ./
COPY services ./services
COPY clients/python ./clients/python
# Every dependency ships a cp311 manylinux wheel for x86_64 (checked with pip --only-binary), so no
# compiler is needed even here. regopy's wheel is manylinux_2_34: keep a base with glibc >= 2.34
# (bookworm has 2.36; bullseye would not do).
# No extras: the `mesh` extra (his mesh/his canary: kubernetes-validate, YAML, kubectl) is for SREs'
# machines and CI, not for the services, and would add well over 100 MB to every pod.
RUN /opt/venv/bin/pip install --no-cache-dir .

# --- runtime: the venv and a non-root user, no build tools ----------------------------------------
FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH
# uid/gid 10001 match runAsUser in the Kubernetes manifests.
RUN groupadd --gid 10001 his \
 && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/his --shell /usr/sbin/nologin his
COPY --from=build /opt/venv /opt/venv
# Outside Kubernetes (`docker run`), HIS_DATA_DIR defaults to .his here; in Kubernetes the root
# filesystem is read-only and HIS_DATA_DIR points at the /tmp emptyDir.
WORKDIR /home/his
USER 10001:10001
# gRPC and Prometheus metrics as configured in Kubernetes (HIS_PORT, HIS_METRICS_PORT).
EXPOSE 50051 9090
ENTRYPOINT ["his"]
CMD ["serve", "patient"]
