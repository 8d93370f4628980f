"""What each reproduction script runs: the methods to pretrain, the suites to evaluate them with, the table.

Every setting and its source is written in docs/protocols.md#reproduction-tables; this file holds the same
settings as data (tests/test_reproduce.py checks that the two agree). A plan is a list of pretraining runs
(one `mochi pretrain` each, named by method and epochs) and a list of suites run on their last checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# MoCo-v2 on ImageNet: ResNet-50, batch 256, lr 0.03, K 65536, m 0.999, T 0.2, MLP, aug+, cosine
# (moco repo README: "--mlp --moco-t 0.2 --aug-plus --cos"); these are `mochi pretrain`'s defaults.
IMAGENET = ["-a", "resnet50", "-b", "256", "--aug", "aug-plus", "--image-size", "224", "-j", "8"]
# ImageNet-100: the MoCo-v2 recipe with a 16384 queue, the size a public ImageNet-100 reproduction used
# (the paper's own value could not be confirmed).
IN100 = [*IMAGENET, "--subset", "imagenet100", "--moco-k", "16384"]

# MoCHi (N, s, s'): the settings the paper's notation names (docs/protocols.md#mochi-hard-negative-mixing).
MOCHI_VARIANTS = {
    "mochi-1024-1024-128": (1024, 1024, 128),
    "mochi-1024-512-256": (1024, 512, 256),
    "mochi-256-512-0": (256, 512, 0),
}

# Published V100 time of one ImageNet-1k pretraining epoch, ResNet-50, batch 256: 53 hours for 200 epochs
# on 8 V100 GPUs (moco repo README). Expected GPU-hours scale it by images x epochs; no detection figure is
# published, so detection stages are listed without an estimate.
V100_HOURS_PER_IN1K_EPOCH = 53 * 8 / 200
IN1K_TRAIN_IMAGES = 1_281_167
IN100_TRAIN_IMAGES = 126_689


@dataclass(frozen=True)
class Run:
    """One pretraining run: ``name`` (its folder), its `mochi pretrain` options, the images per epoch."""

    name: str
    args: tuple[str, ...]
    epochs: int
    images: int  # training images per epoch (for the GPU-hour estimate; 0: no estimate)

    @property
    def gpu_hours(self) -> float | None:
        return (
            V100_HOURS_PER_IN1K_EPOCH * self.epochs * self.images / IN1K_TRAIN_IMAGES if self.images else None
        )


@dataclass(frozen=True)
class SuiteRun:
    """A `mochi suite` run on every checkpoint of ``runs`` (all runs when empty)."""

    suite: str
    args: tuple[str, ...] = ()
    runs: tuple[str, ...] = ()
    needs: tuple[str, ...] = ()  # data roots the suite reads: imagenet | detectron2


@dataclass(frozen=True)
class Plan:
    name: str
    title: str
    runs: tuple[Run, ...]
    suites: tuple[SuiteRun, ...]
    needs: tuple[str, ...]  # data roots: imagenet (pretraining + suites) | detectron2 (VOC / COCO)
    baselines: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)
    table_rows: str = "backbone"  # mochi table --rows: "method" pools the pretraining seeds of a recipe


def _mochi_args(n: int, s: int, s_prime: int, warmup: int) -> tuple[str, ...]:
    return (
        "--mochi-n",
        str(n),
        "--mochi-s",
        str(s),
        "--mochi-s-prime",
        str(s_prime),
        "--mochi-warmup",
        str(warmup),
    )


def _methods(base: list[str], epochs: int, images: int, warmup: int, seed: int = 0) -> tuple[Run, ...]:
    runs = [
        Run(
            f"moco-v2-{epochs}ep-seed{seed}",
            (*base, "--epochs", str(epochs), "--seed", str(seed)),
            epochs,
            images,
        )
    ]
    for name, (n, s, s_prime) in MOCHI_VARIANTS.items():
        args = (*base, "--epochs", str(epochs), "--seed", str(seed), *_mochi_args(n, s, s_prime, warmup))
        runs.append(Run(f"{name}-{epochs}ep-seed{seed}", args, epochs, images))
    return tuple(runs)


def _in1k_runs(epochs: int) -> tuple[Run, ...]:
    return _methods(IMAGENET, epochs, IN1K_TRAIN_IMAGES, warmup=15)


# CPU scale: ResNet-18 at 32 px on 512 embedded Fashion-MNIST images, 2 epochs (the main job's settings,
# smaller): proof that the batch path works end to end, not a result.
MINI = (
    "--data", "fashion-mnist-embedded", "--limit", "512", "-a", "resnet18", "--image-size", "32", "--aug",
    "aug-plus-small", "--epochs", "2", "-b", "64", "--moco-k", "512", "--moco-m", "0.99", "--bn-splits", "2",
    "-j", "0", "--log-every", "4",
)  # fmt: skip

# The CPU-scale study on the embedded Fashion-MNIST subset (docs/fashion_mnist_study.md): ResNet-18 at 32 px
# with the exploration's best recipe at this budget (tries e15 and e17 of docs/fashion_mnist_study.md: two
# seeds, evaluated at 32 px on 2,000 / 1,000 images: about 3 points above random init on kNN and lbfgs,
# level with the raw pixels): a 4,000-image pretraining subset drawn with the run's seed, batch 64, K 1024
# (a quarter of it), lr 0.03, T 0.2, 40 epochs; three pretraining seeds of MoCo-v2 and of two MoCHi
# settings, against random init and the raw pixels, evaluated on the whole embedded split (10k train / 2k
# test). MoCHi's N <= K = 1024; mixing from the third epoch.
FMNIST_EPOCHS = 40


def _fmnist_recipe(epochs: int, limit: int | None = 4000) -> tuple[str, ...]:
    subset = ("--limit", str(limit)) if limit else ()
    return (
        "--data", "fashion-mnist-embedded", *subset, "-a", "resnet18", "--image-size", "32",
        "--aug", "grey-small", "--crop-min", "0.4", "-b", "64", "--moco-k", "1024", "--moco-m", "0.99",
        "--temperature", "0.2", "--lr", "0.03", "--bn-splits", "4", "-j", "0", "--epochs", str(epochs),
    )  # fmt: skip


FMNIST = (*_fmnist_recipe(FMNIST_EPOCHS), "--keep-last", "2")
# --keep-last 2: the suite reads only the last checkpoint; 9 runs x 40 epochs of full checkpoints
# (139 MB each: both encoders, the queue and the optimizer state) would take 50 GB.
FMNIST_MOCHI = {"mochi-512-512-128": (512, 512, 128), "mochi-256-512-0": (256, 512, 0)}
FMNIST_SEEDS = (0, 1, 2)

# The study's recipe with a longer budget (l1 of docs/fashion_mnist_study.md, seventh to ninth rounds): all
# 10,000 embedded training images instead of 4,000 and 60 epochs instead of 40 (about 3.75 times the images
# seen), MoCo-v2 and the same two MoCHi settings with three pretraining seeds each. 36-46 minutes a run on one
# core beside a second run (measured: "The study" in that doc).
FMNIST_LONG_EPOCHS = 60
FMNIST_LONG = (*_fmnist_recipe(FMNIST_LONG_EPOCHS, limit=None), "--keep-last", "2")


# The main job (scripts/main_job.sh): the study's recipe, shortened to fit about 10 minutes on two CPU cores
# (two runs side by side, one core each): MoCo-v2 and MoCHi (512, 512, 128), seed 0, 30 epochs of the
# 4,000-image subset instead of 40; suite `fashion-mnist` with evaluation seed 0 against random init.
MAIN_EPOCHS = 30
# A checkpoint every 10 epochs, all three kept: the README's alignment-and-uniformity trajectory reads them.
MAIN = (*_fmnist_recipe(MAIN_EPOCHS), "--save-every", "10", "--keep-last", "3")
MAIN_RUNS = (
    Run("moco-v2", (*MAIN, "--seed", "0"), MAIN_EPOCHS, 0),
    Run("mochi-512-512-128", (*MAIN, "--seed", "0", *_mochi_args(512, 512, 128, 2)), MAIN_EPOCHS, 0),
)


def _fmnist_runs(base: tuple[str, ...] = FMNIST, epochs: int = FMNIST_EPOCHS) -> tuple[Run, ...]:
    runs = []
    for seed in FMNIST_SEEDS:
        args = (*base, "--seed", str(seed))
        runs.append(Run(f"moco-v2-seed{seed}", args, epochs, 0))
        for name, (n, s, s_prime) in FMNIST_MOCHI.items():
            runs.append(Run(f"{name}-seed{seed}", (*args, *_mochi_args(n, s, s_prime, 2)), epochs, 0))
    return tuple(runs)


PLANS: dict[str, Plan] = {
    "in100-linear": Plan(
        name="in100-linear",
        title="ImageNet-100 linear classification: MoCo-v2 and MoCHi (N, s, s'), ResNet-50, 200 epochs",
        runs=_methods(IN100, 200, IN100_TRAIN_IMAGES, warmup=10),
        suites=(SuiteRun("in100", needs=("imagenet",)),),
        needs=("imagenet",),
    ),
    "in1k-voc": Plan(
        name="in1k-voc",
        title="ImageNet-1k linear classification and VOC07+12 detection at 100, 200 and 800 epochs",
        runs=_in1k_runs(100) + _in1k_runs(200) + _in1k_runs(800),
        suites=(SuiteRun("in1k", needs=("imagenet",)), SuiteRun("voc", needs=("detectron2",))),
        needs=("imagenet", "detectron2"),
    ),
    "coco": Plan(
        name="coco",
        title="COCO detection and instance segmentation (Mask R-CNN R50-C4 1x) from the 200-epoch backbones",
        runs=_in1k_runs(200),
        suites=(SuiteRun("coco", needs=("detectron2",)),),
        needs=("imagenet", "detectron2"),
        notes=("shares its pretraining runs with in1k-voc when both use one --output",),
    ),
    "mini": Plan(
        name="mini",
        title="The same path at CPU scale: MoCo-v2 and MoCHi on 512 embedded Fashion-MNIST images",
        runs=(Run("moco-v2", MINI, 2, 0), Run("mochi", (*MINI, *_mochi_args(64, 64, 16, 1)), 2, 0)),
        suites=(
            SuiteRun(
                "fashion-mnist",
                args=(
                    "--seeds",
                    "0,1",
                    "--limit-train",
                    "600",
                    "--limit-test",
                    "300",
                    "--option",
                    "linear-lbfgs.patience=3",
                    "--option",
                    "linear-sgd-grid.epochs=5",
                ),
            ),
        ),  # fmt: skip
        needs=(),
        baselines=("resnet18",),
    ),
    "main": Plan(
        name="main",
        title="The main job: MoCo-v2 and MoCHi (512, 512, 128) on the embedded Fashion-MNIST subset, the "
        "study's recipe for 30 epochs, against random init",
        runs=MAIN_RUNS,
        suites=(SuiteRun("fashion-mnist", args=("--seeds", "0")),),
        needs=(),
        baselines=("resnet18",),
    ),
    "fashion-mnist": Plan(
        name="fashion-mnist",
        title="CPU-scale study: MoCo-v2 and two MoCHi settings, 3 pretraining seeds each, on the embedded "
        "Fashion-MNIST subset, against random init and raw pixels",
        runs=_fmnist_runs(),
        # The whole embedded split; one evaluation seed: the pretraining seeds give the spread, and random
        # init gets as many initialisation seeds as the methods get pretraining seeds.
        suites=(SuiteRun("fashion-mnist", args=("--seeds", "0", "--init-seeds", "0,1,2")),),
        needs=(),
        baselines=("resnet18", "pixels"),
        table_rows="method",
    ),
    "fashion-mnist-long": Plan(
        name="fashion-mnist-long",
        title="The CPU-scale study with a longer budget: MoCo-v2 and two MoCHi settings, 3 pretraining "
        "seeds each, 60 epochs of all 10,000 embedded Fashion-MNIST training images, against random init "
        "and raw pixels",
        runs=_fmnist_runs(FMNIST_LONG, FMNIST_LONG_EPOCHS),
        suites=(SuiteRun("fashion-mnist", args=("--seeds", "0", "--init-seeds", "0,1,2")),),
        needs=(),
        baselines=("resnet18", "pixels"),
        table_rows="method",
    ),
}
