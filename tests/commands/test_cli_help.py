"""The command line answers at once and says the truth: help without torch, --version, defaults stated once, flags
named in help that exist, train's flags from TrainingArguments; `import pvtkit` leaves the environment alone."""

import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys

import pytest

from pvtkit import cli
from pvtkit.commands import COMMANDS

ENV = {k: v for k, v in os.environ.items() if k not in ("THP_MEM_ALLOC_ENABLE", "OMP_WAIT_POLICY")}


def python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=120, check=False
    )


def subparsers(parser: argparse.ArgumentParser, prefix: str = "pvtkit"):
    yield prefix, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from subparsers(sub, f"{prefix} {name}")


@pytest.mark.parametrize("command", [[], *([c] for c in COMMANDS), ["export", "onnx"], ["export", "saved-model"]])
def test_help_imports_no_torch_and_exits_0(command):
    code = (
        f"import sys\nfrom pvtkit import cli\ntry:\n    cli.build_parser().parse_args({command + ['--help']!r})\n"
        "except SystemExit as e:\n    print(e.code, 'torch' in sys.modules)"
    )
    out = python(code)
    assert out.stdout.strip().splitlines()[-1] == "0 False", out.stderr
    assert "usage: pvtkit" in out.stdout


def test_version():
    out = subprocess.run(
        [sys.executable, "-m", "pvtkit", "--version"], capture_output=True, text=True, env=ENV, check=False
    )
    assert out.returncode == 0 and re.fullmatch(r"pvtkit \d+\.\d+\S*\n", out.stdout), out


def test_help_states_each_default_once_and_names_only_existing_flags():
    for name, parser in subparsers(cli.build_parser()):
        own = {s for a in parser._actions for s in a.option_strings}
        text = parser.format_help()
        for action in parser._actions:
            formatted = parser._get_formatter()._expand_help(action) if action.help else ""
            assert formatted.count("(default") <= 1, (name, action.option_strings, formatted)
            assert "(default: True)" not in formatted and "(default: False)" not in formatted, (name, formatted)
            for flag in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", formatted):
                assert flag in own, f"{name} {action.option_strings}: help names {flag}, which {name} has not"
        assert text


def test_serve_compile_hint_names_serves_batch_option():
    serve = dict(subparsers(cli.build_parser()))["pvtkit serve"]
    compile_help = next(a.help for a in serve._actions if "--compile" in a.option_strings)
    assert "--max-batch-size 1" in compile_help and "--batch-size 1" not in compile_help.replace("--max-batch-size", "")


def test_train_flags_are_training_arguments_fields():
    from pvtkit.training import TrainingArguments

    train = dict(subparsers(cli.build_parser()))["pvtkit train"]
    dests = {a.dest for a in train._actions if a.option_strings and a.dest != "help"}
    real = dataclasses.fields(TrainingArguments)
    assert dests == {f.name for f in real}
    # today's flags and aliases keep working
    args = train.parse_args(
        [
            "-o",
            "out",
            "-d",
            "data",
            "-m",
            "m",
            "-b",
            "8",
            "--lr",
            "1e-3",
            "--no-hflip",
            "-q",
            "--no-jitter",
            "--reduce-labels",
            "--scale-range",
            "0.5",
            "2",
            "--precision",
            "bf16",
        ]
    )
    assert (args.output_dir, args.data, args.model, args.batch_size, args.lr) == ("out", "data", "m", 8, 1e-3)
    assert (args.hflip, args.progress, args.jitter, args.reduce_labels, args.scale_range) == (
        False,
        False,
        False,
        True,
        [0.5, 2.0],
    )
    defaults = train.parse_args(["-o", "out"])
    assert (defaults.precision, defaults.grad_accum, defaults.save_steps, defaults.device) == ("fp32", 1, 0, "auto")
    assert defaults.epochs is None and defaults.hflip is None and defaults.resume is False


def test_arch_names_say_their_family_and_help_lists_every_family():
    from pvtkit.commands.train import arch_help
    from pvtkit.models.family import config_for_variant, families

    text = arch_help()
    for family in families().values():  # every family trains now (GLPN: depth)
        assert family.title in text and all(v in text for v in family.variants)
        variant = next(iter(family.variants))
        for prefix in (p.rstrip("_") for p in family.config_class.variant_prefixes if "/" not in p):
            assert f"{prefix}-{variant}" in text
            assert config_for_variant(f"{prefix}-{variant}").model_type == family.model_type, (prefix, variant)
    assert type(config_for_variant("b0")).__name__ == "PvtV2Config"  # bare names keep today's meaning


def test_import_pvtkit_changes_no_environment_variable():
    code = (
        "import os, sys, json\nsys.argv[0] = '/usr/local/bin/pvtkit'\nbefore = dict(os.environ)\n"
        "import pvtkit, pvtkit.cli, pvtkit.commands.train, pvtkit.training.trainer\n"
        "pvtkit.cli.build_parser()\nprint(json.dumps([dict(os.environ) == before, 'torch' in sys.modules]))"
    )
    assert json.loads(python(code).stdout) == [True, True]


@pytest.mark.parametrize("argv, thp, omp", [(["--version"], "1", "unset"), (["serve", "--help"], "1", "PASSIVE")])
def test_the_command_sets_its_process_environment_before_torch(argv, thp, omp):
    code = (
        f"import os, sys\nsys.argv = ['pvtkit', *{argv!r}]\nfrom pvtkit import cli\ntry:\n    cli.main()\n"
        "except SystemExit:\n    pass\nprint(os.environ.get('THP_MEM_ALLOC_ENABLE', 'unset'), "
        "os.environ.get('OMP_WAIT_POLICY', 'unset'), file=sys.stderr)"
    )
    assert python(code).stderr.split()[-2:] == [thp, omp]
    late = python("import torch\n" + code)  # torch read them already: setting them now would change nothing
    assert late.stderr.split()[-2:] == ["unset", "unset"]
