"""Dashboards generated from code (Grafana's own foundation SDK); the Prometheus rules and
Alertmanager routes they sit beside are in deploy/kustomize/components/observability/."""
