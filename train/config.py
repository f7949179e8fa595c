"""The training configuration: one dataclass, defaults = the paper's settings.

Each field is the one definition of a training option: its default, its help
text, its command-line group and what `--resume` may do with it live in the
field's metadata (`option()`), and train/cli.py builds the `train` flags from
them; the resume and fine-tuning checks in train/trainer.py read the same
metadata.  A `TrainConfig` is written into every checkpoint as `config.json`
(plus the data's mel parameters), so a checkpoint alone says how to rebuild its
networks.  Fields left as None take the chosen model's paper default
(`resolved()`): CycleGAN uses instance norm, no dropout and the LSGAN loss;
Pix2Pix uses batch norm, dropout 0.5 and the vanilla (BCE) GAN loss.

This module imports nothing heavy, so the CLI can read defaults instantly.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from cluster.errors import UserError
from cluster.options import option as shared_option
from cluster.options import option_fields as shared_option_fields

MODELS = ("cyclegan", "pix2pix")
NORMS = ("instance", "batch")
GAN_MODES = ("lsgan", "vanilla")
PRECISIONS = ("auto", "fp32", "bf16")
SHUFFLES = ("full", "local")

# What `--resume` may do with an option: FIXED ones must equal the run's saved value,
# FREE ones (run length, logging, speed) may change, KEPT ones keep the saved value.
FIXED, FREE, KEPT = "fixed", "free", "kept"

# Per-model paper defaults for the fields that differ between the two models.
_MODEL_DEFAULTS = {
    "cyclegan": {"norm": "instance", "dropout": False, "gan_mode": "lsgan"},
    "pix2pix": {"norm": "batch", "dropout": True, "gan_mode": "vanilla"},
}
# Fields that older checkpoints carry and this version no longer has (dropped on load).
_RETIRED_FIELDS = {"crash_at_step", "crash_rank", "extra"}
# Keys written into config.json beside the options.
_CHECKPOINT_KEYS = {"mel_params", "steps_per_epoch", "total_steps"}


class TrainOptionError(UserError):
    """A training option out of range, or a config that names unknown options."""


def option(default, help: str, group: str, *, on_resume: str = FIXED, choices=None,
           architecture: bool = False, metavar: str | None = None):
    """A TrainConfig field that is also a `cycledrums train` flag (cluster/options.py).

    `on_resume` says what --resume may do with it; `architecture` marks the fields a
    fine-tuning run (--init-from) takes from its source run, because they shape the
    networks' weights.
    """
    return shared_option(default, help, group, choices=choices, metavar=metavar,
                         on_resume=on_resume, architecture=architecture)


@dataclass
class TrainConfig:
    model: str = option("cyclegan", "cyclegan (unpaired, the paper's) or pix2pix (paired baseline)",
                        "model", choices=MODELS, architecture=True)
    # Architecture (paper: resnet_9blocks ngf 64; 70x70 PatchGAN ndf 64 n_layers 3; unet_256).
    ngf: int = option(64, "generator width", "architecture", architecture=True)
    ndf: int = option(64, "critic width", "architecture", architecture=True)
    n_blocks: int = option(9, "ResNet generator blocks", "architecture", architecture=True)
    n_layers_d: int = option(3, "PatchGAN layers (3 = 70x70 patches)", "architecture",
                             architecture=True)
    unet_downs: int = option(8, "U-Net levels for pix2pix (8 = unet_256)", "architecture",
                             architecture=True)
    norm: str | None = option(None, "normalisation (default: instance for cyclegan, batch for "
                              "pix2pix)", "architecture", choices=NORMS, architecture=True)
    dropout: bool | None = option(None, "dropout 0.5 in the generator (default: on for pix2pix, "
                                  "off for cyclegan)", "architecture", architecture=True)
    # Losses.
    gan_mode: str | None = option(None, "adversarial loss (default: lsgan for cyclegan, vanilla "
                                  "for pix2pix)", "losses and optimiser", choices=GAN_MODES)
    lambda_cycle: float = option(10.0, "cycle-consistency weight, both ways",
                                 "losses and optimiser")
    lambda_identity: float = option(0.5, "identity loss weight, relative to the cycle weight",
                                    "losses and optimiser")
    lambda_l1: float = option(100.0, "pix2pix L1 weight", "losses and optimiser")
    # Real multitrack stems are paired, unlike the paper's FMA catalog: where a window's own
    # drums are known, an L1 pull toward them teaches where the hits go relative to the bass
    # (issue #30: without it the CycleGAN learns a re-timbred copy of the bass).
    lambda_paired: float = option(0.0, "cyclegan: L1 weight between the generated drums and "
                                  "the true drums of the same window; > 0 draws windows as "
                                  "(bass, drums) pairs (0 = unpaired, the paper's)",
                                  "losses and optimiser")
    pool_size: int = option(50, "image pool of past fakes per critic", "losses and optimiser")
    # Optimisation: Adam, constant lr then linear decay to zero over the last part.
    lr: float = option(2e-4, "Adam learning rate", "losses and optimiser")
    beta1: float = option(0.5, "Adam beta1", "losses and optimiser")
    beta2: float = option(0.999, "Adam beta2", "losses and optimiser")
    decay_fraction: float = option(0.5, "share of the run over which lr decays linearly to 0",
                                   "losses and optimiser")
    batch_size: int = option(1, "windows per worker per step", "losses and optimiser")
    seed: int = option(0, "random seed", "losses and optimiser")
    # local by default: a full shuffle moves the whole data set through the cluster twice per
    # epoch (bass and drums), about 39 GB each at the paper's 600,000 windows.
    shuffle: str = option("local", "local: random file/block order + a per-worker shuffle "
                          "buffer (scales to any data size); full: a global Ray Data "
                          "random_shuffle per epoch and stream",
                          "losses and optimiser", choices=SHUFFLES)
    shuffle_buffer: int = option(256, "windows in the local shuffle buffer",
                                 "losses and optimiser", on_resume=FREE)
    # Run length and checkpoints.
    epochs: int = option(12, "passes over the data", "run length and checkpoints", on_resume=FREE)
    max_steps: int | None = option(None, "run length in optimizer steps, instead of --epochs",
                                   "run length and checkpoints", on_resume=FREE)
    stop_after_steps: int | None = option(
        None, "end this invocation after this many steps with a checkpoint; continue later "
        "with --resume (default: run to the end)", "run length and checkpoints", on_resume=FREE)
    checkpoint_every: int = option(1000, "steps between checkpoints, and one at the end",
                                   "run length and checkpoints", on_resume=FREE)
    keep_checkpoints: int = option(3, "checkpoints kept in RUN_DIR", "run length and checkpoints",
                                   on_resume=FREE)
    init_from: str | None = option(
        None, "start a new run from the weights of a checkpoint or run folder (fine-tuning); "
        "the architecture is taken from it (default: random init)", "run length and checkpoints",
        on_resume=KEPT, metavar="CKPT")
    log_every: int | None = option(None, "steps between progress lines (default: a line about "
                                   "every 30 s of training)", "run length and checkpoints",
                                   on_resume=FREE)
    images_per_epoch: int = option(3, "windows in the preview PNG drawn each epoch",
                                   "run length and checkpoints", on_resume=FREE)
    # Speed.
    precision: str = option("auto", "auto = bf16 autocast where the hardware multiplies bf16 "
                            "natively (CUDA GPUs, CPUs with AMX or AVX512-BF16), fp32 elsewhere",
                            "speed", on_resume=FREE, choices=PRECISIONS)
    channels_last: bool | None = option(None, "channels-last memory format (default: on GPU only)",
                                        "speed", on_resume=FREE)
    compile: bool = option(False, "torch.compile the networks", "speed", on_resume=FREE)

    def resolved(self) -> "TrainConfig":
        """A copy with the model's paper defaults filled in, validated."""
        if self.model not in MODELS:
            raise TrainOptionError(f"model must be one of {MODELS}, got {self.model!r}")
        values = dataclasses.asdict(self)
        for key, default in _MODEL_DEFAULTS[self.model].items():
            if values[key] is None:
                values[key] = default
        cfg = TrainConfig(**values)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        checks = [
            (self.norm in NORMS, f"norm must be one of {NORMS}"),
            (self.gan_mode in GAN_MODES, f"gan_mode must be one of {GAN_MODES}"),
            (self.precision in PRECISIONS, f"precision must be one of {PRECISIONS}"),
            (self.shuffle in SHUFFLES, f"shuffle must be one of {SHUFFLES}"),
            (self.ngf >= 1 and self.ndf >= 1, "ngf and ndf must be >= 1"),
            (self.n_blocks >= 0, "n_blocks must be >= 0"),
            (self.n_layers_d >= 1, "n_layers_d must be >= 1"),
            (self.unet_downs >= 5, "unet_downs must be >= 5"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.max_steps is None or self.max_steps >= 1, "max_steps must be >= 1"),
            (self.checkpoint_every >= 1, "checkpoint_every must be >= 1"),
            (self.keep_checkpoints >= 1, "keep_checkpoints must be >= 1"),
            (self.log_every is None or self.log_every >= 1, "log_every must be >= 1"),
            (self.images_per_epoch >= 0, "images_per_epoch must be >= 0"),
            (self.lr >= 0, "lr must be >= 0"),
            (0.0 <= self.beta1 < 1.0 and 0.0 <= self.beta2 < 1.0, "beta1 and beta2 must be in [0, 1)"),
            (0.0 <= self.decay_fraction <= 1.0, "decay_fraction must be in [0, 1]"),
            (self.pool_size >= 0, "pool_size must be >= 0"),
            (self.lambda_paired >= 0, "lambda_paired must be >= 0"),
            (self.lambda_paired == 0 or self.model == "cyclegan",
             "lambda_paired is the cyclegan's paired term; pix2pix has --lambda-l1"),
            (self.shuffle_buffer >= 1, "shuffle_buffer must be >= 1"),
            (self.stop_after_steps is None or self.stop_after_steps >= 1,
             "stop_after_steps must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise TrainOptionError(message)

    @property
    def paired_batches(self) -> bool:
        """Whether training draws (bass, drums) windows together rather than independently."""
        return self.model == "pix2pix" or self.lambda_paired > 0

    def total_steps(self, steps_per_epoch: int) -> int:
        return self.max_steps if self.max_steps is not None else self.epochs * steps_per_epoch

    def lr_factor(self, step: int, total_steps: int) -> float:
        """Learning-rate multiplier before optimizer step `step` (0-based): 1, then linear to 0.

        The paper keeps lr constant for the first half and decays it linearly to zero
        over the second; `decay_fraction` is the share of steps that decay.
        """
        decay_steps = round(total_steps * self.decay_fraction)
        decay_start = total_steps - decay_steps
        if step < decay_start or decay_steps == 0:
            return 1.0
        # 1 at the first decaying step, reaching 0 at the (never taken) step `total_steps`.
        return max(0.0, 1.0 - (step - decay_start) / decay_steps)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names - _CHECKPOINT_KEYS - _RETIRED_FIELDS
        if unknown:
            raise TrainOptionError(f"unknown training options {sorted(unknown)}")
        return cls(**{k: v for k, v in d.items() if k in names})


def options_where(**metadata) -> tuple[str, ...]:
    """Names of the TrainConfig fields whose metadata has these values, in field order."""
    return tuple(f.name for f in dataclasses.fields(TrainConfig)
                 if all(f.metadata[k] == v for k, v in metadata.items()))


def option_fields() -> tuple[dataclasses.Field, ...]:
    return shared_option_fields(TrainConfig)


def uses_bf16(precision: str, device_type: str) -> bool:
    """Whether a run on `device_type` ('cuda' or 'cpu') autocasts to bf16.

    'auto' takes bf16 where the hardware multiplies it natively: CUDA GPUs, and CPUs with
    AMX tiles (Intel Xeon 4th generation and later) or AVX512-BF16 (AMD Zen 4 and later).
    There oneDNN runs a CycleGAN step 1.6-2.6x faster than fp32 (benchmarks/
    bench_train_step.py).  Elsewhere bf16 would be emulated and slower, so 'auto' keeps fp32.
    """
    if precision != "auto":
        return precision == "bf16"
    return device_type == "cuda" or (device_type == "cpu" and cpu_has_native_bf16())


def cpu_has_native_bf16() -> bool:
    import torch

    # torch has no public probe; a torch without these private ones counts as no.
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)
