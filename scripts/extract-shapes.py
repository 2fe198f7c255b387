#!/usr/bin/env python3
"""Writes src/spec/shapes.json: the operations smlocal serves and every shape reachable from
them, from botocore's own SageMaker model with the documentation stripped.
  python3 scripts/extract-shapes.py   (needs botocore installed; the source version is recorded)
"""
import gzip, json, os, botocore

OPERATIONS = [
    "CreateTrainingJob", "DescribeTrainingJob", "ListTrainingJobs", "StopTrainingJob",
    "DeleteTrainingJob", "UpdateTrainingJob",
    "CreateModel", "DescribeModel", "ListModels", "DeleteModel",
    "CreateEndpointConfig", "DescribeEndpointConfig", "ListEndpointConfigs", "DeleteEndpointConfig",
    "CreateEndpoint", "DescribeEndpoint", "ListEndpoints", "UpdateEndpoint", "DeleteEndpoint",
    "CreateTransformJob", "DescribeTransformJob", "ListTransformJobs", "StopTransformJob",
    "CreateHyperParameterTuningJob", "DescribeHyperParameterTuningJob",
    "ListHyperParameterTuningJobs", "ListTrainingJobsForHyperParameterTuningJob",
    "StopHyperParameterTuningJob",
]
rel = "botocore/data/sagemaker/2017-07-24/service-2.json.gz"
path = os.path.join(os.path.dirname(os.path.dirname(botocore.__file__)), rel)
model = json.load(gzip.open(path))

def strip(value):
    if isinstance(value, dict):
        return {k: strip(v) for k, v in value.items() if k != "documentation"}
    if isinstance(value, list):
        return [strip(v) for v in value]
    return value

shapes, todo = {}, []
ops = {}
for name in OPERATIONS:
    op = strip(model["operations"][name])
    ops[name] = op
    for part in ("input", "output"):
        if part in op:
            todo.append(op[part]["shape"])
    todo += [e["shape"] for e in op.get("errors", [])]
while todo:
    name = todo.pop()
    if name in shapes:
        continue
    shape = strip(model["shapes"][name])
    shapes[name] = shape
    for key in ("member", "key", "value"):
        if key in shape:
            todo.append(shape[key]["shape"])
    for member in shape.get("members", {}).values():
        todo.append(member["shape"])

out = {
    "source": f"botocore {botocore.__version__} {rel} (documentation stripped)",
    "metadata": model["metadata"],
    "operations": ops,
    "shapes": dict(sorted(shapes.items())),
}
target = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src", "spec", "shapes.json")
with open(target, "w") as f:
    json.dump(out, f, indent=1)
    f.write("\n")
print(f"{len(ops)} operations, {len(shapes)} shapes -> src/spec/shapes.json")
