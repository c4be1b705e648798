"""The layout the code promises (README "Layout"): everything about a family lives in its folder under `models/`,
no import runs up the layers, and the CPU fast paths are decided in `cpu_kernels` alone. Read from the syntax trees
of the package's own files."""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest

import pvtkit
from pvtkit.models import family as registry

SRC = Path(pvtkit.__file__).parent
# `models/` is where families live, and `keras/` where the Keras versions of some live; the public API
# (`pvtkit/__init__.py`) names their classes for users.
OUTSIDE_MODELS = sorted(
    p for p in SRC.rglob("*.py") if p.relative_to(SRC).parts[0] not in ("models", "keras") and p != SRC / "__init__.py"
)


# The modules of a family's package (`models/<family>/`).
FAMILY_PARTS = ("configuration", "conversion", "modeling", "processing")


def family_references(path: Path, root: Path = SRC) -> list[str]:
    """`file:line what` for every place that names a family: its model_type as a string, one of its classes, or an
    import of its module."""
    model_types = set(registry.families())
    modules = [
        importlib.import_module(f"pvtkit.models.{name}.{part}")
        for name in registry.FAMILY_MODULES
        for part in FAMILY_PARTS
    ]
    class_names = {
        name for m in modules for name, cls in inspect.getmembers(m, inspect.isclass) if cls.__module__ == m.__name__
    }
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Constant) and node.value in model_types:
            found.append((node.lineno, repr(node.value)))
        elif isinstance(node, ast.Name) and node.id in class_names:
            found.append((node.lineno, node.id))
        elif isinstance(node, ast.Attribute) and node.attr in class_names:
            found.append((node.lineno, node.attr))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            imported = [a.name for a in node.names] if isinstance(node, ast.ImportFrom) else []
            if any(part in registry.FAMILY_MODULES for m in modules for part in m.split(".")) or any(
                m.endswith("models") and name in registry.FAMILY_MODULES for m in modules for name in imported
            ):
                level = "." * getattr(node, "level", 0)
                found.append((node.lineno, f"import {level}{modules[0]}"))
    return [f"{path.relative_to(root)}:{line} {what}" for line, what in sorted(set(found))]


def test_the_check_finds_family_knowledge(tmp_path):
    """The check is not vacuous: it finds the branches part 9 removed, and the families' names where they live.
    (The public API, `__init__.py`, names the families' classes in its lazy table, as strings.)"""
    (tmp_path / "old.py").write_text(
        "from .models.pvt_v2 import PvtV2Backbone\n"
        "if model.config.model_type == 'vit':\n    pass\n"
        "elif isinstance(model, PvtV2Backbone):\n    pass\n"
    )
    hits = [h.split(" ", 1)[1] for h in family_references(tmp_path / "old.py", root=tmp_path)]
    assert hits == ["import .models.pvt_v2", "'vit'", "PvtV2Backbone"]
    assert any("'pvt_v2'" in hit for hit in family_references(SRC / "models" / "pvt_v2" / "modeling.py"))
    assert any("'glpn'" in hit for hit in family_references(SRC / "models" / "glpn" / "modeling.py"))


@pytest.mark.parametrize("path", OUTSIDE_MODELS, ids=lambda p: str(p.relative_to(SRC)))
def test_no_family_knowledge_outside_models(path):
    """auto, convert, export, pipelines, training, analysis and the commands read the family specs; none names a
    family (no `model_type == "vit"`, no `isinstance(model, PvtV2...)`, no import of a family module)."""
    assert family_references(path) == []


# What modules under `models/` may import from the rest of pvtkit: the layers below the families. These import
# nothing from `models/` (nor anything above them), so no import runs up the layers and there is no cycle through
# a family; `hub` is below too (`modeling` reads checkpoints through it).
BELOW_MODELS = (
    "config",
    "outputs",
    "modeling",
    "convert",
    "layers",
    "losses",
    "boxes",
    "cpu_kernels",
    "_files",
    "_lazy",
    "processing",
    "dtypes",
)
LOWER_LAYER = (*BELOW_MODELS, "hub")


def imported_modules(path: Path, root: Path = SRC) -> list[tuple[int, str]]:
    """`(line, absolute module)` for every pvtkit module `path` imports, at the top or inside a function (`from ..
    import convert` imports `pvtkit.convert`; `from ..convert import Layout`, `pvtkit.convert`)."""
    package = [root.name, *path.relative_to(root).parent.parts]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            if node.module:
                found.append((node.lineno, ".".join([*base, node.module])))
            else:  # `from .. import convert`: submodules (or names) of the package
                found += [(node.lineno, ".".join([*base, a.name])) for a in node.names]
    return [(line, m) for line, m in found if m == root.name or m.startswith(root.name + ".")]


def upward_imports(root: Path = SRC) -> list[str]:
    """`file:line module` for every import that runs up the layers: from a module under `models/` to pvtkit outside
    `models/` and `BELOW_MODELS`; from a module of `LOWER_LAYER` to `models/` or outside `LOWER_LAYER`."""
    name = root.name
    below = {f"{name}.{m}" for m in BELOW_MODELS}
    lower = {f"{name}.{m}" for m in LOWER_LAYER}
    offenders = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts
        if parts[0] == "models":
            allowed = lambda m: m.startswith(f"{name}.models.") or m == f"{name}.models" or m in below  # noqa: E731
        elif len(parts) == 1 and path.stem in LOWER_LAYER:
            allowed = lambda m: m in lower  # noqa: E731
        else:
            continue
        offenders += [
            f"{path.relative_to(root)}:{line} {m}" for line, m in imported_modules(path, root) if not allowed(m)
        ]
    return offenders


def test_no_import_runs_up_the_layers():
    """Families (`models/`) import the layers below them only; those (`convert`, `modeling`, `processing`, ...)
    import no family and not the registry: `convert` detects among the layouts it is handed, `modeling` reads
    checkpoints through the registry its subclasses name, `processing` is handed the processors."""
    assert upward_imports() == []


def test_the_layer_check_finds_upward_imports(tmp_path):
    """The check is not vacuous: a family importing training, and `convert` importing the registry (the cycle
    `convert -> family -> pvt_v2 -> modeling -> convert` of old) or a family, are found; imports within `models/`
    and of the layers below are not."""
    root = tmp_path / "pvtkit"
    (root / "models" / "pvt_v2").mkdir(parents=True)
    (root / "models" / "pvt_v2" / "modeling.py").write_text(
        "from ...modeling import PreTrainedModel\nfrom ..pyramid import modeling as pyramid\nfrom .. import family\n"
        "from ... import cpu_kernels\n\ndef f():\n    from ...training import Trainer\n"
    )
    (root / "convert.py").write_text(
        "import re\nfrom ._files import read_json\nfrom .models.family import all_layouts\n"
        "def g():\n    from .models import vit\n    import pvtkit.models.glpn.conversion\n"
    )
    (root / "training.py").write_text("from .models.pvt_v2 import modeling\n")  # above the families: allowed
    assert upward_imports(root) == [
        "convert.py:3 pvtkit.models.family",
        "convert.py:5 pvtkit.models",
        "convert.py:6 pvtkit.models.glpn.conversion",
        "models/pvt_v2/modeling.py:7 pvtkit.training",
    ]


def test_family_configurations_conversions_and_processors_import_no_torch():
    """Every `models/*/configuration.py`, `conversion.py` and `processing.py` (and the packages above them, which
    Python imports first) loads without PyTorch: the Keras models and the PIL processors run without it."""
    names = sorted(
        f"pvtkit.models.{p.parent.name}.{p.stem}"
        for part in ("configuration", "conversion", "processing")
        for p in (SRC / "models").glob(f"*/{part}.py")
    )
    assert {n.split(".")[2] for n in names} >= {*registry.FAMILY_MODULES, "pyramid"}
    code = (
        f"import importlib, sys\nfor name in {names!r}:\n    importlib.import_module(name)\n"
        "assert 'torch' not in sys.modules, 'importing the torch-free family modules loaded torch'\n"
        "from pvtkit.models import family\nassert len(family.IMAGE_PROCESSOR_TYPES) >= 4\n"
        "assert 'torch' not in sys.modules, 'assembling the image processor table loaded torch'\n"
    )
    run_fresh_python(code)


def test_fast_path_decisions_live_in_cpu_kernels():
    """What decides a fast path (autocast state, the CPU's bf16 support, oneDNN's fused kernels, the piece size) is
    asked in `cpu_kernels` only; the models call its ops."""
    deciders = (
        "is_autocast_enabled",
        "get_autocast_dtype",
        "_is_mkldnn_bf16_supported",
        "_convolution_pointwise",
        "small_bytes",
        "is_in_onnx_export",
    )
    offenders = []
    for path in SRC.rglob("*.py"):
        if path.name == "cpu_kernels.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            name = node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else None
            if name in deciders:
                offenders.append(f"{path.relative_to(SRC)}:{node.lineno} {name}")
    assert offenders == []


def run_fresh_python(code: str) -> None:
    """Run `code` in a new interpreter (nothing imported yet) and fail with its stderr if it fails."""
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]


def test_import_pvtkit_loads_no_torch_until_a_model_is_used():
    """`import pvtkit` is lazy (PEP 562): configs and the public table load without PyTorch; the first model class
    imports it; every public name resolves; submodules stay reachable as attributes."""
    code = (
        "import sys, pvtkit\n"
        "assert 'torch' not in sys.modules, 'import pvtkit loaded torch'\n"
        "assert pvtkit.PretrainedConfig.__name__ == 'PretrainedConfig' and 'torch' not in sys.modules\n"
        "assert 'PvtV2Config' in dir(pvtkit)\n"
        "import pvtkit.hub\n"
        "assert pvtkit.hub.resolve_checkpoint and 'torch' not in sys.modules, 'pvtkit.hub loaded torch'\n"
        "pvtkit.PvtV2Config.from_variant('b2'), pvtkit.ViTConfig.from_variant('base_patch16_224')\n"
        "assert 'torch' not in sys.modules, 'a config class loaded torch'\n"
        "pvtkit.PvtV2Model\n"
        "assert 'torch' in sys.modules\n"
        "missing = [n for n in pvtkit.__all__ if getattr(pvtkit, n, None) is None]\n"
        "assert not missing, missing\n"
        "assert pvtkit.training.Trainer is pvtkit.Trainer and pvtkit.PVT_V2_VARIANTS is pvtkit.models.pvt_v2.VARIANTS\n"
        "try:\n    pvtkit.no_such_name\nexcept AttributeError as e:\n    assert 'no_such_name' in str(e)\n"
        "else:\n    raise AssertionError('no AttributeError')\n"
    )
    run_fresh_python(code)


def test_pvtkit_pipeline_is_the_function_and_pipelines_the_package():
    """`pvtkit.pipeline` is the function, whatever was imported before it; the pipelines are the package
    `pvtkit.pipelines`, one module per task; the package is a plain module (no class swap to keep the name)."""
    code = (
        "import sys, types, pvtkit\n"
        "from pvtkit.pipelines import slide_windows\n"
        "import pvtkit.pipelines.segmentation as seg\n"
        "assert callable(pvtkit.pipeline) and pvtkit.pipeline.__module__ == 'pvtkit.pipelines', pvtkit.pipeline\n"
        "assert seg.slide_windows is slide_windows and pvtkit.pipelines.pipeline is pvtkit.pipeline\n"
        "assert type(sys.modules['pvtkit']) is types.ModuleType\n"
    )
    run_fresh_python(code)
