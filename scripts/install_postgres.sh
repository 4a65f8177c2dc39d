#!/usr/bin/env bash
# Make sure PostgreSQL's server programs (initdb, pg_ctl, pg_dump, ...) are on this machine.
# Installs Debian's package when they are absent; never creates or starts a system cluster
# (dagpg runs its own, on the port dagster.yaml names).
set -euo pipefail

have_server_programs() {
  [ -n "${DAGPG_PG_BINDIR:-}" ] && [ -x "${DAGPG_PG_BINDIR}/initdb" ] && return 0
  command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/initdb" ] && return 0
  compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null && return 0
  return 1
}

if have_server_programs; then
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "PostgreSQL server programs not found: install PostgreSQL 15 or newer and set" \
       "DAGPG_PG_BINDIR to its bin folder" >&2
  exit 1
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "run as root or install sudo to install PostgreSQL" >&2; exit 1; }
  SUDO="sudo"
fi

echo "installing PostgreSQL server programs (Debian package postgresql)..." >&2
$SUDO mkdir -p /etc/postgresql-common/createcluster.d
echo "create_main_cluster = false" | $SUDO tee /etc/postgresql-common/createcluster.d/dagpg.conf >/dev/null
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
have_server_programs || { echo "PostgreSQL was installed but initdb is still not found" >&2; exit 1; }
