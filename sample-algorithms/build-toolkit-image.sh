#!/usr/bin/env bash
# Builds smlocal/sklearn-toolkit:latest the way AWS builds its framework images, with no
# registry: a Debian bookworm root with python3 and the C++ and OpenMP runtimes numpy,
# scipy and scikit-learn need (made by mmdebstrap, cached as
# smlocal/python-native-base:bookworm), and SageMaker's training
# toolkit (PyPI sagemaker-training), scikit-learn and pandas installed from wheels downloaded
# on the host at the versions toolkit/requirements.txt pins (a build container cannot reach
# PyPI). `train` is the toolkit's own entry point, as in AWS's images. Cached by name:
# nothing is done when the image exists (SMLOCAL_REBUILD=1 rebuilds it).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
image=smlocal/sklearn-toolkit:latest
if [ -z "${SMLOCAL_REBUILD:-}" ] && docker image inspect "$image" >/dev/null 2>&1; then
  echo "$image is there"
  exit 0
fi
started=$(date +%s)
base=smlocal/python-native-base:bookworm
if ! docker image inspect "$base" >/dev/null 2>&1; then
  command -v mmdebstrap >/dev/null || { echo "build-toolkit-image.sh: mmdebstrap is needed to make $base (apt-get install mmdebstrap)" >&2; exit 1; }
  mmdebstrap --quiet --variant=essential --include=python3,libstdc++6,libgomp1 \
    --aptopt='Acquire::Check-Valid-Until "false"' bookworm - | docker import - "$base" >/dev/null
fi
wheels="$here/target/toolkit-wheels"
mkdir -p "$wheels"
python=${PYTHON:-python3}
"$python" -m pip download --quiet --disable-pip-version-check --no-deps --dest "$wheels" -r "$here/toolkit/requirements.txt"
# The two source packages become wheels here (the image has no compiler).
for sdist in "$wheels"/sagemaker_training-*.tar.gz "$wheels"/inotify_simple-*.tar.gz; do
  name=$(basename "$sdist" .tar.gz)
  ls "$wheels"/"${name}"-*.whl >/dev/null 2>&1 ||
    "$python" -m pip wheel --quiet --disable-pip-version-check --no-deps --wheel-dir "$wheels" "$sdist"
done
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
mkdir "$ctx/wheels"
cp "$wheels"/*.whl "$ctx/wheels/"
cp "$here/toolkit/requirements.txt" "$ctx/requirements.txt"
pip_wheel=$(cd "$ctx/wheels" && ls pip-*.whl)
cat > "$ctx/Dockerfile" <<DOCKERFILE
FROM $base
COPY wheels /tmp/wheels
COPY requirements.txt /tmp/requirements.txt
RUN python3 /tmp/wheels/$pip_wheel/pip install --quiet --no-index --find-links /tmp/wheels \\
      --break-system-packages --root-user-action=ignore --no-warn-script-location -r /tmp/requirements.txt \\
 && rm -rf /tmp/wheels /tmp/requirements.txt /root/.cache
ENV PATH=/usr/local/bin:/usr/bin:/bin PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
ENTRYPOINT ["/usr/local/bin/train"]
DOCKERFILE
DOCKER_BUILDKIT=0 docker build --quiet --label smlocal.sample=true -t "$image" "$ctx" >/dev/null 2>&1 ||
  DOCKER_BUILDKIT=0 docker build -t "$image" "$ctx"
size=$(docker image inspect -f '{{.Size}}' "$image")
echo "built $image in $(( $(date +%s) - started )) s, $(( size / 1048576 )) MiB"
