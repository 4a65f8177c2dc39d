#!/usr/bin/env bash
# From a fresh clone to a materialized park_access_job on a PostgreSQL-backed instance, and its
# first backup (the README's "Run it"; tests/test_readme_path.py runs those steps):
#   DAGSTER_PG_PASSWORD=choose-one bash scripts/quickstart.sh
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${DAGSTER_PG_PASSWORD:-}" ]; then
  echo "set DAGSTER_PG_PASSWORD to a password for the local database, e.g." >&2
  echo "  DAGSTER_PG_PASSWORD=choose-one bash scripts/quickstart.sh" >&2
  exit 2
fi

bash scripts/install_postgres.sh
bash scripts/bootstrap.sh
export DAGSTER_HOME="$PWD/dagster_home"
.venv/bin/dagpg db up
.venv/bin/dagpg db upgrade
.venv/bin/python scripts/run_park_access.py "$@"
# A first backup, so `dagpg verify` finds one from the start (instance_backup_nightly, on as soon
# as the daemon runs, takes the next ones).
.venv/bin/dagpg backup --silent
