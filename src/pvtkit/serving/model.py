"""One served model: a KServe `Model` whose requests (V1, V2 or a plain upload) feed a dynamic batcher.

Request flow: the protocol's body -> images decoded and preprocessed in a thread pool (off the event loop) ->
each image queued in the model's `DynamicBatcher` -> one forward pass per gathered batch in `inference_mode` ->
per-image answers formatted for the protocol that asked. The answers are the pipeline's (`pvtkit classify` /
`pvtkit segment`), computed from the same logits.

Inputs, by protocol:

- V1 (TF Serving REST, Vertex AI): `{"instances": [{"b64": "<base64 image>"}, ...]}` (also `{"image_bytes":
  {"b64": ...}}`, a bare base64 string, or a `(3, H, W)` nested list of preprocessed pixels), optional
  `"parameters": {"top_k": 3}`. Answer: `{"predictions": [...]}`, one entry per instance.
- V2 (Open Inference Protocol): one input, either `BYTES` of shape `[N]` / `[N, 1]` (encoded images) or `FP32`
  `[N, 3, H, W]` (preprocessed pixels). Outputs `logits`, `probabilities` (`[N, classes]`), `labels` (`BYTES`) and
  `scores` (`[N, top_k]`); Triton's classification extension (an output's `classification: k` parameter) gives
  `"score:index:label"` strings. A segmentation model answers `segmentation` (`INT64 [N, H, W]` class maps), a
  depth model `predicted_depth` (`FP32 [N, H, W]` depth at the images' size).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import json
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .. import tasks
from ..pipelines import describe_error, pipeline
from ..processing import ImageLoadError, load_image
from . import _kserve
from .batching import DeadlineExceeded, DynamicBatcher, Overloaded
from .metrics import METRICS

kserve = _kserve.kserve
InvalidInput = kserve.errors.InvalidInput
InferRequest, InferResponse, InferOutput = kserve.InferRequest, kserve.InferResponse, kserve.InferOutput


@dataclass
class Job:
    """One request on its way through preprocess -> predict -> postprocess."""

    protocol: str  # "v1", "v2" or "upload"
    pixels: list[np.ndarray]  # per image (3, H, W) float32
    sizes: list[tuple[int, int]]  # per image (height, width) before resizing
    top_k: int
    request: Any = None  # the V2 InferRequest
    results: list[Any] = field(default_factory=list)  # per image: the model's output (logits)
    answers: list[Any] = field(default_factory=list)  # per image: the task's answer (logits; a class map at its size)


class ImageModel(kserve.Model):
    """A pvtkit classification, segmentation or depth checkpoint served through KServe's data plane.

    Args:
        name: The name in the URL (`/v2/models/{name}/infer`).
        source: A Hub id, directory or weights file (any layout pvtkit reads), or a loaded model.
        device, dtype: Where and in which precision the model runs.
        max_batch_size, max_delay_ms, max_queue: The batcher's limits (see `DynamicBatcher`).
        timeout_s: Each request's deadline, from arrival to answer (a 504 past it).
        top_k: Labels per image unless a request asks otherwise.
        decode_threads: Threads that decode and preprocess images.
        warmup: Run the model once per batch size it will see before reporting ready.
        compile: Run the model through `pvtkit.optimize` (batch-1 graphs compile during the warm-up).
        aug: Test-time augmentation (`tta.as_augmentation`): a segmentation model averages the softmax
            probabilities of every scale and mirrored view at each image's size (`tta.merge_views`); a depth model
            takes flip alone (`tasks.depth.predict_depth`). None: one plain forward.
        hub: `revision`, `local_files_only`.
    """

    def __init__(
        self,
        name: str,
        source: Any,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        max_batch_size: int = 8,
        max_delay_ms: float = 5.0,
        max_queue: int = 256,
        timeout_s: float = 30.0,
        top_k: int = 5,
        decode_threads: int = 2,
        warmup: bool = True,
        compile: bool = False,
        aug: Any = None,
        **hub: Any,
    ) -> None:
        from ..tta import as_augmentation

        super().__init__(name)
        self.aug = as_augmentation(aug)
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        self.source, self.device, self.dtype, self.hub = source, device, dtype, hub
        self.timeout_s, self.top_k, self.warmup_enabled, self.compile = timeout_s, top_k, warmup, compile
        self.batcher = DynamicBatcher(
            self._forward,
            max_batch_size,
            max_delay_ms / 1000,
            max_queue,
            on_batch=METRICS.batch_size.labels(name).observe,
        )
        METRICS.queue_depth.labels(name).set_function(lambda: self.batcher.depth)
        self.decoder = concurrent.futures.ThreadPoolExecutor(decode_threads, thread_name_prefix=f"decode-{name}")
        self.pipe: Any = None
        self.task: Any = None  # the task spec (`pvtkit.tasks`) of the loaded model
        self.loaded = False  # weights in memory (ready: loaded and warmed up)
        self.warm_up_error: str | None = None

    # ------------------------------------------------------------------------------------------- loading

    def load(self) -> bool:
        """Load the checkpoint and its processor (raises what pvtkit's loaders raise); `warm_up` makes it ready."""
        from ..auto import checkpoint_task
        from ..modeling import PreTrainedModel

        if isinstance(self.source, PreTrainedModel):
            task = tasks.task_of(self.source)
        else:  # a checkpoint without a config, or of a class pvtkit does not know, loads as a classifier
            head = checkpoint_task(self.source, **self.hub)
            task = tasks.task_for_head(head) if head else tasks.default()
        if not task.served_outputs:
            served = ", ".join(t.title for t in tasks.tasks().values() if t.served_outputs)
            raise ValueError(f"{self.source}: pvtkit serve serves {served} models, not {task.title}")
        options = {**task.serve_options(self.top_k), **self._tta_options(task)}
        self.pipe = pipeline(task.name, model=self.source, device=self.device, dtype=self.dtype, **options, **self.hub)
        if self.compile:  # the batches a server runs vary (1 when quiet): compiled where it pays, eager elsewhere
            from ..compiling import optimize

            # One graph for every batch size above 1 (a symbolic batch): the warm-up's batch 1 and largest batch
            # compile all there is before the server reports ready.
            optimize(self.pipe.model, dynamic=True)
        self.task, self.loaded = task, True
        return True

    def _tta_options(self, task: Any) -> dict[str, Any]:
        """The pipeline options of `aug`: itself for a pipeline that takes `aug` (segmentation), `flip` for one that
        takes only that (depth); a ValueError for any other augmentation."""
        import inspect

        from ..tta import Augmentation

        if not self.aug.active:
            return {}
        accepted = inspect.signature(task.pipeline_class()).parameters
        if "aug" in accepted:
            return {"aug": self.aug}
        if "flip" in accepted and self.aug == Augmentation(flip=True):
            return {"flip": True}
        raise ValueError(
            f"{self.source}: test-time augmentation (--scales, --flip, --aligned-resize) is for segmentation models, "
            f"--flip alone also for depth models; this is a {task.title} model"
        )

    def warm_up(self) -> None:
        """One forward pass at batch 1 and at the largest batch, at the processor's size, then ready."""
        if self.warmup_enabled:
            size = self._fixed_size() or (224, 224)
            for n in sorted({1, self.batcher.max_batch_size}):
                self._forward(np.zeros((n, 3, *size), np.float32))
        self.ready = True

    def _fixed_size(self) -> tuple[int, int] | None:
        from ..processing import fixed_size

        return fixed_size(self.pipe.image_processor)

    @property
    def labels(self) -> list[str]:
        return self.pipe.labels

    # ------------------------------------------------------------------------------------------- running

    def _forward(self, pixels: np.ndarray) -> list[np.ndarray]:
        """A batch `(N, 3, H, W)` -> per image its row of the model's output (`Task.served_rows`: float32 logits,
        depth, ...), in the worker thread."""
        pipe = self.pipe
        batch = torch.from_numpy(pixels).to(pipe.device, pipe.dtype)
        with torch.inference_mode():
            if self.aug.active and hasattr(pipe, "aug"):  # per image its views' logits, merged in `_merged`
                from ..tta import view_logits

                views = [
                    (logits.cpu().numpy(), flipped) for logits, flipped in view_logits(pipe.model, batch, pipe.aug)
                ]
                return [[(logits[i : i + 1], flipped) for logits, flipped in views] for i in range(len(batch))]
            if self.aug.flip:  # depth: the mirrored image's depth averaged in, as the pipeline's
                from ..outputs import DepthEstimatorOutput
                from ..tasks.depth import predict_depth

                return self.task.served_rows(
                    DepthEstimatorOutput(predicted_depth=predict_depth(pipe.model, batch, True))
                )
            return self.task.served_rows(pipe.model(pixel_values=batch))

    def _merged(self, row: Any, size: tuple[int, int]) -> Any:
        """A row of `_forward` as `served_answer` takes it: under segmentation's test-time augmentation, the views'
        probabilities merged at the image's `size` (`tta.merge_views`), as `tta.probability_scores`."""
        if not (self.aug.active and hasattr(self.pipe, "aug")):
            return row
        from ..tta import merge_views, probability_scores

        merged = merge_views(((torch.from_numpy(logits), flipped) for logits, flipped in row), size)
        return probability_scores(merged)[0].numpy()

    async def __call__(self, body: Any, headers: dict[str, str] | None = None, verb: Any = None) -> Any:
        """KServe's preprocess -> predict -> postprocess, under the request's deadline."""
        call = super().__call__(body, headers) if verb is None else super().__call__(body, headers, verb)
        return await self._within_deadline(call)

    async def _within_deadline(self, work: Any) -> Any:
        try:
            return await asyncio.wait_for(work, self.timeout_s)
        except asyncio.TimeoutError:
            raise DeadlineExceeded(
                f"model {self.name!r}: no answer within the {self.timeout_s:g} s deadline (--timeout-s)"
            ) from None

    async def preprocess(self, payload: Any, headers: dict[str, str] | None = None) -> Job:
        if isinstance(payload, InferRequest):
            return await self._v2_job(payload)
        if isinstance(payload, (bytes, str)):  # KServe leaves a body it did not take for JSON as it came
            try:
                payload = json.loads(payload)
            except ValueError as e:
                raise InvalidInput(f"model {self.name!r}: the body is not JSON ({e})") from None
        if isinstance(payload, dict):
            return await self._v1_job(payload)
        raise InvalidInput(
            f'model {self.name!r}: expected a JSON object with "instances" (V1) or a V2 inference '
            f"request, got {type(payload).__name__}"
        )

    async def predict(self, job: Job, headers: dict[str, str] | None = None, response_headers: Any = None) -> Job:
        started = time.monotonic()
        self._check_room(len(job.pixels))
        tasks = [asyncio.ensure_future(self.batcher.submit(p)) for p in job.pixels]
        try:
            job.results = list(await asyncio.gather(*tasks))
        except ValueError as e:  # the model refused the input's shape (a size off ViT's patch grid, ...)
            raise InvalidInput(f"model {self.name!r}: {describe_error(e)}") from e
        finally:
            for task in tasks:  # one image failed (or the deadline passed): the others leave the queue unrun
                task.cancel()
        METRICS.inference_seconds.labels(self.name).observe(time.monotonic() - started)
        answers = lambda: [  # noqa: E731
            self.task.served_answer(self.pipe, self._merged(r, s), s) for r, s in zip(job.results, job.sizes)
        ]
        if self.task.answer_off_loop:  # upsampling to the images' sizes is real work: off the event loop
            job.answers = await asyncio.get_running_loop().run_in_executor(self.decoder, answers)
        else:
            job.answers = answers()
        return job

    def _check_room(self, count: int) -> None:
        """Refuse a request whose images could never fit the queue (400) or do not fit it now (503), before any
        work is spent on them."""
        if count > self.batcher.max_queue:
            raise InvalidInput(
                f"model {self.name!r}: the request has {count} images; at most {self.batcher.max_queue}"
                " (--max-queue) per request"
            )
        if self.batcher.depth + count > self.batcher.max_queue:
            raise Overloaded(self.batcher.depth, retry_after_s=1.0)

    async def postprocess(self, job: Job, headers: dict[str, str] | None = None, response_headers: Any = None) -> Any:
        if job.protocol == "v2":
            return self._v2_response(job)
        if job.protocol == "v1":
            return {"predictions": [self.record(job, i) for i in range(len(job.results))]}
        return job

    async def run_images(self, images: list[tuple[str, bytes]], top_k: int | None = None) -> Job:
        """The plain `/predict` upload path: named encoded images -> a finished job (answers in `record`)."""
        job = Job("upload", [], [], self._top_k(top_k, "top_k"))

        async def work() -> Job:
            await self._decode_into(job, [data for _, data in images], [name for name, _ in images])
            return await self.predict(job)

        return await self._within_deadline(work())

    # ------------------------------------------------------------------------------------------- decoding

    def _top_k(self, value: Any, where: str) -> int:
        if value is None:
            return self.top_k
        try:
            k = int(value)
        except (TypeError, ValueError):
            raise InvalidInput(f"{where}: expected a positive integer, got {value!r}") from None
        if k < 1 or isinstance(value, bool):
            raise InvalidInput(f"{where}: expected a positive integer, got {value!r}")
        return min(k, len(self.labels))

    def _decode_one(self, data: bytes, name: str) -> tuple[np.ndarray, tuple[int, int]]:
        try:
            image = load_image(data, name=name)
        except ImageLoadError as e:
            raise InvalidInput(str(e)) from e
        size = (image.height, image.width)
        pixels = self.pipe.image_processor(image, return_tensors="np")["pixel_values"][0]
        return pixels.astype(np.float32, copy=False), size

    async def _decode_into(self, job: Job, blobs: list[bytes], names: list[str]) -> None:
        if not blobs:
            raise InvalidInput(f"model {self.name!r}: the request has no images")
        self._check_room(len(blobs))
        loop = asyncio.get_running_loop()
        decoded = await asyncio.gather(
            *(loop.run_in_executor(self.decoder, self._decode_one, data, name) for data, name in zip(blobs, names))
        )
        job.pixels = [p for p, _ in decoded]
        job.sizes = [s for _, s in decoded]

    def _pixels(self, value: Any, where: str) -> np.ndarray:
        """A preprocessed `(3, H, W)` image, checked."""
        try:
            array = np.asarray(value, dtype=np.float32)
        except (TypeError, ValueError) as e:
            raise InvalidInput(f"{where}: expected numbers (preprocessed pixels), got {describe_error(e)}") from None
        channels = getattr(self.pipe.model.config, "num_channels", 3)
        if array.ndim != 3 or array.shape[0] != channels:
            raise InvalidInput(
                f"{where}: expected preprocessed pixels of shape ({channels}, height, width), got "
                f"shape {tuple(array.shape)}"
            )
        if array.shape[1] < 1 or array.shape[2] < 1 or not np.isfinite(array).all():
            raise InvalidInput(f"{where}: expected a non-empty, finite ({channels}, H, W) array")
        return array

    async def _v1_job(self, body: dict[str, Any]) -> Job:
        if "instances" not in body and "inputs" not in body:
            raise InvalidInput(
                f'model {self.name!r}: a V1 request is {{"instances": [...]}}; got the keys {sorted(body)}'
            )
        instances = body.get("instances", body.get("inputs"))
        if not isinstance(instances, list) or not instances:
            raise InvalidInput('"instances": expected a non-empty list')
        parameters = body.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise InvalidInput('"parameters": expected an object')
        job = Job("v1", [], [], self._top_k(parameters.get("top_k"), "parameters.top_k"))
        blobs, names, tensors = [], [], []
        for i, instance in enumerate(instances):
            where = f"instances[{i}]"
            encoded = _b64_of(instance)
            if encoded is not None:
                try:
                    blobs.append(base64.b64decode(encoded, validate=True))
                except (binascii.Error, ValueError):
                    raise InvalidInput(f'{where}: "b64" is not valid base64') from None
                names.append(where)
            elif isinstance(instance, list):
                tensors.append(self._pixels(instance, where))
            else:
                raise InvalidInput(
                    f'{where}: expected {{"b64": "<base64 image>"}} or a (3, H, W) list of '
                    f"pixels, got {type(instance).__name__}"
                )
        if blobs and tensors:
            raise InvalidInput('"instances": mix of encoded images and pixel arrays; send one kind per request')
        if blobs:
            await self._decode_into(job, blobs, names)
        else:
            job.pixels, job.sizes = tensors, [tuple(t.shape[1:]) for t in tensors]
        return job

    async def _v2_job(self, request: Any) -> Job:
        if len(request.inputs) != 1:
            raise InvalidInput(
                f"model {self.name!r} takes one input (encoded images as BYTES, or FP32 pixels "
                f"[N, 3, H, W]); the request has {len(request.inputs)}"
            )
        tensor = request.inputs[0]
        parameters = request.parameters or {}
        job = Job("v2", [], [], self._top_k(_parameter(parameters.get("top_k")), "parameters.top_k"), request)
        where = f"input {tensor.name!r}"
        try:
            array = tensor.as_numpy()
        except Exception as e:  # KServe's decoder: data that does not fit the declared shape or datatype
            raise InvalidInput(f"{where}: {describe_error(e)}") from None
        if tensor.datatype == "BYTES":
            if array.ndim == 2 and array.shape[1] == 1:
                array = array[:, 0]
            if array.ndim != 1:
                raise InvalidInput(
                    f"{where}: BYTES of shape [N] or [N, 1] (one encoded image each), got shape {list(array.shape)}"
                )
            if tensor._raw_data is None and not request.from_grpc:  # JSON has no raw bytes: base64 text
                blobs = []
                for i, text in enumerate(array):
                    try:
                        blobs.append(base64.b64decode(text, validate=True))
                    except (binascii.Error, ValueError, TypeError):
                        raise InvalidInput(
                            f"{where}[{i}]: in JSON, BYTES images are base64 text; this is not "
                            "valid base64 (or use the binary-data extension)"
                        ) from None
            else:
                blobs = [bytes(b) for b in array]
            await self._decode_into(job, blobs, [f"{where}[{i}]" for i in range(len(blobs))])
        elif tensor.datatype in ("FP32", "FP16", "FP64"):
            if array.ndim == 3:
                array = array[None]
            if array.ndim != 4:
                raise InvalidInput(f"{where}: pixels of shape [N, 3, H, W], got shape {list(array.shape)}")
            job.pixels = [self._pixels(a, f"{where}[{i}]") for i, a in enumerate(array)]
            job.sizes = [tuple(a.shape[1:]) for a in job.pixels]
        else:
            raise InvalidInput(
                f"{where}: datatype {tensor.datatype}; expected BYTES (encoded images) or FP32 (preprocessed pixels)"
            )
        if self.task.answers_at_input_size and len(set(job.sizes)) > 1:
            raise InvalidInput(
                f"model {self.name!r} answers at each image's size and the images have different sizes "
                f"({', '.join(f'{h}x{w}' for h, w in dict.fromkeys(job.sizes))}), so their "
                f"{' and '.join(self.task.served_outputs)} maps do not stack into one tensor; send them in separate "
                "requests"
            )
        for output in request.request_outputs or []:
            if output.name not in self.output_names:
                raise InvalidInput(
                    f"model {self.name!r} has no output {output.name!r}; it has {', '.join(self.output_names)}"
                )
        return job

    # ------------------------------------------------------------------------------------------- answers

    @property
    def output_names(self) -> tuple[str, ...]:
        return self.task.served_outputs

    def record(self, job: Job, index: int) -> Any:
        """Image `index`'s answer as the CLI writes it (the task's record: top-k `{"label", "score"}` records, or the
        size and per-class areas)."""
        return self.task.served_record(self.pipe, job.answers[index], job.top_k)

    def _v2_response(self, job: Job) -> Any:
        request = job.request
        wanted = request.request_outputs or []
        asked = {o.name: _parameter((o.parameters or {}).get("classification")) for o in wanted}
        if not wanted:
            asked = dict.fromkeys(self.task.served_default_outputs)
        outputs = [
            _output(name, datatype, data)
            for name, datatype, data in self.task.served_v2_outputs(
                self.pipe, job.answers, asked, job.top_k, self._top_k
            )
        ]
        return InferResponse(
            response_id=request.id or str(uuid.uuid4()),
            model_name=self.name,
            infer_outputs=outputs,
            requested_outputs=wanted or None,
            use_binary_outputs=request.use_binary_outputs,
        )

    # ------------------------------------------------------------------------------------------- metadata

    def get_input_types(self) -> list[dict[str, Any]]:
        size = self._fixed_size() if self.pipe is not None else None
        height, width = size or (-1, -1)
        return [
            {"name": "image", "datatype": "BYTES", "shape": [-1]},
            {"name": "pixel_values", "datatype": "FP32", "shape": [-1, 3, height, width]},
        ]

    def get_output_types(self) -> list[dict[str, Any]]:
        return self.task.served_output_types(len(self.labels) if self.pipe is not None else -1)

    def stop(self) -> None:
        self.ready = False
        self.decoder.shutdown(wait=False, cancel_futures=True)


def _output(name: str, datatype: str, data: np.ndarray) -> Any:
    """A V2 output holding its data raw, which both of KServe's encoders take (REST re-encodes it as JSON when the
    client asked for no binary data; 0.21's gRPC encoder fails on an output given as an array)."""
    output = InferOutput(name, list(data.shape), datatype)
    output.set_data_from_numpy(data, binary_data=True)
    return output


def _b64_of(instance: Any) -> str | None:
    """The base64 text of a V1 instance: `{"b64": s}`, `{"<name>": {"b64": s}}` (Vertex AI's `image_bytes`), or a
    bare string; None for anything else."""
    if isinstance(instance, str):
        return instance
    if isinstance(instance, dict):
        if isinstance(instance.get("b64"), str):
            return instance["b64"]
        inner = [v["b64"] for v in instance.values() if isinstance(v, dict) and isinstance(v.get("b64"), str)]
        if len(inner) == 1:
            return inner[0]
    return None


def _parameter(value: Any) -> Any:
    """A V2 parameter's value (KServe passes REST parameters as plain values, gRPC ones as InferParameter)."""
    for attr in ("int64_param", "string_param", "bool_param"):
        if hasattr(value, attr) and value.HasField(attr):
            return getattr(value, attr)
    return value


def default_name(source: Any) -> str:
    """A URL-safe model name from a Hub id or path: `OpenGVLab/pvt_v2_b0` -> `pvt_v2_b0`."""
    text = os.path.basename(os.path.normpath(str(source))) or str(source)
    text = os.path.splitext(text)[0] if os.path.isfile(str(source)) else text
    cleaned = "".join(c if c.isalnum() or c in "-_." else "-" for c in text).strip("-.")
    return cleaned or "model"
