#!/usr/bin/env bash
# Builds the sample algorithm images with no registry: static Rust binaries in FROM-scratch
# images (DESIGN §10). Idempotent and quick when nothing changed.
#   smlocal/linear-regression:latest  the sample training algorithm
#   smlocal/probe:latest              a scriptable container the tests use to exercise the contract
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
target=x86_64-unknown-linux-gnu
cd "$here"
RUSTFLAGS="-C target-feature=+crt-static" cargo build --quiet --release --locked --target "$target"
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
for bin in linear-regression probe; do
  mkdir -p "$ctx/$bin"
  cp "target/$target/release/$bin" "$ctx/$bin/$bin"
  # /tmp is part of the contract (algorithms may write there); a scratch image lacks it.
  mkdir -p "$ctx/$bin/tmp"
  cat > "$ctx/$bin/Dockerfile" <<DOCKERFILE
FROM scratch
COPY $bin /usr/local/bin/$bin
COPY tmp /tmp
ENTRYPOINT ["/usr/local/bin/$bin"]
DOCKERFILE
  DOCKER_BUILDKIT=0 docker build --quiet --label smlocal.sample=true -t "smlocal/$bin:latest" "$ctx/$bin" >/dev/null 2>&1 ||
    DOCKER_BUILDKIT=0 docker build -t "smlocal/$bin:latest" "$ctx/$bin"
  echo "built smlocal/$bin:latest"
done
