#!/usr/bin/env bash
# Make sure nginx, Chromium, openssl and systemd-analyze are on this machine: the reverse-proxy tests (tests/test_proxy*.py)
# put a real nginx in front of a real dagster-webserver and open the UI in headless Chromium.
# Installs Debian's packages when they are absent; never starts the system nginx (the tests run
# their own on a free port, with a config from `dagpg render nginx`).
set -euo pipefail

missing=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
# The access-control tests write an htpasswd file with `openssl passwd -apr1`.
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
# systemd-analyze checks the units `dagpg render systemd` writes (tests/test_render_keeper.py).
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
[ ${#missing[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
  echo "missing ${missing[*]}: install them (Debian packages nginx, chromium) or set" \
       "DAGPG_NGINX / DAGPG_CHROMIUM to their paths" >&2
  exit 1
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "run as root or install sudo to install ${missing[*]}" >&2; exit 1; }
  SUDO="sudo"
fi

echo "installing ${missing[*]} (Debian packages)..." >&2
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
# policy-rc.d may refuse to start the system nginx in containers; that is what we want anyway.
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
# Debian starts a freshly installed nginx where systemd runs; the tests do not want it on port 80.
if [[ " ${missing[*]} " == *" nginx "* ]] && command -v systemctl >/dev/null 2>&1 \
    && systemctl is-active --quiet nginx 2>/dev/null; then
  $SUDO systemctl disable --now nginx >/dev/null 2>&1 || true
fi
