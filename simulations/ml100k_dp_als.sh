#!/usr/bin/env bash
# Scenario 'ml100k_dp_als': see simulations/README.md for what it runs and the numbers it gave.
# Extra hydra overrides may follow, e.g. privacy.user_target_epsilon=1.
set -euo pipefail
cd "$(dirname "$0")/.."
exec ${PYTHON:-.venv/bin/python} -m fedrec.cli simulate +experiment=ml100k_dp_als "$@"
