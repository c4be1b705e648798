"""`pvtkit serve`: an inference server speaking KServe's V1 and V2 protocols, with dynamic batching."""

from __future__ import annotations

import argparse
from typing import Any

from ._common import (
    HelpFormatter,
    UsageError,
    add_compile_argument,
    add_device_arguments,
    hub_kwargs,
    resolve_device,
    resolve_dtype,
)


def parse_model(text: str) -> tuple[str | None, str]:
    """`SOURCE` or `NAME=SOURCE` (a Hub id, directory or weights file)."""
    name, sep, source = text.partition("=")
    if sep and name and "/" not in name and source:
        return name, source
    return None, text


def run(args: argparse.Namespace) -> int:
    try:
        from ..serving import ImageModel, build_app, configure_logging, default_name, run_server
    except ImportError as e:
        raise UsageError(str(e)) from None
    import torch

    for option, value, low in [
        ("--max-batch-size", args.max_batch_size, 1),
        ("--max-queue", args.max_queue, 1),
        ("--decode-threads", args.decode_threads, 1),
        ("--top-k", args.top_k, 1),
    ]:
        if value < low:
            raise UsageError(f"{option} must be at least {low}, got {value}")
    for option, value in [("--max-delay-ms", args.max_delay_ms), ("--max-body-mb", args.max_body_mb)]:
        if value < 0:
            raise UsageError(f"{option} must be 0 or more, got {value}")
    if args.grace_s < 0:
        raise UsageError(f"--grace-s must be 0 or more, got {args.grace_s}")
    if args.timeout_s <= 0:
        raise UsageError(f"--timeout-s must be positive, got {args.timeout_s}")
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be 0..65535, got {args.port}")
    if args.threads is not None:
        if args.threads < 1:
            raise UsageError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    device, dtype = resolve_device(args.device), resolve_dtype(args.dtype)
    from .segment import augmentation

    aug = augmentation(args)
    models = []
    for text in args.model:
        name, source = parse_model(text)
        model = ImageModel(
            name or default_name(source),
            source,
            device=device,
            dtype=dtype,
            max_batch_size=args.max_batch_size,
            max_delay_ms=args.max_delay_ms,
            max_queue=args.max_queue,
            timeout_s=args.timeout_s,
            top_k=args.top_k,
            decode_threads=args.decode_threads,
            warmup=not args.no_warmup,
            compile=args.compile,
            aug=aug,
            **hub_kwargs(args),
        )
        try:
            model.load()
        except (OSError, ValueError) as e:
            raise UsageError(f"cannot load model {source!r}: {e}") from e
        models.append(model)
    try:
        grpc = None if args.grpc_port is None else f"{args.host}:{args.grpc_port}"
        app = build_app(models, max_body_mb=args.max_body_mb, grpc_address=grpc, grace_s=args.grace_s)
    except ValueError as e:
        raise UsageError(str(e)) from e
    configure_logging(args.log_format, args.log_level)  # from here on the process is the server's
    run_server(app, host=args.host, port=args.port, grace_s=args.grace_s)
    return 0


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "serve",
        help="an inference server (KServe V1/V2 protocols, dynamic batching, metrics)",
        description="Serve classification and semantic-segmentation checkpoints over HTTP, with KServe's model "
        "server protocols so existing clients work: the Open Inference Protocol (V2: `POST /v2/models/NAME/infer`, "
        "Triton's tritonclient works, binary data included; over gRPC too with --grpc-port), TF Serving's REST API (V1: `POST "
        '/v1/models/NAME:predict` with {"instances": [{"b64": ...}]}), a plain `POST /predict` image upload '
        "(curl -F file=@cat.jpg) answering like `pvtkit classify --format json`, and a page at / to drop an image "
        "on. Concurrent requests are batched into one forward pass (up to --max-batch-size images, waiting at most "
        "--max-delay-ms). Beyond --max-queue waiting images requests get 503 with Retry-After; past --timeout-s, "
        "504. Health: GET /v2/health/live, /v2/health/ready (ready once every model is loaded and warmed up); "
        "Prometheus metrics at GET /metrics; one JSON log line per request on stderr. SIGTERM stops accepting, "
        'finishes the requests in flight and exits 0. Needs `pip install "pvtkit[serve]"`.',
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--model",
        "-m",
        action="append",
        required=True,
        metavar="[NAME=]SOURCE",
        help="a Hub id, directory or weights file; repeat to serve several. NAME (default: the "
        "source's last path part) is the model's name in the URLs",
    )
    parser.add_argument("--revision", help="Hub branch, tag or commit")
    parser.add_argument("--offline", action="store_true", help="never touch the network; use the Hub cache only")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0: all, as in a container)")
    parser.add_argument("--port", type=int, default=8080, help="HTTP port (0: any free port)")
    parser.add_argument(
        "--grpc-port",
        type=int,
        help="also serve the V2 protocol over gRPC on this port (KServe's "
        "gRPC service; tritonclient.grpc works); default: off",
    )
    parser.add_argument("--max-batch-size", type=int, default=16, help="most images per forward pass (1: no batching)")
    parser.add_argument(
        "--max-delay-ms",
        type=float,
        default=5.0,
        help="how long the oldest waiting image waits for others to join its batch",
    )
    parser.add_argument("--max-queue", type=int, default=256, help="most images waiting; beyond it, 503")
    parser.add_argument("--timeout-s", type=float, default=30.0, help="each request's deadline; past it, 504")
    parser.add_argument("--max-body-mb", type=float, default=20.0, help="largest request body; beyond it, 413")
    parser.add_argument("--top-k", type=int, default=5, help="labels per image unless the request asks otherwise")
    parser.add_argument("--decode-threads", type=int, default=2, help="threads decoding and preprocessing images")
    parser.add_argument("--threads", type=int, help="CPU threads for the model (default: torch's choice)")
    parser.add_argument(
        "--scales",
        metavar="R,R,...",
        help="segmentation models, test-time augmentation: also run each image resized by these ratios of the "
        "processor's size and answer the argmax of the softmax probabilities averaged at the image's size "
        "(mmsegmentation's ratios: 0.5,0.75,1,1.25,1.5,1.75); one forward pass per ratio",
    )
    parser.add_argument(
        "--flip",
        action="store_true",
        help="test-time augmentation: also run every image mirrored and average its answer, mirrored back "
        "(segmentation: probabilities at every --scales; depth: GLPN's flip); twice the forward passes",
    )
    parser.add_argument(
        "--aligned-resize",
        action="store_true",
        help="segmentation models: round each view's sides up to a multiple of 32 (SegFormer's evaluation resize)",
    )
    add_device_arguments(parser)
    add_compile_argument(parser, batch_flag="--max-batch-size")
    parser.add_argument("--grace-s", type=float, default=30.0, help="on SIGTERM, how long in-flight requests may take")
    parser.add_argument("--no-warmup", action="store_true", help="ready at once, without the warm-up forward passes")
    parser.add_argument("--log-format", choices=["json", "text"], default="json", help="log lines on stderr")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info")
    parser.set_defaults(run=run)
