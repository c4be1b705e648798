"""KServe, imported once and safely: its `model_server` module parses `sys.argv` when imported (its own flags, with
prefix matching), so pvtkit's command line is hidden from it while it loads."""

from __future__ import annotations

import sys

try:
    _argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        import kserve
        import kserve.errors
        from kserve.protocol.dataplane import DataPlane
        from kserve.protocol.model_repository_extension import ModelRepositoryExtension
        from kserve.protocol.rest.v1_endpoints import register_v1_endpoints
        from kserve.protocol.rest.v2_endpoints import register_v2_endpoints
    finally:
        sys.argv = _argv
except ImportError as error:  # pragma: no cover - the message is the point
    raise ImportError(
        f"pvtkit's server needs KServe's model server ({error}); install it with: pip install \"pvtkit[serve]\""
    ) from error

__all__ = ["DataPlane", "ModelRepositoryExtension", "kserve", "register_v1_endpoints", "register_v2_endpoints"]
