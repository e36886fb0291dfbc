#!/usr/bin/env bash
# Quick start, part 2: install with the test extras, start a throwaway PostgreSQL on loopback
# for the store tests (skipped, with the reason, where none can be started; failed under CI=true), run the whole suite.
# The tests run on one pytest-xdist worker (FUSION_TEST_WORKERS to change; 0 runs them in this process): each heavy test
# starts Ray, TensorFlow and Prefect processes of its own, and two of them at once on two cores starve each other. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh test
if [ -z "${FUSION_TEST_POSTGRES_URL:-}" ]; then
  if pg_env=$(scripts/postgres.sh); then
    eval "$pg_env"
    trap 'scripts/postgres.sh stop' EXIT
  else
    echo "PostgreSQL could not be started: the PostgreSQL store tests will be skipped" >&2
  fi
fi
if ! command -v chromium >/dev/null 2>&1; then
  echo "installing chromium (for the report rendering test)" >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >&2 \
    || echo "chromium could not be installed: the report rendering test will be skipped" >&2
fi
.venv/bin/python -m pytest -n "${FUSION_TEST_WORKERS:-1}" --dist loadgroup "$@"
