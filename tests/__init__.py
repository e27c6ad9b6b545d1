"""The test suite: tests/ mirrors services/ and clients/; e2e/ holds whole-system flows."""

# Before anything imports grpc: `his` sets how gRPC treats fork (see services/his/__init__.py).
import his  # noqa: F401
