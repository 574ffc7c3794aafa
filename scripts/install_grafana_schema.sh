#!/usr/bin/env bash
# Install TypeScript and @grafana/schema for the dashboard type check
# (tests/assets/test_dashboard_types.py). Grafana publishes its dashboard model as
# TypeScript types, not JSON schema, so `tsc --strict` is the closest thing to a schema
# check without a Grafana server.
#
# Installs into ${ASGI_OBSERVE_GRAFANA_SCHEMA_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/asgi-observe/grafana-schema}
# (outside the repository, so nothing shows up in git). Needs node and npm; without them
# it explains and exits 0, and the type-check test skips locally (fails in CI).
set -euo pipefail

DIR=${ASGI_OBSERVE_GRAFANA_SCHEMA_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/asgi-observe/grafana-schema}
TYPESCRIPT=typescript@5
SCHEMA=@grafana/schema@13
STAMP="$DIR/.installed-$(echo "$TYPESCRIPT $SCHEMA" | tr ' /@' '__-')"

if [ -f "$STAMP" ] && [ -x "$DIR/node_modules/.bin/tsc" ]; then
  exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
  echo "note: npm is not installed; the Grafana dashboard type check will skip" >&2
  echo "      (Debian: apt-get install -y --no-install-recommends nodejs npm)" >&2
  exit 0
fi
mkdir -p "$DIR"
cd "$DIR"
[ -f package.json ] || echo '{"private": true}' > package.json
echo "installing $TYPESCRIPT $SCHEMA into $DIR"
npm install --silent --no-audit --no-fund --no-progress "$TYPESCRIPT" "$SCHEMA"
touch "$STAMP"
