"""Benchmark harness for mixpanel-dwh-proxy: `bench/run.sh` (see bench/README.md)."""
