#!/usr/bin/env bash
# Runs the bundled sample end to end: builds the sample algorithm image, trains it on
# fixtures/linear with smlocal, shows the model.tar.gz it produced, then deploys that model
# as an endpoint, sends it two rows and deletes the endpoint.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
./sample-algorithms/build-images.sh
cargo build --quiet --release
smlocal="$root/target/release/smlocal"
out="$root/quickstart-output"
request=$(mktemp --suffix=.json)
trap 'rm -f "$request"' EXIT
sed "s#FIXTURES#$root/fixtures#g; s#OUTPUT#$out#g" fixtures/quickstart.json > "$request"
# --unique-name: every run is a new job, as with the SageMaker SDK's generated names.
"$smlocal" train --unique-name "$request"
model=$(ls -t "$out"/*/output/model.tar.gz | head -1)
echo
echo "model.tar.gz: $model"
tar -xzOf "$model" model.json
echo
# The same image serves what it trained (`IMAGE serve`, /ping, /invocations on 8080).
endpoint=$("$smlocal" deploy "$model" --image smlocal/linear-regression:latest --instance-type ml.c5.large)
echo "predictions of $endpoint for the rows 1,2 and -1,0.5:"
printf '1,2\n-1,0.5\n' | "$smlocal" invoke "$endpoint" --content-type text/csv
"$smlocal" delete-endpoint "$endpoint"
