#!/usr/bin/env bash
# Smoke test of the README's first command: from a fresh clone, `make run` must install
# everything and serve the example until /health/live answers; then the first URL the
# banner prints (the index) and /docs must answer 200. Used by .ci/run.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'kill "${pid:-0}" 2>/dev/null || true; wait "${pid:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT
git clone --quiet "$repo" "$work/clone"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cd "$work/clone"
# setsid: the whole process group (make, uvicorn) is stopped by the trap.
setsid make run PORT="$port" >"$work/run.log" 2>&1 &
pid=$!
for _ in $(seq 1 600); do
  if curl -fsS "http://127.0.0.1:$port/health/live" >/dev/null 2>&1; then
    echo "make run: /health/live answered on port $port"
    curl -fsS "http://127.0.0.1:$port/health/live"; echo
    # Readiness on the embedded defaults (SQLite file, no Redis) must be 200 as well.
    if ! curl -fsS "http://127.0.0.1:$port/health/ready"; then
      echo; echo "make run: /health/ready is not 200 on the defaults" >&2
      cat "$work/run.log" >&2
      exit 1
    fi
    echo
    # The first URL the banner prints (the example's index) must answer 200, and so must
    # the API docs when the banner names them.
    banner_urls=$(sed -n '/^asgi_observe example:/,$p' "$work/run.log" | grep -o 'http://[^ )]*' || true)
    first_url=$(printf '%s\n' "$banner_urls" | head -n 1)
    for url in "$first_url" $(printf '%s\n' "$banner_urls" | grep '/docs$' || true); do
      if [ -z "$url" ]; then
        echo "make run: the banner printed no URL" >&2
        cat "$work/run.log" >&2
        exit 1
      fi
      code=$(curl -sS -o "$work/body" -w '%{http_code}' "$url" || true)
      if [ "$code" != 200 ]; then
        echo "make run: $url answered $code, not 200" >&2
        cat "$work/body" >&2 2>/dev/null || true
        cat "$work/run.log" >&2
        exit 1
      fi
      echo "make run: $url answered 200"
    done
    kill -- "-$pid" 2>/dev/null || true
    exit 0
  fi
  if ! kill -0 "$pid" 2>/dev/null; then
    break
  fi
  sleep 0.5
done
echo "make run did not serve /health/live; its output:" >&2
cat "$work/run.log" >&2
exit 1
