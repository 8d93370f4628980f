"""The offline Detectron2 patcher: drift fixes 7 and 8, on text and on the installed library."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("patch_detectron2", ROOT / "scripts" / "patch_detectron2.py")
patcher = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(patcher)

# The lines of upstream v0.6 that the two fixes rewrite, in their context.
HOOKS = """import torch


class LRScheduler(HookBase):
    def state_dict(self):
        if isinstance(self.scheduler, torch.optim.lr_scheduler._LRScheduler):
            return self.scheduler.state_dict()
        return {}

    def load_state_dict(self, state_dict):
        if isinstance(self.scheduler, torch.optim.lr_scheduler._LRScheduler):
            self.scheduler.load_state_dict(state_dict)
"""
COMMON = """            self._fallback_candidates.discard(cur_idx)
            cur_idx = self._rng.sample(self._fallback_candidates, k=1)[0]
"""


def _tree(tmp_path: Path) -> Path:
    (tmp_path / "detectron2" / "engine").mkdir(parents=True)
    (tmp_path / "detectron2" / "data").mkdir()
    (tmp_path / "detectron2" / "engine" / "hooks.py").write_text(HOOKS)
    (tmp_path / "detectron2" / "data" / "common.py").write_text(COMMON)
    return tmp_path


def test_drift_fixes_rewrite_the_upstream_text_once(tmp_path):
    root = _tree(tmp_path)
    patcher.fix_lr_scheduler_state(root)
    patcher.fix_map_dataset_sample(root)
    hooks = (root / "detectron2" / "engine" / "hooks.py").read_text()
    assert (
        hooks.count("isinstance(self.scheduler, _TORCH_LR_SCHEDULER)") == 2 and "._LRScheduler):" not in hooks
    )
    assert (
        "sample(sorted(self._fallback_candidates), k=1)"
        in (root / "detectron2" / "data" / "common.py").read_text()
    )
    before = {p: p.read_text() for p in root.rglob("*.py")}
    assert "already patched" in patcher.fix_lr_scheduler_state(root)  # a second run changes nothing
    assert "already patched" in patcher.fix_map_dataset_sample(root)
    assert before == {p: p.read_text() for p in root.rglob("*.py")}
    # the patched hook text is valid Python and its test accepts torch's own schedulers
    import torch

    namespace = {"HookBase": object}
    exec(compile(hooks, "hooks.py", "exec"), namespace)
    sched = torch.optim.lr_scheduler.StepLR(torch.optim.SGD([torch.zeros(1, requires_grad=True)], 0.1), 2)
    assert isinstance(sched, namespace["_TORCH_LR_SCHEDULER"])


def test_unexpected_upstream_text_is_refused(tmp_path):
    root = _tree(tmp_path)
    (root / "detectron2" / "data" / "common.py").write_text("something else\n")
    with pytest.raises(patcher.PatchError, match="common.py: expected 1 occurrence"):
        patcher.fix_map_dataset_sample(root)


def _needs_detectron2():
    pytest.importorskip("detectron2", reason="Detectron2 is not installed (scripts/install_detectron2.sh)")


@pytest.mark.detectron2
def test_installed_lr_scheduler_hook_checkpoints_torch_schedulers():
    _needs_detectron2()
    import torch
    from detectron2.engine import hooks

    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2)
    opt.step()
    sched.step()
    state = hooks.LRScheduler(opt, sched).state_dict()
    assert state and state["last_epoch"] == 1  # unpatched: {} (the state is silently not saved)
    other = torch.optim.lr_scheduler.StepLR(torch.optim.SGD([torch.zeros(1, requires_grad=True)], 0.1), 2)
    hooks.LRScheduler(opt, other).load_state_dict(state)
    assert other.last_epoch == 1


@pytest.mark.detectron2
def test_installed_map_dataset_falls_back_after_a_failed_sample():
    _needs_detectron2()
    from detectron2.data.common import MapDataset

    data = MapDataset(list(range(5)), lambda x: None if x == 3 else x * 10)
    got = [data[i] for i in range(5)]  # unpatched on Python >= 3.11: TypeError from random.sample(set)
    assert got[:3] == [0, 10, 20] and got[4] == 40 and got[3] in (0, 10, 20, 40)
