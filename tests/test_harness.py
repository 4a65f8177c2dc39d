"""The harness itself: without a server, a database test fails under CI and scripts/test.sh."""

from __future__ import annotations

import pytest

from tests import pgharness


@pytest.mark.parametrize("variable", ["CI", "DAGPG_REQUIRE_PG"])
def test_no_server_fails_where_a_server_is_required(monkeypatch, variable):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("DAGPG_REQUIRE_PG", raising=False)
    monkeypatch.setenv(variable, "1")
    with pytest.raises(pytest.fail.Exception, match="PostgreSQL is required in CI: gone"):
        pgharness.unavailable("gone")


def test_no_server_skips_on_a_bare_pytest(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("DAGPG_REQUIRE_PG", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no PostgreSQL: gone"):
        pgharness.unavailable("gone")
