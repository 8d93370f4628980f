"""scripts/reproduce: the plans, the dry run, the local path end to end (mini.sh), the submitit launcher."""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts" / "reproduce"))

import plans  # noqa: E402
import reproduce  # noqa: E402


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "reproduce" / "reproduce.py"), *args],
        capture_output=True, text=True, check=False,
    )  # fmt: skip


def test_dry_run_prints_every_command_and_the_gpu_hours(tmp_path):
    out = tmp_path / "in100"
    args = ("-o", str(out), "--imagenet", "/data/imagenet", "--dry-run", "--nproc-per-node", "8")
    done = _run("in100-linear", *args)
    assert done.returncode == 0, done.stderr
    text = done.stdout
    pretrain = [line for line in text.splitlines() if " -m mochi pretrain " in line]
    assert len(pretrain) == 4  # MoCo-v2 and three MoCHi settings
    assert all("torch.distributed.run --standalone --nproc-per-node=8" in line for line in pretrain)
    assert all("--subset imagenet100" in line and "--resume auto" in line for line in pretrain)
    assert sum("--mochi-n 1024 --mochi-s 1024 --mochi-s-prime 128" in line for line in pretrain) == 1
    suite = [line for line in text.splitlines() if " -m mochi suite " in line]
    assert len(suite) == 1 and suite[0].count("checkpoint_0199.pth.tar") == 4 and "--suite in100" in suite[0]
    assert sum(" -m mochi table " in line for line in text.splitlines()) == 3
    plots = [line for line in text.splitlines() if " -m mochi plot " in line]
    assert [line.split(" -m mochi plot ")[1].split()[0] for line in plots] == ["table", "knn", "curves"]
    # 53 h on 8 V100 for 200 ImageNet-1k epochs, scaled to 126,689 images x 200 epochs, four runs.
    per_run = 53 * 8 * 126_689 / 1_281_167
    assert f"~{per_run:,.0f} V100 GPU-hours" in pretrain[0]
    assert f"expected pretraining GPU-hours: ~{4 * per_run:,.0f}" in text
    assert not out.exists()  # a dry run writes nothing


def _fmnist_study_commands(done: subprocess.CompletedProcess) -> tuple[list[str], list[str], str]:
    """A Fashion-MNIST study plan's dry run: (every line, the pretraining commands, the suite command), after
    checking what both study plans share: MoCo-v2 and both MoCHi settings, three pretraining seeds each."""
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    pretrain = [line for line in lines if " -m mochi pretrain " in line]
    assert len(pretrain) == 9
    for seed in (0, 1, 2):
        assert sum(f"--seed {seed} " in line for line in pretrain) == 3
    for n, s, s_prime in plans.FMNIST_MOCHI.values():
        mochi = f"--mochi-n {n} --mochi-s {s} --mochi-s-prime {s_prime} --mochi-warmup 2"
        assert sum(mochi in line for line in pretrain) == 3
    (suite,) = [line for line in lines if " -m mochi suite " in line]
    # random init gets three initialisation seeds, like each method's three pretraining seeds
    assert "--suite fashion-mnist --seeds 0 --init-seeds 0,1,2 --baseline resnet18 --baseline pixels" in suite
    assert "--limit-train" not in suite  # the whole embedded split
    return lines, pretrain, suite


def test_fashion_mnist_study_plan_pools_pretraining_seeds(tmp_path):
    done = _run("fashion-mnist", "-o", str(tmp_path / "study"), "--dry-run")
    lines, pretrain, suite = _fmnist_study_commands(done)
    assert all("--aug grey-small" in line and "--data fashion-mnist-embedded" in line for line in pretrain)
    assert all(" -b 64 " in line and " --epochs 40 " in line for line in pretrain)  # e15's recipe
    assert all(" --keep-last 2 " in line for line in pretrain)  # 9 x 40 full checkpoints would take 50 GB
    assert suite.count("checkpoint_0039.pth.tar") == 9
    tables = [
        line for line in lines if " -m mochi table " in line or " plot table " in line or " plot knn " in line
    ]
    assert len(tables) == 5 and all("--rows method" in line for line in tables)


def test_the_longer_study_plan_is_the_study_recipe_on_every_image_for_60_epochs(tmp_path):
    script = ROOT / "scripts" / "reproduce" / "fashion_mnist_long.sh"
    done = subprocess.run(
        ["bash", str(script), "-o", str(tmp_path / "long"), "--dry-run"],
        capture_output=True, text=True, check=False, env={**os.environ, "PYTHON": sys.executable},
    )  # fmt: skip
    _, pretrain, suite = _fmnist_study_commands(done)
    study = " ".join(plans.FMNIST).replace("--limit 4000 ", "").replace("--epochs 40", "--epochs 60")
    assert all(study in line and "--limit" not in line for line in pretrain)
    assert suite.count("checkpoint_0059.pth.tar") == 9
    assert not (tmp_path / "long").exists()


def test_the_main_job_plan_is_the_study_recipe_shortened(tmp_path):
    done = _run("main", "-o", str(tmp_path / "main"), "--dry-run", "--jobs", "2")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    pretrain = [line for line in lines if " -m mochi pretrain " in line]
    assert len(pretrain) == 2 and all(" --seed 0 " in line for line in pretrain)
    study = " ".join(plans.FMNIST).replace("--epochs 40 --keep-last 2", "--epochs 30")
    assert all(study in line and "--save-every 10 --keep-last 3" in line for line in pretrain)
    assert "--mochi-n 512 --mochi-s 512 --mochi-s-prime 128 --mochi-warmup 2" in pretrain[1]
    (suite,) = [line for line in lines if " -m mochi suite " in line]
    assert "--suite fashion-mnist --seeds 0 --baseline resnet18 " in suite
    assert suite.count("checkpoint_0029.pth.tar") == 2 and "--limit-train" not in suite
    assert "2 runs at a time" in done.stdout


def test_missing_data_root_is_refused_before_anything_runs(tmp_path):
    done = _run("in100-linear", "-o", str(tmp_path / "x"))
    assert done.returncode == 2 and "needs --imagenet DIR" in done.stderr
    done = _run("in100-linear", "-o", str(tmp_path / "x"), "--imagenet", str(tmp_path))
    assert done.returncode == 2 and "no train/ folder there" in done.stderr
    assert not (tmp_path / "x").exists()


def test_every_plan_is_written_down_in_the_protocol_docs():
    docs = (ROOT / "docs" / "protocols.md").read_text()
    section = docs.split("## Reproduction tables", 1)[1].split("\n## ", 1)[0]
    for name, plan in plans.PLANS.items():
        assert f"`{name}`" in section, name
        for suite in plan.suites:
            assert f"`{suite.suite}`" in section, (name, suite.suite)
    for n, s, s_prime in plans.MOCHI_VARIANTS.values():
        assert f"({n}, {s}, {s_prime})" in section
    assert "16384" in section and "53 hours" in section


def test_concurrent_slots_share_out_the_gpus_or_the_cores():
    cpu = reproduce.slot_envs(2, 1, [], cores=2, environ={"PATH": "/bin"})
    assert [e["OMP_NUM_THREADS"] for e in cpu] == ["1", "1"] and all(
        "CUDA_VISIBLE_DEVICES" not in e for e in cpu
    )
    assert reproduce.slot_envs(3, 1, [], cores=16, environ={})[0]["OMP_NUM_THREADS"] == "5"
    assert reproduce.slot_envs(4, 1, [], cores=2, environ={})[3]["OMP_NUM_THREADS"] == "1"  # at least one
    empty = reproduce.slot_envs(2, 1, [], cores=16, environ={"OMP_NUM_THREADS": ""})
    assert [e["OMP_NUM_THREADS"] for e in empty] == ["8", "8"]  # set but empty: not a choice
    mine = reproduce.slot_envs(2, 1, [], cores=16, environ={"OMP_NUM_THREADS": "3"})
    assert [e["OMP_NUM_THREADS"] for e in mine] == ["3", "3"]  # the user's setting wins
    gpus = reproduce.slot_envs(4, 2, [str(i) for i in range(8)], cores=64, environ={})
    assert [e["CUDA_VISIBLE_DEVICES"] for e in gpus] == ["0,1", "2,3", "4,5", "6,7"]
    assert reproduce.slot_envs(2, 1, ["3", "5"], cores=8, environ={})[1]["CUDA_VISIBLE_DEVICES"] == "5"
    with pytest.raises(ValueError, match="--jobs 3 x --nproc-per-node 2 needs 6 GPUs, this machine shows 4"):
        reproduce.slot_envs(3, 2, ["0", "1", "2", "3"], cores=8, environ={})


def _marker_command(tmp_path: Path, name: str, wait_for: str | None = None, code: int = 0) -> list[str]:
    """A command that writes NAME (its OMP_NUM_THREADS), optionally waits up to 30 s for another's file to
    exist (it fails if that never happens), then exits with ``code``."""
    script = (
        "import os, sys, time, pathlib; d = pathlib.Path(sys.argv[1]); "
        "(d / sys.argv[2]).write_text(os.environ.get('OMP_NUM_THREADS', '')); "
        "print('hello from', sys.argv[2]); "
        "w = sys.argv[3]; t = time.time()\n"
        "while w and not (d / w).exists():\n"
        "    time.sleep(0.05)\n"
        "    if time.time() - t > 30: sys.exit('never saw ' + w)\n"
        "sys.exit(int(sys.argv[4]))"
    )
    return [sys.executable, "-c", script, str(tmp_path), name, wait_for or "", str(code)]


def test_jobs_run_side_by_side_each_in_its_slot(tmp_path):
    # Each waits for the other's file: they pass only if both run at the same time.
    cmds = [_marker_command(tmp_path, "a", "b"), _marker_command(tmp_path, "b", "a")]
    envs = reproduce.slot_envs(2, 1, [], cores=2, environ=dict(os.environ, OMP_NUM_THREADS="7"))
    envs[0]["OMP_NUM_THREADS"], envs[1]["OMP_NUM_THREADS"] = "10", "11"
    failures = reproduce.run_concurrently(cmds, ["run-a", "run-b"], envs, tmp_path / "logs")
    assert failures == []
    assert {(tmp_path / "a").read_text(), (tmp_path / "b").read_text()} == {"10", "11"}  # one slot each
    assert "hello from a" in (tmp_path / "logs" / "run-a.log").read_text()


def _epochs_command(run_dir: Path, first: int, end: int) -> list[str]:
    """A command that appends the records of epochs ``first`` to ``end - 1`` to RUN_DIR/metrics.jsonl."""
    script = (
        "import json, sys, time, pathlib; d = pathlib.Path(sys.argv[1])\n"
        "d.mkdir(parents=True, exist_ok=True)\n"
        "for e in range(int(sys.argv[2]), int(sys.argv[3])):\n"
        "    with open(d / 'metrics.jsonl', 'a') as f:\n"
        "        f.write(json.dumps({'type': 'step', 'epoch': e, 'step': 1}) + '\\n')\n"
        "        f.write(json.dumps({'type': 'epoch', 'epoch': e, 'loss': 1.0}) + '\\n')\n"
        "    time.sleep(0.05)"
    )
    return [sys.executable, "-c", script, str(run_dir), str(first), str(end)]


def test_the_concurrent_stage_shows_a_bar_over_the_epochs_of_every_run(tmp_path, capsys):
    runs = [(tmp_path / "pretrain" / "a", 3), (tmp_path / "pretrain" / "b", 4)]
    (tmp_path / "pretrain" / "b").mkdir(parents=True)  # b resumes: two epochs were done before
    (tmp_path / "pretrain" / "b" / "metrics.jsonl").write_text(
        '{"type": "epoch", "epoch": 0}\n{"type": "epoch", "epoch": 1}\n{"type": "epoch", "epo'
    )  # a record being written is not counted
    assert reproduce.epochs_done(runs[1][0]) == 2 and reproduce.epochs_done(tmp_path / "none") == 0
    cmds = [_epochs_command(runs[0][0], 0, 3), _epochs_command(runs[1][0], 2, 4)]
    envs = reproduce.slot_envs(2, 1, [], cores=2, environ=dict(os.environ))
    failures = reproduce.run_concurrently(cmds, ["a", "b"], envs, tmp_path / "logs", runs, poll_s=0.02)
    assert failures == []
    captured = capsys.readouterr()
    assert "[pretrain] epochs" in captured.err and "2/7" in captured.err  # b's two epochs from the start
    assert "7/7" in captured.err and "epoch/s" in captured.err  # all of them, with the rate
    assert "[pretrain] done: a in" in captured.out and "[pretrain] done: b in" in captured.out


def test_after_a_failure_nothing_new_starts(tmp_path, capsys):
    cmds = [_marker_command(tmp_path, "a", code=3), _marker_command(tmp_path, "b")]
    envs = reproduce.slot_envs(1, 1, [], cores=2, environ=dict(os.environ))
    failures = reproduce.run_concurrently(cmds, ["run-a", "run-b"], envs, tmp_path / "logs")
    assert failures == [f"run-a (exit 3; log {tmp_path / 'logs' / 'run-a.log'})"]
    assert (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert "FAILED (exit 3): run-a" in capsys.readouterr().out


def test_an_interruption_starts_nothing_new(tmp_path):
    import signal
    import threading

    def interrupt_once_a_started():
        while not (tmp_path / "a").exists():
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C sends this process

    cmds = [_marker_command(tmp_path, "a", "go"), _marker_command(tmp_path, "b")]
    envs = reproduce.slot_envs(1, 1, [], cores=2, environ=dict(os.environ))
    # Python's own Ctrl-C handler, as in a fresh process, whatever an earlier test in this one left installed
    saved = signal.signal(signal.SIGINT, signal.default_int_handler)
    watcher = threading.Thread(target=interrupt_once_a_started)
    watcher.start()
    threading.Timer(2.0, lambda: (tmp_path / "go").touch()).start()  # then let the running one finish
    try:
        with pytest.raises(KeyboardInterrupt):
            reproduce.run_concurrently(cmds, ["run-a", "run-b"], envs, tmp_path / "logs")
    finally:
        watcher.join()
        signal.signal(signal.SIGINT, saved)
    assert (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.fixture
def stop_handlers():
    """reproduce.stop_on_signals() for one test, pytest's own handlers back afterwards."""
    import signal

    saved = {sig: signal.getsignal(sig) for sig in reproduce.STOP_SIGNALS}
    reproduce.stop_on_signals()
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def _stoppable_command(tmp_path: Path, name: str) -> list[str]:
    """A command that writes NAME, then runs until SIGTERM, which it answers like `mochi pretrain`: it writes
    NAME.stopped and exits 0 (after 30 s without one it fails)."""
    script = (
        "import signal, sys, time, pathlib; d = pathlib.Path(sys.argv[1]); n = sys.argv[2]\n"
        "def stop(signum, frame):\n"
        "    (d / (n + '.stopped')).write_text(signal.Signals(signum).name); sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, stop); (d / n).write_text('started'); t = time.time()\n"
        "while time.time() - t < 30: time.sleep(0.02)\n"
        "sys.exit('never stopped')"
    )
    return [sys.executable, "-c", script, str(tmp_path), name]


def _sigterm_once(path: Path):
    import signal
    import threading

    def send():
        deadline = time.monotonic() + 30
        while not path.exists():  # never seen: no signal, and the test fails on its own
            if time.monotonic() > deadline:
                return
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGTERM)  # what `kill PID` or a job's time limit sends this process

    watcher = threading.Thread(target=send)
    watcher.start()
    return watcher


def test_a_stop_signal_is_passed_on_to_the_running_runs(tmp_path, stop_handlers):
    cmds = [_stoppable_command(tmp_path, "a"), _stoppable_command(tmp_path, "b")]
    envs = reproduce.slot_envs(1, 1, [], cores=2, environ=dict(os.environ))
    watcher = _sigterm_once(tmp_path / "a")
    with pytest.raises(reproduce.Stopped, match="SIGTERM"):
        reproduce.run_concurrently(cmds, ["run-a", "run-b"], envs, tmp_path / "logs")
    watcher.join()
    assert (tmp_path / "a.stopped").read_text() == "SIGTERM"  # stopped, not left running
    assert not (tmp_path / "b").exists()  # and nothing new started


def test_a_stop_signal_reaches_a_stage_run_one_after_the_other(tmp_path, stop_handlers, monkeypatch):
    import argparse

    monkeypatch.setattr(
        reproduce, "local_command", lambda stage, argv, n: _stoppable_command(tmp_path, argv[0])
    )
    stages = [reproduce.Stage("suites", [["a"], ["b"]])]
    watcher = _sigterm_once(tmp_path / "a")
    with pytest.raises(reproduce.Stopped):
        reproduce.run_local(stages, argparse.Namespace(jobs=1, nproc_per_node=1, output=str(tmp_path)))
    watcher.join()
    assert (tmp_path / "a.stopped").read_text() == "SIGTERM" and not (tmp_path / "b").exists()


def test_reproduce_stopped_by_a_signal_says_how_to_go_on(tmp_path, monkeypatch, capsys, stop_handlers):
    import signal

    def stopped_while_running(stages, args):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)

    monkeypatch.setattr(reproduce, "run_local", stopped_while_running)
    with pytest.raises(SystemExit) as exit_:
        reproduce.main(["mini", "-o", str(tmp_path / "out")])  # installs the handlers itself
    assert exit_.value.code == 128 + signal.SIGTERM
    err = capsys.readouterr().err
    assert "reproduce: stopped by SIGTERM" in err and "run the same command again to go on" in err


def test_jobs_options_are_checked(tmp_path):
    done = _run("mini", "-o", str(tmp_path / "x"), "--jobs", "0")
    assert done.returncode == 2 and "--jobs 0 / --nproc-per-node 1: both must be at least 1" in done.stderr
    done = _run("mini", "-o", str(tmp_path / "x"), "--jobs", "2", "--launcher", "slurm")
    assert done.returncode == 2 and "--jobs 2 is for --launcher local" in done.stderr
    assert not (tmp_path / "x").exists()
    done = _run("mini", "-o", str(tmp_path / "x"), "--jobs", "2", "--dry-run")
    assert done.returncode == 0 and "# pretraining 2 runs at a time" in done.stdout


def test_the_submitit_job_requeues_the_same_command():
    pytest.importorskip("submitit")
    from mochi.cli.slurm import CommandJob

    again = CommandJob().checkpoint(["pretrain", "--resume", "auto"])
    assert isinstance(again.function, CommandJob) and again.args == (["pretrain", "--resume", "auto"],)


def _tiny_plan() -> plans.Plan:
    run = ("--data", "fashion-mnist-embedded", "--limit", "64", "-a", "resnet18", "--image-size", "32",
           "--aug", "aug-plus-small", "--epochs", "1", "-b", "32", "--moco-k", "64", "-j", "0")  # fmt: skip
    options = ("--seeds", "0", "--limit-train", "100", "--limit-test", "50", "--option", "knn.ks=[5]",
               "--option", "linear-lbfgs.c_values=[0.1]", "--option", "linear-sgd-grid.epochs=1",
               "--option", "linear-sgd-grid.lrs=[0.1]",
               "--option", "linear-sgd-grid.weight_decays=[0]")  # fmt: skip
    suite = plans.SuiteRun("fashion-mnist", options)
    return plans.Plan("tiny", "tiny", (plans.Run("moco", run, 1, 0),), (suite,), ())


@pytest.mark.slow
def test_submitit_local_executor_runs_every_stage_in_order(tmp_path):
    pytest.importorskip("submitit")
    args = argparse.Namespace(
        output=str(tmp_path / "r"), imagenet=None, gpus_per_node=0, nodes=1, time_min=30, cpus_per_task=2,
        partition=None, account=None, cluster="local", nproc_per_node=1,
    )  # fmt: skip
    jobs = reproduce.run_slurm(reproduce.build_stages(_tiny_plan(), args), args)
    # pretrain, suite, 3 tables + 3 plots
    assert len(jobs) == 8 and [j.state for j in jobs] == ["FINISHED"] * 8
    out = Path(args.output)
    assert (out / "pretrain" / "moco" / "checkpoint_0000.pth.tar").is_file()
    rows = list(csv.DictReader(io.StringIO((out / "table.csv").read_text())))
    assert len(rows) == 1 and rows[0]["backbone"] == "moco/checkpoint_0000.pth.tar"
    assert "|" in (out / "table.md").read_text() and r"\toprule" in (out / "table.tex").read_text()
    for picture in ("table.png", "knn.png", "curves.png"):
        assert (out / "plots" / picture).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_mini_sh_runs_the_whole_path_on_the_embedded_data(tmp_path):
    """scripts/reproduce/mini.sh: two methods pretrained side by side (--jobs 2), the suite with two seeds,
    the table."""
    out = tmp_path / "mini"
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "reproduce" / "mini.sh"), "-o", str(out), "--jobs", "2"],
        capture_output=True, text=True, check=False, env={**os.environ, "PYTHON": sys.executable},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for run in ("moco-v2", "mochi"):
        assert (out / "pretrain" / run / "checkpoint_0001.pth.tar").is_file()
        assert f"done: {run} in " in done.stdout and (out / "logs" / f"{run}.log").is_file()
        threads = json.loads((out / "pretrain" / run / "config.json").read_text())["intra_op_threads"]
        share = max(1, len(os.sched_getaffinity(0)) // 2)  # two runs at a time: half the cores each
        assert threads == int(os.environ.get("OMP_NUM_THREADS") or share)
    rows = list(csv.DictReader(io.StringIO((out / "table.csv").read_text())))
    labels = ["moco-v2/checkpoint_0001.pth.tar", "mochi/checkpoint_0001.pth.tar", "random-init resnet18"]
    assert [r["backbone"] for r in rows] == labels
    lbfgs = [c for c in rows[0] if "lbfgs" in c and c.endswith(" n")]
    assert lbfgs and all(r[lbfgs[0]] == "2" for r in rows)  # two seeds per cell
    for picture in ("plots/table.png", "plots/curves.png", "suites/fashion-mnist/plots/knn.png"):
        assert (out / picture).read_bytes()[:4] == b"\x89PNG", picture


def test_pretrain_arguments_become_the_config_the_command_would_run(tmp_path):
    import click

    from mochi.cli.pretrain import config_from_args

    args = ["--data", "fashion-mnist-embedded", "-a", "resnet18", "--mochi-n", "64", "--mochi-s", "32",
            "--epochs", "2", "-o", str(tmp_path), "--resume", "auto", "-q"]  # fmt: skip
    cfg = config_from_args(args)
    assert (cfg.arch, cfg.n_hard, cfg.s, cfg.epochs, cfg.resume) == ("resnet18", 64, 32, 2, "auto")
    with pytest.raises(click.BadParameter):
        config_from_args(["--epochs", "two"])
