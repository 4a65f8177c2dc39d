#!/usr/bin/env bash
# The test command: install what is missing (PostgreSQL's server programs, nginx and Chromium for
# the reverse-proxy tests, the project in .venv), then run the whole suite against real
# PostgreSQL (a throwaway server unless TEST_PG_URL is set). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_postgres.sh
bash scripts/install_test_tools.sh
bash scripts/bootstrap.sh
# PostgreSQL was just installed: a test that cannot get a server fails instead of skipping.
export DAGPG_REQUIRE_PG=1
exec .venv/bin/python -m pytest "$@"
