"""HIS Mesh: a hospital information system as gRPC microservices."""

import os

# gRPC's fork handlers run in every child a process forks, including the `pg_ctl` that embedded
# PostgreSQL is stopped and restarted with while servers run: with gRPC threads busy they crashed
# that child now and then (SIGSEGV, seen in CI). Nothing here forks to use gRPC in the child, so
# the handlers are not wanted; this must be set before grpc is first imported.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
