"""Fixtures of the edge fault tests (the throw-away TLS CA is the TLS tests' own)."""

from tests.scp.test_tls import pki  # noqa: F401 - re-exported as a fixture for tests/faults
