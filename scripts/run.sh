#!/usr/bin/env bash
# Helper for the example service and the local observability stack.
#   scripts/run.sh serve   serve examples.baliblissed on $HOST:$PORT (default 127.0.0.1:8000)
#   scripts/run.sh start   start the docker-compose stack (Prometheus, Grafana, Jaeger, OTel Collector)
#   scripts/run.sh stop    stop it
set -euo pipefail
cd "$(dirname "$0")/.."
HOST=${HOST:-127.0.0.1}
PORT=${PORT:-8000}
APP=${APP:-examples.baliblissed:create_app}

compose() {
  # Two different problems, two different fixes: no Docker at all, or Docker without
  # the compose plugin (and no standalone docker-compose either).
  if ! command -v docker >/dev/null 2>&1 && ! command -v docker-compose >/dev/null 2>&1; then
    echo "Docker is not installed (no 'docker' on PATH): install Docker Engine or Docker Desktop to run the local stack (https://docs.docker.com/get-docker/)" >&2
    exit 1
  fi
  if command -v docker >/dev/null 2>&1 && docker compose version >/dev/null 2>&1; then
    docker compose -f compose/docker-compose.yaml --profile otel "$@"
  elif command -v docker-compose >/dev/null 2>&1; then
    docker-compose -f compose/docker-compose.yaml --profile otel "$@"
  else
    echo "Docker is installed but the compose plugin is not ('docker compose version' failed and there is no 'docker-compose'): install the Docker Compose plugin (https://docs.docker.com/compose/install/)" >&2
    exit 1
  fi
}

case "${1:-serve}" in
  serve)
    # The first URL is the example's index of its endpoints and must answer 200:
    # tests/test_docs.py requests every URL printed here, scripts/smoke_make_run.sh the
    # first one and /docs.
    cat <<INFO
asgi_observe example: ${APP}
  index      http://${HOST}:${PORT}/   (every endpoint of the example, as JSON)
  metrics    http://${HOST}:${PORT}/metrics   (legacy JSON: /metrics/legacy)
  health     http://${HOST}:${PORT}/health   /health/live   /health/ready   /health/startup
INFO
    # Only FastAPI apps serve interactive API docs.
    case "${APP}" in
      examples.baliblissed:* | examples.fastapi_app:*)
        echo "  API docs   http://${HOST}:${PORT}/docs"
        ;;
    esac
    echo "  stack      make stack-up   (Prometheus :9090, Grafana :3000 admin/admin, Jaeger :16686)"
    exec .venv/bin/uvicorn --factory "${APP}" --host "${HOST}" --port "${PORT}" --no-access-log
    ;;
  start)
    compose up -d
    echo "Prometheus http://localhost:9090  Grafana http://localhost:3000  Jaeger http://localhost:16686"
    ;;
  stop)
    compose down
    ;;
  *)
    echo "usage: $0 serve|start|stop" >&2
    exit 2
    ;;
esac
