"""A user's training script, as script mode runs it: hyperparameters as arguments, the
model written under SM_MODEL_DIR."""
import argparse
import json
import os

parser = argparse.ArgumentParser()
parser.add_argument("--scale", type=float, default=1.0)
args = parser.parse_args()
rows = open(os.path.join(os.environ["SM_CHANNEL_TRAIN"], "a.csv")).read().split()
total = sum(float(r) for r in rows) * args.scale
print(f"script mode: {len(rows)} rows, scaled total={total}")
with open(os.path.join(os.environ["SM_MODEL_DIR"], "model.json"), "w") as f:
    json.dump({"total": total, "helper": open("helper.txt").read().strip()}, f)
