"""Shared pytest configuration."""

from __future__ import annotations

import os
import shutil

import pytest

#: Real components the tests use.  Tests skip with a reason where one is missing on a
#: developer's machine; in CI (``CI`` set, as .ci/run runs) a missing one is an error, so a
#: green CI never hides a skipped vTPM or interop test.
REQUIRED_IN_CI = (
    "swtpm",
    "swtpm_setup",
    "tpm2_makecredential",
    "tpm2_checkquote",
    "tpm2_rc_decode",
    "openssl",
    "iptables",
    "ip6tables",
    "ip",
    "unshare",
    "nsenter",
)


def pytest_sessionstart(session: pytest.Session) -> None:
    """Refuse to run in CI without the real components the tests need."""
    if not os.environ.get("CI"):
        return
    if os.environ.get("RATLS_SKIP_SWTPM") == "1":
        raise pytest.UsageError("RATLS_SKIP_SWTPM=1 would skip the vTPM tests; CI runs them")
    # iptables and ip live in /usr/sbin, which a non-root user's PATH may leave out.
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    missing = [tool for tool in REQUIRED_IN_CI if shutil.which(tool, path=path) is None]
    if missing:
        raise pytest.UsageError(
            f"CI needs {', '.join(missing)} (Debian packages swtpm, swtpm-tools, tpm2-tools, "
            "openssl, iptables, iproute2, util-linux): .ci/setup installs them"
        )


@pytest.fixture(autouse=True)
def _fresh_shared_verifiers() -> None:
    """Each test starts with no verifier shared by earlier connections.

    ``open_attested_stream`` shares one verifier per policy, and a verifier remembers the
    credential activations it has seen; a test that expects a challenge must not find the
    vTPM already proven by an earlier test.
    """
    from ratls import _api

    _api.forget_shared_verifiers()
