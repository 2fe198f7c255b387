#!/usr/bin/env bash
# Runs the bundled sample job end to end: builds the sample algorithm image, trains it on
# fixtures/linear with smlocal, and shows the model.tar.gz it produced.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
./sample-algorithms/build-images.sh
out="$root/quickstart-output"
request=$(mktemp --suffix=.json)
trap 'rm -f "$request"' EXIT
sed "s#FIXTURES#$root/fixtures#g; s#OUTPUT#$out#g" fixtures/quickstart.json > "$request"
# --unique-name: every run is a new job, as with the SageMaker SDK's generated names.
cargo run --quiet --release -- train --unique-name "$request"
model=$(ls -t "$out"/*/output/model.tar.gz | head -1)
echo
echo "model.tar.gz: $model"
tar -xzOf "$model" model.json
