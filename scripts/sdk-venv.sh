#!/usr/bin/env bash
# Installs the SageMaker Python SDK v2 in .venv-sdk, for the benchmark's comparison with its
# local mode (which also needs docker-compose: apt-get install docker-compose).
#   scripts/sdk-venv.sh && SMLOCAL_SDK_PYTHON=.venv-sdk/bin/python cargo bench --bench smlocal
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv-sdk
.venv-sdk/bin/pip install --quiet -r tests/e2e/python/requirements.txt
echo "SMLOCAL_SDK_PYTHON=$(pwd)/.venv-sdk/bin/python"
