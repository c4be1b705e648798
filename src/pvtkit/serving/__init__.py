"""`pvtkit serve`: PVTv2, ViT and SegFormer checkpoints behind KServe's model server protocols.

Needs the extra: `pip install "pvtkit[serve]"` (KServe's Python model server: FastAPI, uvicorn, Prometheus).

```python
from pvtkit.serving import ImageModel, build_app, run_server

model = ImageModel("pvt_v2_b0", "OpenGVLab/pvt_v2_b0", max_batch_size=16)
model.load()
run_server(build_app([model]), host="127.0.0.1", port=8080)
```

Routes: `POST /v2/models/{name}/infer` (Open Inference Protocol, with Triton's binary-data and classification
extensions), `POST /v1/models/{name}:predict` (TF Serving / Vertex AI `{"instances": [{"b64": ...}]}`),
`POST /predict` (an image upload -> `pvtkit classify --format json`'s record), `GET /` (a page to drop an image on),
`GET /v2/health/live|ready`, `GET /v2/models/{name}[/ready]`, `GET /metrics` (Prometheus).
"""

from ._kserve import kserve  # noqa: F401  (fails early, with the install line, when the extra is missing)
from .app import build_app, configure_logging, make_server, run_server
from .batching import DeadlineExceeded, DynamicBatcher, Overloaded
from .model import ImageModel, default_name

__all__ = [
    "DeadlineExceeded",
    "DynamicBatcher",
    "ImageModel",
    "Overloaded",
    "build_app",
    "configure_logging",
    "default_name",
    "make_server",
    "run_server",
]
