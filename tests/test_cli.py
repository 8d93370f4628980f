"""The command line: lazy help, options derived from the config dataclasses, errors naming the flag typed."""

import dataclasses
import json
import os
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from mochi import __version__
from mochi.cli import COMMANDS, main
from mochi.cli.knn import knn_cmd
from mochi.cli.linear import LINEAR_FLAGS, linear_cmd
from mochi.cli.pretrain import pretrain_cmd
from mochi.eval.config import CONFIGS, BackboneSpec, EvalData, KnnConfig, LbfgsConfig
from mochi.pretrain.config import PretrainConfig


def test_version_and_help():
    runner = CliRunner()
    res = runner.invoke(main, ["--version"])
    assert res.exit_code == 0 and __version__ in res.output
    res = runner.invoke(main, ["--help"])
    assert res.exit_code == 0 and "MoCHi" in res.output
    assert all(name in res.output for name in COMMANDS)


# What `mochi SUB --help` may import of the stages: the torch-free config modules and their packages.
CONFIG_MODULES = {"mochi.pretrain", "mochi.pretrain.config", "mochi.eval", "mochi.eval.config"}
PROBE = """
import sys
from mochi.cli import main
try:
    main({args!r})
except SystemExit as e:
    assert e.code == 0, e.code
stages = sorted(m for m in sys.modules if m.split(".")[:2] in (["mochi", "pretrain"], ["mochi", "transfer"],
                                                                 ["mochi", "eval"]))
print("\\nPROBE", "torch" in sys.modules, " ".join(stages))
"""


@pytest.mark.parametrize(
    "args",
    [[], ["pretrain"], ["knn"], ["linear"], ["export"], ["inspect"], ["results"], ["detect"], ["analyze"]],
)
def test_help_imports_neither_torch_nor_the_stages(args):
    res = subprocess.run(
        [sys.executable, "-c", PROBE.format(args=[*args, "--help"])],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    torch_loaded, *stages = res.stdout.split("PROBE ")[-1].split()
    assert torch_loaded == "False"
    assert set(stages) <= (CONFIG_MODULES if args else set()), stages


def test_python_m_mochi():
    res = subprocess.run(
        [sys.executable, "-m", "mochi", "--help"], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0 and "pretrain" in res.stdout and "Usage:" in res.stdout


def test_command_table_matches_the_commands():
    ctx = click.Context(main)
    for name, (_, summary) in COMMANDS.items():
        cmd = main.get_command(ctx, name)
        assert cmd.name == name
        assert " ".join(cmd.help.split("\n\n")[0].split()) == summary, name


def _defaults(cmd: click.Command) -> dict:
    ctx = click.Context(cmd)
    return {
        p.name: p.type_cast_value(ctx, p.get_default(ctx)) for p in cmd.params if isinstance(p, click.Option)
    }


def test_pretrain_options_are_the_config_fields_with_their_defaults():
    defaults = _defaults(pretrain_cmd)
    fields = {f.name for f in dataclasses.fields(PretrainConfig)}
    assert set(defaults) - {"config_file", "quiet"} == fields
    reference = dataclasses.asdict(PretrainConfig())
    assert {k: v for k, v in defaults.items() if k in fields} == reference


def test_eval_options_are_the_config_fields_with_their_defaults():
    defaults = _defaults(knn_cmd)
    for cls in (BackboneSpec, EvalData, KnnConfig):
        for f in dataclasses.fields(cls):
            if f.name not in ("progress", "checkpoint"):  # --quiet; the CHECKPOINT argument
                assert defaults[f.name] == f.default, f.name
    assert set(defaults) | {"checkpoint"} == {
        f.name for c in (BackboneSpec, EvalData, KnnConfig) for f in dataclasses.fields(c)
    } - {"progress"} | {"results", "quiet"}
    # linear: every option is a protocol field; the fields not offered are fixed by their protocol
    offered = set(LINEAR_FLAGS)
    all_fields = {f.name for c in CONFIGS.values() for f in dataclasses.fields(c)}
    assert offered <= all_fields and all_fields - offered == {"momentum", "fc_init_std"}
    assert {p.name for p in linear_cmd.params} >= {"linear_batch_size", "c_values", "lrs", "seed", "protocol"}


def pretrain(args, tmp_path, tiny=True):
    out = tmp_path / "run"
    tiny = [] if not tiny else [
        "--data", "fashion-mnist-embedded", "--limit", "64", "-a", "resnet18", "--image-size", "32",
        "--aug", "aug-plus-small", "-b", "32", "--moco-k", "64", "--bn-splits", "2", "-j", "0", "-q",
    ]  # fmt: skip
    res = CliRunner().invoke(main, ["pretrain", *tiny, *args, "-o", str(out)])
    assert not out.exists()  # nothing written
    assert "Traceback" not in res.output and "ValueError" not in res.output
    return res


@pytest.mark.parametrize(
    "args, message",
    [
        (["--moco-k", "0"], "--moco-k must be positive, got 0"),
        (["--queue-size", "0"], "--queue-size must be positive, got 0"),
        (["--moco-k=0"], "--moco-k must be positive, got 0"),
        (["--moco-dim", "0"], "--moco-dim must be positive, got 0"),
        (["--dim", "0"], "--dim must be positive, got 0"),
        (["--moco-t", "0"], "--moco-t must be positive, got 0.0"),
        (["--moco-m", "1"], "--moco-m must be in [0, 1), got 1.0"),
        (["--lr", "-1"], "--lr must be positive, got -1.0"),
        (["--base-lr", "-0.1"], "--base-lr must be positive, got -0.1"),
        (["--wd", "-1"], "--wd must be >= 0, got -1.0"),
        (["--weight-decay", "-1"], "--weight-decay must be >= 0, got -1.0"),
        (["--momentum", "-0.5"], "--momentum must be >= 0, got -0.5"),
        (["-j", "-1"], "-j must be >= 0, got -1"),
        (["--workers", "-1"], "--workers must be >= 0, got -1"),
        (["--seed", "-1"], "--seed must be >= 0, got -1"),
        (["--image-size", "0"], "--image-size must be at least 2 pixels, got 0"),
        (["--image-size", "1"], "--image-size must be at least 2 pixels, got 1"),
        (["--crop-min", "0"], "--crop-min must be in (0, 1], got 0.0"),
        (["--crop-min", "1.5"], "--crop-min must be in (0, 1], got 1.5"),
        (["--mochi-n", "65"], "--mochi-n 65 exceeds the queue size K=64"),
        (["--mochi-s-prime", "4"], "--mochi-s-prime needs --mochi-n N > 0"),
        (["--moco-k", "100"], "--moco-k 100 is not a multiple of the global batch 32 (-b, summed over 1"),
        (
            ["--batch-size", "48"],
            "--moco-k 64 is not a multiple of the global batch 48 (--batch-size, summed",
        ),
    ],
)
def test_pretrain_errors_name_the_flag_typed(tmp_path, args, message):
    res = pretrain(args, tmp_path)
    assert res.exit_code == 1 and f"Error: {message}" in res.output, res.output


def test_pretrain_errors_name_the_config_field_when_replayed(tmp_path):
    saved = tmp_path / "config.json"
    saved.write_text(json.dumps({"config": {"queue_size": 0, "epochs": 1}, "world_size": 1}))
    res = pretrain(["--config", str(saved)], tmp_path, tiny=False)
    assert res.exit_code == 1 and "Error: config.json field queue_size must be positive, got 0" in res.output
    res = pretrain(
        ["--config", str(saved), "--moco-k", "0"], tmp_path, tiny=False
    )  # typed: the flag is named
    assert res.exit_code == 1 and "Error: --moco-k must be positive, got 0" in res.output
    saved.write_text(json.dumps({"config": {"queue_sise": 64}}))
    res = pretrain(["--config", str(saved)], tmp_path, tiny=False)
    assert res.exit_code == 2 and "config.json field queue_sise is not a pretraining option" in res.output
    saved.write_text(json.dumps({"config": {"epochs": "many"}}))
    res = pretrain(["--config", str(saved)], tmp_path, tiny=False)
    assert (
        res.exit_code == 2
        and "config.json field epochs" in res.output
        and "not a valid integer" in res.output
    )


def test_old_field_names_are_read():
    cfg = PretrainConfig.from_dict({"mochi_n": 16, "mochi_s": 8, "mochi_s_prime": 4, "world_size": 2})
    assert (cfg.n_hard, cfg.s, cfg.s_prime) == (16, 8, 4)


EVAL = ["--random-init", "-a", "resnet18", "--data", "fashion-mnist-embedded", "--limit-train", "100", "-q"]


def evaluate(command, args, tmp_path):
    results = tmp_path / "results"
    res = CliRunner().invoke(main, [command, *EVAL, *args, "-o", str(results), "--no-cache"])
    assert not results.exists()  # nothing written
    assert "Traceback" not in res.output and "ValueError" not in res.output
    return res


@pytest.mark.parametrize(
    "command, args, message",
    [
        ("knn", ["--image-size", "0"], "--image-size must be at least 2 pixels, got 0"),
        ("knn", ["--image-size", "1"], "--image-size must be at least 2 pixels, got 1"),
        ("knn", ["-j", "-1"], "-j must be >= 0, got -1"),
        ("knn", ["-b", "0"], "-b must be positive, got 0"),
        ("knn", ["--limit-test", "0"], "--limit-test must be positive, got 0"),
        ("knn", ["--crop-fraction", "2"], "--crop-fraction must be in (0, 1], got 2.0"),
        ("knn", ["-k", "0,20"], "-k needs every value positive, got 0, 20"),
        ("knn", ["--temperature", "0"], "--temperature needs every value positive, got 0.0"),
        ("knn", ["--init-seed", "-1"], "--init-seed must be >= 0, got -1"),
        ("linear", ["--linear-batch-size", "0"], "--linear-batch-size must be positive, got 0"),
        ("linear", ["--batch-size", "0"], "--batch-size must be positive, got 0"),
        ("linear", ["--val-fraction", "1"], "--val-fraction must be in (0, 1), got 1.0"),
        ("linear", ["--protocol", "lbfgs", "--blas-threads", "-1"], "--blas-threads must be >= 0, got -1"),
        ("linear", ["--seed", "-1"], "--seed must be >= 0, got -1"),
        ("linear", ["--protocol", "moco", "--lr", "-1"], "--lr must be positive, got -1.0"),
    ],
)
def test_eval_errors_name_the_flag_typed(tmp_path, command, args, message):
    res = evaluate(command, args, tmp_path)
    assert res.exit_code == 1 and f"Error: {message}" in res.output, res.output


def test_linear_option_of_another_protocol_is_an_error(tmp_path):
    res = evaluate("linear", ["--protocol", "sgd-grid", "--c-values", "0.1"], tmp_path)
    assert res.exit_code == 2 and "--c-values applies to --protocol lbfgs, not sgd-grid" in res.output
    res = evaluate("linear", ["--protocol", "lbfgs", "--linear-batch-size", "64"], tmp_path)
    assert res.exit_code == 2 and "--linear-batch-size applies to --protocol moco / sgd-grid" in res.output
    assert LbfgsConfig().c_values[0] == pytest.approx(1e-6) and len(LbfgsConfig().c_values) == 45


def test_list_options_parse_or_fail_with_the_flag(tmp_path):
    res = evaluate("knn", ["-k", "ten"], tmp_path)
    assert res.exit_code == 2 and "'-k'" in res.output and "comma-separated" in res.output


@pytest.mark.parametrize("preset, expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_the_command_makes_openmp_threads_sleep_unless_told_otherwise(preset, expected):
    # set before torch (and its OpenMP runtime) loads; a user's own setting wins
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if preset:
        env["OMP_WAIT_POLICY"] = preset
    code = "import sys, os, mochi.cli; print(os.environ['OMP_WAIT_POLICY'], 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == [expected, "False"]
