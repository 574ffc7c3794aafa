#!/usr/bin/env bash
# Install the real servers the test suite starts (Prometheus + promtool, Redis, PostgreSQL, wrk).
# Debian/Ubuntu only; elsewhere it explains what to install and the tests that need a
# missing part skip locally (and fail in CI, where CI=true).
set -euo pipefail

missing=()
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
ls -d /usr/lib/postgresql/*/bin >/dev/null 2>&1 || missing+=(postgresql)
command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)   # dashboard type-check (tsc)

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
# shellcheck disable=SC2207
missing=($(printf '%s\n' "${missing[@]}" | sort -u))
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "note: missing real parts for the test suite: ${missing[*]}" >&2
  echo "      install them with your package manager; tests needing them will skip" >&2
  exit 0
fi
echo "installing real parts: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# --no-install-recommends: without it prometheus drags in node-exporter and starts services.
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
