"""End-to-end pretraining runs on the embedded data: checkpoints, logs, resume, warm-up, errors."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from fixtures import pid_of_rank

from mochi.cli import main
from mochi.data import load_dataset
from mochi.layout import list_checkpoints
from mochi.pretrain.config import PretrainConfig
from mochi.pretrain.train import lr_at_epoch, pretrain

TINY = [
    "--data", "fashion-mnist-embedded", "--limit", "128", "-a", "resnet18", "--image-size", "32",
    "--aug", "aug-plus-small", "-b", "32", "--moco-k", "64", "--moco-m", "0.99", "--bn-splits", "2",
    "-j", "0", "--log-every", "2", "-q",
]  # fmt: skip


def run_cli(args):
    res = CliRunner().invoke(main, ["pretrain", *args])
    return res


def epochs(run_dir):
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["type"] == "epoch"]


def test_checkpoint_layout_and_logs(tmp_path):
    out = tmp_path / "run"
    threads = torch.get_num_threads()
    res = run_cli([*TINY, "--epochs", "2", "--keep-last", "1", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert torch.get_num_threads() == threads  # the thread count chosen for the run is put back
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint_0001.pth.tar"]  # --keep-last 1
    ckpt = torch.load(out / "checkpoint_0001.pth.tar", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["arch"] == "resnet18" and "optimizer" in ckpt
    keys = ckpt["state_dict"].keys()
    assert "module.encoder_q.conv1.weight" in keys and "module.encoder_k.fc.2.weight" in keys
    assert ckpt["state_dict"]["module.queue"].shape == (128, 64)
    assert ckpt["mochi"]["queue_ptr"] == int(ckpt["state_dict"]["module.queue_ptr"]) == 0
    assert ckpt["mochi"]["config"]["queue_size"] == 64 and ckpt["mochi"]["versions"]["torch"]
    config = json.loads((out / "config.json").read_text())
    assert config["dataset"]["num_images"] == 128 and config["effective_lr"] == pytest.approx(0.03 * 32 / 256)
    assert config["loader_workers"] == 0 and config["intra_op_threads"] >= 1
    recs = epochs(out)
    assert [r["epoch"] for r in recs] == [0, 1]
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))  # tensorboard is a test dependency
    for r in recs:
        assert {"loss", "top1", "lr", "images_per_s", "pos_sim"} <= set(r) and 0 <= r["top1"] <= 1
    # the query encoder loads into a plain torchvision ResNet through the transfer reader
    from mochi.transfer import load_backbone

    state, report = load_backbone(out / "checkpoint_0001.pth.tar")
    assert report.arch == "resnet18" and not report.missing
    torch.testing.assert_close(state["conv1.weight"], ckpt["state_dict"]["module.encoder_q.conv1.weight"])


def test_cosine_schedule_is_the_reference_formula():
    cfg = PretrainConfig(epochs=10, batch_size=512)
    assert lr_at_epoch(cfg, 0) == pytest.approx(0.06)
    assert lr_at_epoch(cfg, 5) == pytest.approx(0.03)
    step = PretrainConfig(epochs=200, schedule="step", lr=0.03)
    assert lr_at_epoch(step, 119) == pytest.approx(0.03) and lr_at_epoch(step, 160) == pytest.approx(0.0003)


def test_no_mixing_before_warmup_then_mixing(tmp_path):
    out = tmp_path / "mochi"
    args = [*TINY, "--epochs", "2", "--mochi-n", "16", "--mochi-s", "32", "--mochi-s-prime", "8"]
    res = run_cli([*args, "--mochi-warmup", "1", "-o", str(out)])
    assert res.exit_code == 0, res.output
    first, second = epochs(out)
    assert first["mixing"] is False and "hard_sim" not in first and "synthetic_sim" not in first
    assert second["mixing"] is True and -1 <= second["hard_sim"] <= 1 and -1 <= second["synthetic_sim"] <= 1
    steps = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(s["mixing"] == (s["epoch"] >= 1) for s in steps)


def _tensorboard_steps(run_dir) -> dict[str, list[int]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(Path(run_dir) / "tensorboard"))
    acc.Reload()
    return {tag: [e.step for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_resume_is_bit_identical(tmp_path):
    args = [*TINY, "--epochs", "3", "--mochi-n", "16", "--mochi-s", "16", "--mochi-s-prime", "4",
            "--mochi-warmup", "1"]  # fmt: skip
    assert run_cli([*args, "-o", str(tmp_path / "a")]).exit_code == 0
    res = run_cli([*args, "--stop-after", "1", "-o", str(tmp_path / "b")])
    assert res.exit_code == 0 and len(list_checkpoints(tmp_path / "b")) == 1
    orphan = tmp_path / "b" / ".checkpoint_0001.pth.tar.x1y2z3.tmp"  # a save killed half-way
    orphan.write_bytes(b"half")
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(tmp_path / "b" / "tensorboard")) as tb:  # points of a run killed mid-epoch 1
        tb.add_scalar("step/loss", 123.0, 6)
        tb.add_scalar("step/loss", 123.0, 8)
    # Event files are read in name order, which starts with the creation second: the resumed run's file
    # must come after this one, as it would after a real crash.
    time.sleep(1.1)
    res = run_cli([*args, "--resume", "auto", "-o", str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    assert not orphan.exists()
    a = torch.load(tmp_path / "a" / "checkpoint_0002.pth.tar", weights_only=True)
    b = torch.load(tmp_path / "b" / "checkpoint_0002.pth.tar", weights_only=True)
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for k, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][k]), k
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    # the metrics log and the TensorBoard curves of the resumed run hold each point once
    assert [r["epoch"] for r in epochs(tmp_path / "b")] == [0, 1, 2]
    steps_b = _tensorboard_steps(tmp_path / "b")
    assert steps_b == _tensorboard_steps(tmp_path / "a") and 6 in steps_b["step/loss"]
    assert [r["loss"] for r in epochs(tmp_path / "b")] == [r["loss"] for r in epochs(tmp_path / "a")]


@pytest.mark.slow
def test_short_run_on_embedded_data_lowers_the_loss(tmp_path):
    cfg = PretrainConfig(
        data="fashion-mnist-embedded", limit=512, arch="resnet18", image_size=32, aug="aug-plus-small",
        epochs=6, batch_size=64, queue_size=256, momentum=0.99, bn_splits=2, workers=0, log_every=4,
        output=str(tmp_path / "run"),
    )  # fmt: skip
    pretrain(cfg, show_progress=False)
    losses = [r["loss"] for r in epochs(tmp_path / "run")]
    # epoch 0 starts from the random initial queue; from epoch 1 on the queue holds real keys only
    assert losses[-1] < losses[1] - 0.03, losses


def test_bad_options_give_clear_errors(tmp_path):
    out = tmp_path / "x"
    res = run_cli([*TINY, "--moco-k", "64", "--mochi-n", "65", "-o", str(out)])
    assert res.exit_code == 1 and "--mochi-n 65 exceeds the queue size K=64" in res.output
    res = run_cli([*TINY, "--moco-k", "100", "-o", str(out)])
    assert res.exit_code == 1 and "--moco-k 100 is not a multiple of the global batch 32" in res.output
    res = run_cli([*TINY, "--bn-splits", "3", "-o", str(out)])
    assert res.exit_code == 1 and "--bn-splits 3 must divide the per-process batch 32" in res.output
    res = run_cli([*TINY, "--mochi-s", "4", "-o", str(out)])
    assert res.exit_code == 1 and "--mochi-s needs --mochi-n N > 0" in res.output
    assert not out.exists()  # nothing written


def test_a_non_finite_loss_names_its_step_and_writes_no_checkpoint(tmp_path, monkeypatch):
    # Step statistics are read back once per logging step; the error must still name the step it happened at.
    import mochi.pretrain.moco as moco

    calls = []

    def loss_nan_at_third_step(logits):
        calls.append(1)
        loss = torch.nn.functional.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long))
        return loss * float("nan") if len(calls) == 3 else loss

    monkeypatch.setattr(moco, "contrastive_loss", loss_nan_at_third_step)
    out = tmp_path / "run"
    res = run_cli([*TINY, "--epochs", "1", "--log-every", "4", "-o", str(out)])
    assert res.exit_code == 1 and "loss became nan at epoch 1, step 3; lower --lr" in res.output
    assert not list_checkpoints(out)


def _folder(root: Path, n_per_class=8):
    ds = load_dataset("fashion-mnist-embedded", "test")
    for c in range(2):
        (root / "train" / f"class{c}").mkdir(parents=True)
    seen = {0: 0, 1: 0}
    for i in range(len(ds)):
        img, y = ds[i]
        if y in seen and seen[y] < n_per_class:
            img.save(root / "train" / f"class{y}" / f"{i}.png")
            seen[y] += 1
    return root


def test_missing_and_corrupt_data(tmp_path):
    base = [a for a in TINY if a not in ("fashion-mnist-embedded", "--data", "--limit", "128")]
    res = run_cli(["--data", str(tmp_path / "nowhere"), *base, "-o", str(tmp_path / "o1")])
    assert res.exit_code == 1 and "nowhere" in res.output
    root = _folder(tmp_path / "imgs")
    bad = root / "train" / "class0" / "broken.png"
    good = next((root / "train" / "class1").iterdir()).read_bytes()
    bad.write_bytes(good[: len(good) // 2])
    args = ["--data", str(root), *base, "-b", "8", "--moco-k", "16", "--epochs", "1"]
    res = run_cli([*args, "-o", str(tmp_path / "o2")])
    assert res.exit_code == 1 and "broken.png" in res.output and "--skip-corrupt" in res.output
    assert not list_checkpoints(tmp_path / "o2")
    res = run_cli([*args, "--skip-corrupt", "-o", str(tmp_path / "o3")])
    assert res.exit_code == 0, res.output
    assert epochs(tmp_path / "o3")[0]["corrupt_skipped"] >= 1


def test_existing_run_is_not_clobbered_and_resume_checks_options(tmp_path):
    out = tmp_path / "run"
    assert run_cli([*TINY, "--epochs", "1", "-o", str(out)]).exit_code == 0
    before = (out / "checkpoint_0000.pth.tar").read_bytes()
    res = run_cli([*TINY, "--epochs", "1", "-o", str(out)])
    assert res.exit_code == 1 and "--resume auto" in res.output
    res = run_cli([*TINY, "--epochs", "1", "--moco-t", "0.1", "--resume", "auto", "-o", str(out)])
    assert res.exit_code == 1 and "temperature: 0.2 -> 0.1" in res.output
    assert (out / "checkpoint_0000.pth.tar").read_bytes() == before
    bad = tmp_path / "bad.pth.tar"
    bad.write_bytes(before[:1000])
    res = run_cli([*TINY, "--epochs", "2", "--resume", str(bad), "-o", str(tmp_path / "r2")])
    assert res.exit_code == 1 and "truncated, corrupt" in res.output


@pytest.mark.slow
def test_torchrun_two_processes_cli(tmp_path):
    out = tmp_path / "ddp"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd = [
        *torchrun,
        "-m",
        "mochi.cli",
        "pretrain",
        *TINY,
        "--epochs",
        "1",
        "--bn-splits",
        "1",
        "-o",
        str(out),
    ]
    res = subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert res.returncode == 0, res.stderr[-3000:]
    config = json.loads((out / "config.json").read_text())
    assert config["world_size"] == 2 and config["bn_splits"] == 1
    ckpt = torch.load(out / "checkpoint_0000.pth.tar", weights_only=True)
    assert int(ckpt["state_dict"]["module.queue_ptr"]) == 0  # 4 steps x 32 keys = 2 x K


def _snapshot(run_dir):
    return {p.name: p.read_bytes() for p in Path(run_dir).iterdir() if p.is_file()}


@pytest.mark.slow
def test_resume_never_mixes_two_runs_in_one_folder(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        assert run_cli([*TINY, "--epochs", "2", "--stop-after", "1", "-o", str(out)]).exit_code == 0
    before = _snapshot(b)
    res = run_cli([*TINY, "--epochs", "2", "--resume", str(a / "checkpoint_0000.pth.tar"), "-o", str(b)])
    assert res.exit_code == 1 and "resuming would mix the two" in res.output and f"--output {a}" in res.output
    assert _snapshot(b) == before  # nothing replaced, nothing truncated
    # into an empty folder (a branch of run a) and into run a itself: both fine
    res = run_cli(
        [*TINY, "--epochs", "2", "--resume", str(a / "checkpoint_0000.pth.tar"), "-o", str(tmp_path / "c")]
    )
    assert res.exit_code == 0, res.output
    res = run_cli([*TINY, "--epochs", "2", "--resume", str(a / "checkpoint_0000.pth.tar"), "-o", str(a)])
    assert res.exit_code == 0, res.output
    assert [p.name for p in list_checkpoints(a)] == ["checkpoint_0000.pth.tar", "checkpoint_0001.pth.tar"]


@pytest.mark.parametrize("resume", [[], ["--resume", "auto"]])
def test_a_folder_with_run_files_but_no_checkpoint_is_not_wiped(tmp_path, resume):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text('{"seed": 7}\n')
    (out / "metrics.jsonl").write_text('{"type": "step", "epoch": 0}\n')
    before = _snapshot(out)
    res = run_cli([*TINY, "--epochs", "1", *resume, "-o", str(out)])
    assert res.exit_code == 1 and "config.json and metrics.jsonl of an earlier run" in res.output
    assert _snapshot(out) == before


@pytest.mark.slow
def test_a_torn_last_metrics_line_does_not_block_resume(tmp_path):
    out = tmp_path / "run"
    assert run_cli([*TINY, "--epochs", "2", "--stop-after", "1", "-o", str(out)]).exit_code == 0
    with open(out / "metrics.jsonl", "a") as fh:
        fh.write('{"type": "step", "epo')  # killed mid-write
    res = run_cli([*TINY, "--epochs", "2", "--resume", "auto", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert [r["epoch"] for r in epochs(out)] == [0, 1]
    # a damaged line that is not the last one is an error naming the line, not a traceback
    lines = (out / "metrics.jsonl").read_text().splitlines()
    (out / "metrics.jsonl").write_text("\n".join(["{broken", *lines]) + "\n")
    (out / "checkpoint_0001.pth.tar").unlink()
    res = run_cli([*TINY, "--epochs", "2", "--resume", "auto", "-o", str(out)])
    assert res.exit_code == 1 and "metrics.jsonl line 1 is not JSON" in res.output


def _resume_error(tmp_path, path, *extra):
    # --data points nowhere: the checkpoint must be refused before the data is even looked at
    args = [*TINY, "--data", str(tmp_path / "no-such-data"), "--epochs", "2", *extra]
    res = run_cli([*args, "--resume", str(path), "-o", str(tmp_path / "out")])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert not (tmp_path / "out").exists()
    return res.output


def test_bad_resume_files_are_refused_clearly_before_the_data_load(tmp_path):
    empty = tmp_path / "empty.pth.tar"
    empty.write_bytes(b"")
    assert "is empty (0 bytes)" in _resume_error(tmp_path, empty)

    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    evil = tmp_path / "evil.pth.tar"
    torch.save({"epoch": 1, "state_dict": {}, "optimizer": {}, "x": Evil()}, evil)
    out = _resume_error(tmp_path, evil)
    assert "refusing to load" in out and "system" in out and "weights_only" not in out

    other_arch = tmp_path / "r50.pth.tar"  # the official MoCo layout: no mochi block, only "arch"
    torch.save({"epoch": 1, "arch": "resnet50", "state_dict": {}, "optimizer": {}}, other_arch)
    assert "it holds a resnet50 but this run builds a resnet18; pass --arch resnet50" in _resume_error(
        tmp_path, other_arch
    )


@pytest.mark.slow
def test_resume_with_other_shapes_is_one_line(tmp_path):
    out = tmp_path / "run"
    assert run_cli([*TINY, "--epochs", "2", "--stop-after", "1", "-o", str(out)]).exit_code == 0
    ckpt = torch.load(out / "checkpoint_0000.pth.tar", weights_only=True)
    ckpt.pop("mochi")  # as the official code writes it: no saved options to compare
    torch.save(ckpt, tmp_path / "ref.pth.tar")
    res = run_cli([*TINY, "--epochs", "2", "--moco-dim", "32", "--resume", str(tmp_path / "ref.pth.tar"),
                   "-o", str(tmp_path / "new")])  # fmt: skip
    assert res.exit_code == 1 and "its tensors do not fit this model (other shapes" in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_config_replay_overrides_and_reproduces(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert run_cli([*TINY, "--epochs", "1", "--mochi-n", "16", "--mochi-s", "8", "-o", str(a)]).exit_code == 0
    # flags typed override the replayed config; everything else is the saved run's
    res = run_cli(["--config", str(a / "config.json"), "--epochs", "2", "-q", "-o", str(b)])
    assert res.exit_code == 0, res.output
    saved, replayed = json.loads((a / "config.json").read_text()), json.loads((b / "config.json").read_text())
    assert replayed["config"]["epochs"] == 2 and replayed["config"]["output"] == str(b)
    for run in (saved, replayed):
        del run["config"]["epochs"], run["config"]["output"]
    assert replayed == saved
    # nothing overridden but the output: the same weights, bit for bit
    res = run_cli(["--config", str(a / "config.json"), "-q", "-o", str(c)])
    assert res.exit_code == 0, res.output
    ca = torch.load(a / "checkpoint_0000.pth.tar", weights_only=True)
    cc = torch.load(c / "checkpoint_0000.pth.tar", weights_only=True)
    assert ca["state_dict"].keys() == cc["state_dict"].keys()
    for k, v in ca["state_dict"].items():
        assert torch.equal(v, cc["state_dict"][k]), k


def test_runs_saved_under_old_field_names_resume(tmp_path):
    out = tmp_path / "old"
    args = [*TINY, "--epochs", "2", "--mochi-n", "16", "--mochi-s", "8", "--mochi-warmup", "0"]
    assert run_cli([*args, "--stop-after", "1", "-o", str(out)]).exit_code == 0
    # rewrite the checkpoint and config.json as an earlier version wrote them (mochi_n, mochi_s, ...)
    path = out / "checkpoint_0000.pth.tar"
    ckpt = torch.load(path, weights_only=True)
    old = {
        {"n_hard": "mochi_n", "s": "mochi_s", "s_prime": "mochi_s_prime"}.get(k, k): v
        for k, v in ckpt["mochi"]["config"].items()
        if k != "symmetric"
    }  # fmt: skip (no --symmetric yet)
    ckpt["mochi"]["config"] = old
    torch.save(ckpt, path)
    saved = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**saved, "config": old}))
    # a replay of the old config.json reads the old names
    res = run_cli(["--config", str(out / "config.json"), "--epochs", "1", "-q", "-o", str(tmp_path / "new")])
    assert res.exit_code == 0, res.output
    new = json.loads((tmp_path / "new" / "config.json").read_text())["config"]
    assert (new["n_hard"], new["s"], new["s_prime"], new["symmetric"]) == (16, 8, 0, False)
    # resuming compares the old names with the new ones
    res = run_cli([*args[:-6], "--mochi-n", "8", "--mochi-s", "8", "--mochi-warmup", "0", "--resume", "auto",
                   "-o", str(out)])  # fmt: skip
    assert res.exit_code == 1 and "n_hard: 16 -> 8" in res.output
    # a run saved before --symmetric existed was asymmetric
    res = run_cli([*args, "--symmetric", "--resume", "auto", "-o", str(out)])
    assert res.exit_code == 1 and "symmetric: False -> True" in res.output
    res = run_cli([*args, "--resume", "auto", "-o", str(out)])
    assert res.exit_code == 0, res.output


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads /proc")
def test_a_killed_rank_stops_the_other_within_seconds(tmp_path):
    import signal
    import uuid

    out, marker = tmp_path / "ddp", uuid.uuid4().hex
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "mochi.cli", "pretrain", *TINY, "--limit", "4096", "--epochs", "1", "--bn-splits", "1",
           "--log-every", "1", "-o", str(out)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MOCHI_FAULT_TEST": marker, "MOCHI_DIST_TIMEOUT": "60"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 240
        while not (out / "metrics.jsonl").exists() or not (out / "metrics.jsonl").read_text().strip():
            assert time.time() < deadline and proc.poll() is None, "training did not start"
            time.sleep(0.2)
        os.kill(pid_of_rank(marker, 1, deadline), signal.SIGKILL)  # as the OOM killer would
        killed = time.time()
        output, _ = proc.communicate(timeout=120)
        took = time.time() - killed
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert took < 60, f"the surviving rank took {took:.0f} s to stop"
    assert "another process stopped answering" in output or "exitcode  : -9" in output, output[-3000:]
    assert not list(out.glob("checkpoint_*.pth.tar"))  # the epoch never finished: nothing half-saved
