#!/usr/bin/env bash
# Builds smlocal/script-mode:latest, a Python image for SageMaker's script mode (entry_point /
# source_dir), with no registry: a Debian bookworm root with python3 and boto3 made by
# mmdebstrap (DESIGN §10; cached as smlocal/python-base:bookworm), plus the `train` entry
# point next to this script. Needs mmdebstrap (apt-get install mmdebstrap) the first time.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
base=smlocal/python-base:bookworm
if ! docker image inspect "$base" >/dev/null 2>&1; then
  command -v mmdebstrap >/dev/null || { echo "build-script-image.sh: mmdebstrap is needed to make $base (apt-get install mmdebstrap)" >&2; exit 1; }
  mmdebstrap --quiet --variant=essential --include=python3,python3-boto3 \
    --aptopt='Acquire::Check-Valid-Until "false"' bookworm - | docker import - "$base" >/dev/null
fi
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
cp "$here/script-mode/train" "$ctx/train"
cat > "$ctx/Dockerfile" <<DOCKERFILE
FROM $base
COPY train /usr/local/bin/train
ENV PATH=/usr/local/bin:/usr/bin:/bin PYTHONUNBUFFERED=1
ENTRYPOINT ["/usr/local/bin/train"]
DOCKERFILE
DOCKER_BUILDKIT=0 docker build --quiet --label smlocal.sample=true -t smlocal/script-mode:latest "$ctx" >/dev/null 2>&1 ||
  DOCKER_BUILDKIT=0 docker build -t smlocal/script-mode:latest "$ctx"
echo "built smlocal/script-mode:latest"
