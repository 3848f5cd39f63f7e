"""Which hosts are loopback, and the warning for the others."""

from __future__ import annotations

import pytest

from convlens.serve.server import exposure_warning, is_loopback


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"])
def test_loopback_hosts_need_no_warning(host):
    assert is_loopback(host) and exposure_warning(host) is None


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "example.org"])
def test_other_hosts_are_warned_about(host):
    assert not is_loopback(host)
    assert "reachable from other machines" in exposure_warning(host)
    assert "--host 127.0.0.1" in exposure_warning(host)
