"""The SageMaker Python SDK's local mode on the same jobs as benches/smlocal.rs, for comparison.

    python sdk_local_mode.py trivial IMAGE DATA_DIR OUTPUT_DIR
    python sdk_local_mode.py staging IMAGE S3_URI OUTPUT_DIR
    python sdk_local_mode.py transform IMAGE MODEL_TAR_GZ INPUT_DIR OUTPUT_DIR

Prints the seconds the whole job took (the caller times the whole process as well).
Needs the SageMaker SDK v2 (tests/e2e/python/requirements.txt) and docker-compose; S3 goes through the standard AWS_* variables.
"""
import sys
import time

start = time.time()
import sagemaker.telemetry.telemetry_logging as telemetry  # noqa: E402
from sagemaker.estimator import Estimator  # noqa: E402
from sagemaker.local import LocalSession  # noqa: E402

# The SDK reports usage to an AWS endpoint; nothing may leave this machine.
telemetry._send_telemetry_request = lambda *args, **kwargs: None

case, image, source, output = sys.argv[1:5]
session = LocalSession()
session.config = {"local": {"local_code": True}}
if case == "transform":
    from sagemaker.model import Model  # noqa: E402
    from sagemaker.transformer import Transformer  # noqa: E402

    model_tar, input_dir, output = sys.argv[3], sys.argv[4], sys.argv[5]
    model = Model(image_uri=image, model_data=f"file://{model_tar}", role="arn:aws:iam::123456789012:role/Bench",
                  sagemaker_session=session)
    model._create_sagemaker_model(instance_type="local")
    transformer = Transformer(model_name=model.name, instance_count=1, instance_type="local",
                              strategy="MultiRecord", assemble_with="Line", max_payload=1,
                              output_path=f"file://{output}", sagemaker_session=session)
    transformer.transform(f"file://{input_dir}", content_type="text/csv", split_type="Line", wait=True, logs=False)
    print(f"{time.time() - start:.3f}")
    sys.exit(0)
estimator = Estimator(
    image_uri=image,
    role="arn:aws:iam::123456789012:role/Bench",
    instance_count=1,
    instance_type="local",
    output_path=f"file://{output}",
    sagemaker_session=session,
    container_entry_point=["/usr/local/bin/probe", "train"],
)
channel = f"file://{source}" if case == "trivial" else source
estimator.fit({"train": channel}, wait=True, logs="None")
print(f"{time.time() - start:.3f}")
