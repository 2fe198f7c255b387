#!/usr/bin/env bash
# Builds one of smlocal's local stand-ins for SageMaker's own images with no registry:
#   build.sh NAME IMAGE STANDS_FOR [DIGEST]
# NAME is a folder beside this script (xgboost, sklearn) holding requirements.txt and the
# stand-in's own files; IMAGE the local name to tag; STANDS_FOR the AWS repository:tag it
# answers for (printed by the stand-in when it starts). The root is Debian bookworm made by
# mmdebstrap (cached as smlocal/python-native-base:bookworm); Python packages are wheels
# downloaded on this machine at the pinned versions (a build container cannot reach PyPI)
# into $WHEELS, which is kept between builds. DIGEST (of the sources) is kept as a label, so
# `smlocal images` can tell an image built from older sources. `smlocal images build NAME`
# runs this.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
name=$1 image=$2 stands_for=$3 digest=${4:-unknown}
wheels=${WHEELS:?WHEELS names the folder downloaded wheels are kept in}
started=$(date +%s)
base=smlocal/python-native-base:bookworm
if ! docker image inspect "$base" >/dev/null 2>&1; then
  command -v mmdebstrap >/dev/null || { echo "mmdebstrap is needed to make $base (apt-get install mmdebstrap)" >&2; exit 1; }
  mmdebstrap --quiet --variant=essential --include=python3,libstdc++6,libgomp1 \
    --aptopt='Acquire::Check-Valid-Until "false"' bookworm - | docker import - "$base" >/dev/null
fi
python=${PYTHON:-python3}
"$python" -m pip --version >/dev/null 2>&1 || { echo "pip is needed on this machine to download the wheels (apt-get install python3-pip)" >&2; exit 1; }
mkdir -p "$wheels"
requirements="$here/$name/requirements.txt"
# Wheels for the image's CPython 3.11 on glibc 2.36; the two packages PyPI has only as
# sources become wheels here (the image has no compiler).
"$python" -m pip download --quiet --disable-pip-version-check --no-deps --dest "$wheels" \
  --only-binary=:all: --python-version 3.11 --implementation cp --platform manylinux2014_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 --platform any \
  -r <(grep -v -e '^sagemaker-training' -e '^inotify_simple' "$requirements")
for source in $(grep -e '^sagemaker-training' -e '^inotify_simple' "$requirements" || true); do
  wheel_name=$(echo "${source%%==*}" | tr - _)
  ls "$wheels"/"${wheel_name}"-"${source##*==}"-*.whl >/dev/null 2>&1 || {
    "$python" -m pip download --quiet --disable-pip-version-check --no-deps --no-binary=:all: --dest "$wheels" "$source"
    "$python" -m pip wheel --quiet --disable-pip-version-check --no-deps --wheel-dir "$wheels" \
      "$wheels"/"${wheel_name}"-"${source##*==}".tar.gz
  }
done
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
mkdir "$ctx/wheels"
# Only the pinned wheels go into the image (the folder may hold other versions).
while read -r pin; do
  [ -z "$pin" ] && continue
  # A wheel's file name spells the project with any of - _ . and either case.
  pattern=$(echo "${pin%%==*}" | sed 's/[-_.]/[-_.]/g')
  version=${pin##*==}
  found=$(find "$wheels" -maxdepth 1 -iname "${pattern}-${version}-*.whl" | head -1)
  [ -n "$found" ] || { echo "no wheel of $pin in $wheels" >&2; exit 1; }
  cp "$found" "$ctx/wheels/"
done < <(grep -v -e '^#' -e '^$' "$requirements" | sed 's/[[:space:]]*#.*//')
cp "$requirements" "$ctx/requirements.txt"
cp -r "$here/$name/files" "$ctx/files"
pip_wheel=$(cd "$ctx/wheels" && ls pip-*.whl)
# The wheels are installed in a first stage, so the image holds what they install, not them.
cat > "$ctx/Dockerfile" <<DOCKERFILE
FROM $base AS install
COPY wheels /tmp/wheels
COPY requirements.txt /tmp/requirements.txt
RUN python3 /tmp/wheels/$pip_wheel/pip install --quiet --no-index --find-links /tmp/wheels \\
      --break-system-packages --root-user-action=ignore --no-warn-script-location -r /tmp/requirements.txt
FROM $base
COPY --from=install /usr/local /usr/local
COPY files /
ENV PATH=/opt/smlocal/bin:/usr/local/bin:/usr/bin:/bin PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \\
    PYTHONPATH=/opt/smlocal/lib SMLOCAL_STANDS_FOR=$stands_for
LABEL smlocal.stand-in-for=$stands_for smlocal.stand-in.digest=$digest
DOCKERFILE
DOCKER_BUILDKIT=0 docker build --quiet -t "$image" "$ctx" >/dev/null 2>&1 ||
  DOCKER_BUILDKIT=0 docker build -t "$image" "$ctx"
size=$(docker image inspect -f '{{.Size}}' "$image")
echo "built $image (stand-in for $stands_for) in $(( $(date +%s) - started )) s, $(( size / 1048576 )) MiB"
