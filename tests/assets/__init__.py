"""Tests of the deployable assets: compose stack, Prometheus rules, Grafana dashboards."""
