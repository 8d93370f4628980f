"""Reproduce one transfer table: pretrain every method, run the suites on the checkpoints, write the table.

    python scripts/reproduce/reproduce.py PLAN -o DIR [data roots] [--launcher local|slurm] [--dry-run]

PLAN is one of scripts/reproduce/plans.py (in100-linear, in1k-voc, coco, mini, fashion-mnist); the settings
and their sources are in docs/protocols.md#reproduction-tables. Three stages, each resumable, so the same
command finishes an interrupted reproduction:

1. pretraining, one `mochi pretrain --resume auto` per run (torchrun, or a SLURM job array);
2. one `mochi suite` per suite on the runs' last checkpoints (finished evaluations are skipped);
3. `mochi table` over every suite's records (Markdown, LaTeX, CSV), `mochi plot` dot plots of the table, kNN
   top-1 against k (both with the plan's rows) and the training curves of every run.

``--launcher local`` runs the stages one after the other on this machine (torchrun for pretraining);
``--jobs N`` pretrains N runs at a time, each with its share of the GPUs (``CUDA_VISIBLE_DEVICES``) or, on a
CPU machine, of the cores (``OMP_NUM_THREADS``), and its output in ``DIR/logs/RUN.log``.
``--launcher slurm`` submits them through submitit (``pip install 'mochi-ssl[slurm]'``): a job array per
stage, each stage depending on the previous one (afterok), pretraining jobs requeueing themselves when
preempted. ``--dry-run`` prints every command and the expected GPU-hours, and runs nothing.
Locally, SIGTERM and SIGHUP are passed on to the running stages (pretraining stops with a checkpoint) and
nothing new starts, as after Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plans import PLANS, Plan  # noqa: E402

TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
MOCHI = [sys.executable, "-m", "mochi"]


@dataclass
class Stage:
    """One stage: its `mochi` argument lists, how many GPUs each needs, whether it is distributed."""

    name: str
    commands: list[list[str]]
    distributed: bool = False  # pretraining: one process per GPU (torchrun / SLURM tasks)
    gpu_hours: list[float | None] | None = None
    labels: list[str] | None = None  # one name per command (its log file under --jobs)
    progress: list[tuple[Path, int]] | None = None  # pretraining: each run's folder and its epochs


def checkpoint_path(out: Path, run_name: str, epochs: int) -> Path:
    """The last checkpoint of a run: the one every run writes (``checkpoint_{epoch:04d}.pth.tar``)."""
    return out / "pretrain" / run_name / f"checkpoint_{epochs - 1:04d}.pth.tar"


def build_stages(plan: Plan, args: argparse.Namespace) -> list[Stage]:
    out = Path(args.output)
    data = ["--data", args.imagenet] if "imagenet" in plan.needs else []
    pretrain = Stage(
        "pretrain",
        [["pretrain", *run.args, *data, "-o", str(out / "pretrain" / run.name), "--resume", "auto", "-q"]
         for run in plan.runs],
        distributed=True,
        gpu_hours=[run.gpu_hours for run in plan.runs],
        labels=[run.name for run in plan.runs],
        progress=[(out / "pretrain" / run.name, run.epochs) for run in plan.runs],
    )  # fmt: skip
    checkpoints = [str(checkpoint_path(out, run.name, run.epochs)) for run in plan.runs]
    suites = []
    for s in plan.suites:
        extra = ["--data-root", args.imagenet] if "imagenet" in s.needs else []
        gpus = (
            ["--num-gpus", str(args.gpus_per_node)] if "detectron2" in s.needs and args.gpus_per_node else []
        )
        baselines = [a for arch in plan.baselines for a in ("--baseline", arch)]
        suites.append(["suite", *checkpoints, "--suite", s.suite, *s.args, *extra, *gpus, *baselines,
                       "-o", str(out / "suites" / s.suite)])  # fmt: skip
    results = [str(out / "suites" / s.suite / "results") for s in plan.suites]
    rows = ["--rows", plan.table_rows]
    report = [
        ["table", *results, *rows, "-o", str(out / "table.md")],
        ["table", *results, *rows, "--format", "latex", "-o", str(out / "table.tex")],
        ["table", *results, *rows, "--format", "csv", "-o", str(out / "table.csv")],
        ["plot", "table", *results, *rows, "-o", str(out / "plots" / "table")],
        ["plot", "curves", *(str(out / "pretrain" / run.name) for run in plan.runs), "-o",
         str(out / "plots" / "curves")],
    ]  # fmt: skip
    if _has_knn(plan):
        report.insert(4, ["plot", "knn", *results, *rows, "-o", str(out / "plots" / "knn")])
    return [pretrain, Stage("suites", suites), Stage("report", report)]


def _has_knn(plan: Plan) -> bool:
    """Whether a suite of ``plan`` has a kNN step (detection-only plans have no kNN records to plot)."""
    from mochi.eval.suites import get_suite

    return any(step.task == "knn" for s in plan.suites for step in get_suite(s.suite).steps)


def local_command(stage: Stage, argv: list[str], nproc: int) -> list[str]:
    if stage.distributed:
        return [*TORCHRUN, "--standalone", f"--nproc-per-node={nproc}", "-m", "mochi", *argv]
    return [*MOCHI, *argv]


def dry_run(plan: Plan, stages: list[Stage], args: argparse.Namespace) -> None:
    print(f"# {plan.name}: {plan.title}")
    print(f"# launcher {args.launcher}; settings and sources: docs/protocols.md#reproduction-tables")
    if args.jobs > 1:
        print(f"# pretraining {args.jobs} runs at a time, each with its share of the GPUs or CPU cores; "
              f"logs in {Path(args.output) / 'logs'}")  # fmt: skip
    total = 0.0
    for stage in stages:
        print(
            f"\n## stage {stage.name}" + (" (after the previous stage)" if stage.name != "pretrain" else "")
        )
        for i, argv in enumerate(stage.commands):
            line = shlex.join(local_command(stage, argv, args.nproc_per_node))
            hours = stage.gpu_hours[i] if stage.gpu_hours else None
            if hours is not None:
                total += hours
                line += f"    # ~{hours:,.0f} V100 GPU-hours"
            print(line)
    print(f"\n# expected pretraining GPU-hours: ~{total:,.0f} (V100; moco README: 53 h on 8 V100 for 200 "
          "ImageNet-1k epochs, scaled by images x epochs); suites and detection not estimated")  # fmt: skip


def visible_gpus() -> list[str]:
    """The GPUs this machine lets us use, as CUDA_VISIBLE_DEVICES entries ([] on a CPU machine)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES") is not None:
        return [d for d in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if d.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def slot_envs(jobs: int, nproc: int, gpus: list[str], cores: int, environ: dict[str, str]) -> list[dict]:
    """The environment of each of ``jobs`` concurrent pretraining slots of ``nproc`` processes: disjoint
    GPUs where there are GPUs, else an equal share of the cores as intra-op threads (a user's
    OMP_NUM_THREADS wins). Raises ValueError when the GPUs cannot be shared out."""
    envs = []
    for slot in range(jobs):
        env = dict(environ)
        if gpus:
            if jobs * nproc > len(gpus):
                raise ValueError(
                    f"--jobs {jobs} x --nproc-per-node {nproc} needs {jobs * nproc} GPUs, this machine "
                    f"shows {len(gpus)}: lower --jobs (or --nproc-per-node)"
                )
            env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus[slot * nproc : (slot + 1) * nproc])
        elif not environ.get("OMP_NUM_THREADS"):  # unset or empty
            env["OMP_NUM_THREADS"] = str(max(1, cores // (jobs * nproc)))
        envs.append(env)
    return envs


class Stopped(Exception):
    """A stop signal (SIGTERM: ``kill``, a job's time limit; SIGHUP: the terminal closed) reached this
    process; the handler of :func:`stop_on_signals` raises it."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def stop_on_signals() -> None:
    """Turn SIGTERM and SIGHUP into :class:`Stopped` in the main thread. Unlike Ctrl-C, which the terminal
    sends to every process of the group, these reach this process alone: whoever catches ``Stopped`` passes
    the signal on to the running children (pretraining stops after its step, with a checkpoint)."""

    def raise_stopped(signum, frame):
        raise Stopped(signum)

    for sig in STOP_SIGNALS:
        signal.signal(sig, raise_stopped)


def _pass_on(err: BaseException, procs) -> None:
    """Send a stop signal on to ``procs`` (Ctrl-C reached them already) and wait for each to end."""
    if isinstance(err, Stopped):
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(err.signum)
    for proc in procs:
        proc.wait()


def _duration(seconds: float) -> str:
    minutes, s = divmod(int(round(seconds)), 60)
    return f"{minutes // 60}h{minutes % 60:02d}m{s:02d}s" if minutes >= 60 else f"{minutes}m{s:02d}s"


def _say(line: str) -> None:
    """A line on stdout that leaves the epoch bar (on stderr) whole."""
    from tqdm import tqdm

    tqdm.write(line, file=sys.stdout)
    sys.stdout.flush()


def epochs_done(run_dir: Path) -> int:
    """How many epochs a pretraining run has finished: one past the last epoch record of its metrics.jsonl."""
    done = 0
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    except OSError:  # not started yet
        return 0
    for line in lines:
        if '"type": "epoch"' not in line:
            continue
        try:
            done = max(done, int(json.loads(line)["epoch"]) + 1)
        except (ValueError, KeyError, TypeError):  # a line being written
            continue
    return done


def _watch_epochs(progress: list[tuple[Path, int]], stop: threading.Event, every: float) -> None:
    """A bar over the epochs of every run (rate and ETA), read from their metrics.jsonl until ``stop``."""
    from tqdm import tqdm

    total = sum(epochs for _, epochs in progress)
    count = lambda: sum(min(epochs_done(d), n) for d, n in progress)  # noqa: E731
    with tqdm(
        total=total, initial=count(), unit="epoch", desc="[pretrain] epochs", dynamic_ncols=True
    ) as bar:
        while not stop.wait(every):
            bar.update(count() - bar.n)
        bar.update(count() - bar.n)


def run_concurrently(
    commands: list[list[str]],
    labels: list[str],
    envs: list[dict],
    log_dir: Path,
    progress: list[tuple[Path, int]] | None = None,
    poll_s: float = 5.0,
) -> list[str]:
    """Run ``commands`` with ``len(envs)`` at a time, each in a free slot's environment, its output in
    ``log_dir/LABEL.log``; prints a line as each starts and ends, and with ``progress`` (each run's folder and
    epochs) a bar over all their epochs. After a failure or an interruption (Ctrl-C, or :class:`Stopped`,
    which is passed on to the running ones) nothing new starts and the running ones finish or stop, their
    work kept. Returns the failures, one line each."""
    log_dir.mkdir(parents=True, exist_ok=True)
    free = list(range(len(envs)))
    lock = threading.Lock()
    failures: list[str] = []
    running: list[subprocess.Popen] = []
    finished, stopping = [0], [False]
    t0 = time.monotonic()

    def one(cmd: list[str], label: str) -> None:
        with lock:
            if failures or stopping[0]:
                return
            slot = free.pop()
        log = log_dir / f"{label}.log"
        _say(f"[pretrain] start {label} (slot {slot}; log {log})")
        start = time.monotonic()
        try:
            with open(log, "ab") as f:
                f.write(f"$ {shlex.join(cmd)}\n".encode())
                f.flush()
                with lock:
                    if stopping[0]:  # stopped while this one was on its way
                        return
                    proc = subprocess.Popen(cmd, env=envs[slot], stdout=f, stderr=subprocess.STDOUT)
                    running.append(proc)
                code = proc.wait()
        finally:
            with lock:
                free.append(slot)
        with lock:
            finished[0] += 1
            took = _duration(time.monotonic() - start)
            if code != 0:
                failures.append(f"{label} (exit {code}; log {log})")
            status = "done" if code == 0 else f"FAILED (exit {code})"
            _say(f"[pretrain] {status}: {label} in {took}; {finished[0]}/{len(commands)} finished, "
                 f"{_duration(time.monotonic() - t0)} elapsed")  # fmt: skip

    stop_watch = threading.Event()
    watcher = None
    if progress:
        watcher = threading.Thread(target=_watch_epochs, args=(progress, stop_watch, poll_s), daemon=True)
        watcher.start()
    pool = ThreadPoolExecutor(max_workers=len(envs))
    futures = [pool.submit(one, cmd, label) for cmd, label in zip(commands, labels, strict=True)]
    try:
        for future in futures:
            future.result()
    except BaseException as err:  # Ctrl-C or Stopped: start nothing new, let the running runs stop
        with lock:
            stopping[0] = True
            started = list(running)
        _pass_on(err, started)
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    finally:
        stop_watch.set()
        if watcher is not None:
            watcher.join()
    pool.shutdown()
    return failures


def run_local(stages: list[Stage], args: argparse.Namespace) -> None:
    for stage in stages:
        if stage.distributed and args.jobs > 1:
            from mochi.distributed import usable_cores

            try:
                envs = slot_envs(
                    args.jobs, args.nproc_per_node, visible_gpus(), usable_cores(), dict(os.environ)
                )
            except ValueError as err:
                sys.exit(f"reproduce: {err}")
            cmds = [local_command(stage, argv, args.nproc_per_node) for argv in stage.commands]
            failed = run_concurrently(cmds, stage.labels, envs, Path(args.output) / "logs", stage.progress)
            if failed:
                sys.exit(f"reproduce: stage {stage.name} failed: {'; '.join(failed)}\n"
                         "fix the cause and run the same command again: finished work is kept")  # fmt: skip
            continue
        for argv in stage.commands:
            cmd = local_command(stage, argv, args.nproc_per_node)
            print(f"[{stage.name}] {shlex.join(cmd)}", flush=True)
            proc = subprocess.Popen(cmd)
            try:
                code = proc.wait()
            except BaseException as err:
                _pass_on(err, [proc])
                raise
            if code != 0:
                sys.exit(f"reproduce: stage {stage.name} failed (exit {code}): {shlex.join(cmd)}\n"
                         "fix the cause and run the same command again: finished work is kept")  # fmt: skip


def run_slurm(stages: list[Stage], args: argparse.Namespace) -> list:
    """Submit every stage through submitit; with ``--cluster local`` (tests, debugging) each stage is waited
    for before the next is submitted, since submitit's local executor has no job dependencies."""
    try:
        import submitit
    except ImportError:
        sys.exit("reproduce: --launcher slurm needs submitit: pip install 'mochi-ssl[slurm]'")
    from mochi.cli.slurm import CommandJob

    folder = Path(args.output) / "slurm" / "%j"
    executor = submitit.AutoExecutor(folder=folder, cluster=args.cluster)
    previous: list = []
    submitted = []
    for stage in stages:
        gpus = args.gpus_per_node if stage.distributed or stage.name == "suites" else 0
        params = {
            "name": f"mochi-{stage.name}", "timeout_min": args.time_min,
            "nodes": args.nodes if stage.distributed else 1,
            "tasks_per_node": max(gpus, 1) if stage.distributed else 1, "gpus_per_node": gpus,
            "cpus_per_task": args.cpus_per_task, "slurm_signal_delay_s": 120,
        }  # fmt: skip
        if args.partition:
            params["slurm_partition"] = args.partition
        extra = {"account": args.account} if args.account else {}
        if previous and executor.cluster == "slurm":
            extra["dependency"] = "afterok:" + ":".join(str(j.job_id) for j in previous)
        if extra:
            params["slurm_additional_parameters"] = extra
        executor.update_parameters(**params)
        with executor.batch():
            jobs = [executor.submit(CommandJob(), argv) for argv in stage.commands]
        print(f"[{stage.name}] submitted {', '.join(str(j.job_id) for j in jobs)}", flush=True)
        if executor.cluster != "slurm":
            for job in jobs:
                job.result()  # raises with the job's own error if it failed
        previous = jobs
        submitted += jobs
    return submitted


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("plan", choices=sorted(PLANS))
    p.add_argument("-o", "--output", required=True, help="Reproduction folder (pretrain/, suites/, tables)")
    p.add_argument("--imagenet", help="ImageNet folder with train/ and val/ (ImageNet plans)")
    p.add_argument("--launcher", choices=("local", "slurm"), default="local")
    p.add_argument(
        "--dry-run", action="store_true", help="Print every command and the GPU-hours; run nothing"
    )
    p.add_argument("--nproc-per-node", type=int, default=1, help="local: pretraining processes (GPUs)")
    p.add_argument(
        "--jobs", type=int, default=1,
        help="local: pretraining runs at a time, each with its share of the GPUs or the CPU cores",
    )  # fmt: skip
    p.add_argument("--nodes", type=int, default=1, help="slurm: nodes per pretraining job")
    p.add_argument("--gpus-per-node", type=int, default=0, help="slurm: GPUs per node (one task each)")
    p.add_argument("--partition", help="slurm: partition")
    p.add_argument("--account", help="slurm: account")
    p.add_argument("--time-min", type=int, default=72 * 60, help="slurm: time limit per job, minutes")
    p.add_argument("--cpus-per-task", type=int, default=10, help="slurm: CPUs per task (data loading)")
    p.add_argument("--cluster", default=None, help=argparse.SUPPRESS)  # submitit cluster: local in tests
    args = p.parse_args(argv)
    plan = PLANS[args.plan]
    if "imagenet" in plan.needs and not args.imagenet:
        p.error(f"plan {plan.name} needs --imagenet DIR (the folder holding train/ and val/)")
    if args.imagenet and not args.dry_run and not (Path(args.imagenet) / "train").is_dir():
        p.error(f"--imagenet {args.imagenet}: no train/ folder there; give the ImageNet root")
    if "detectron2" in plan.needs and not args.dry_run and not os.environ.get("DETECTRON2_DATASETS"):
        p.error(f"plan {plan.name} fine-tunes detectors: set DETECTRON2_DATASETS to the folder holding "
                "VOC2007/, VOC2012/ and coco/ (Detectron2's convention)")  # fmt: skip
    if args.jobs < 1 or args.nproc_per_node < 1:
        p.error(f"--jobs {args.jobs} / --nproc-per-node {args.nproc_per_node}: both must be at least 1")
    if args.jobs > 1 and args.launcher != "local":
        p.error(f"--jobs {args.jobs} is for --launcher local: SLURM already runs a stage's jobs side by side")
    if args.launcher == "slurm" and args.cluster is None:
        args.cluster = "slurm"
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    plan = PLANS[args.plan]
    stages = build_stages(plan, args)
    if args.dry_run:
        dry_run(plan, stages, args)
    elif args.launcher == "local":
        stop_on_signals()
        try:
            run_local(stages, args)
        except Stopped as err:
            print(f"reproduce: stopped by {err}; the running stages stopped with their work kept "
                  "(pretraining with a checkpoint): run the same command again to go on",
                  file=sys.stderr)  # fmt: skip
            sys.exit(128 + err.signum)
        print(f"done: {Path(args.output) / 'table.md'}")
    else:
        run_slurm(stages, args)


if __name__ == "__main__":
    main()
