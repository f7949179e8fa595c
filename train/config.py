"""The training configuration: one dataclass, defaults = the paper's settings.

A `TrainConfig` is written into every checkpoint as `config.json` (plus the data's
mel parameters), so a checkpoint alone says how to rebuild its networks.
Fields left as None take the chosen model's paper default (`resolved()`):
CycleGAN uses instance norm, no dropout and the LSGAN loss; Pix2Pix uses batch
norm, dropout 0.5 and the vanilla (BCE) GAN loss.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

MODELS = ("cyclegan", "pix2pix")
NORMS = ("instance", "batch")
GAN_MODES = ("lsgan", "vanilla")
PRECISIONS = ("auto", "fp32", "bf16")
SHUFFLES = ("full", "local")

# Per-model paper defaults for the fields that differ between the two models.
_MODEL_DEFAULTS = {
    "cyclegan": {"norm": "instance", "dropout": False, "gan_mode": "lsgan"},
    "pix2pix": {"norm": "batch", "dropout": True, "gan_mode": "vanilla"},
}


@dataclass
class TrainConfig:
    model: str = "cyclegan"
    # Architecture (paper: resnet_9blocks ngf 64; 70x70 PatchGAN ndf 64 n_layers 3; unet_256).
    ngf: int = 64
    ndf: int = 64
    n_blocks: int = 9
    n_layers_d: int = 3
    unet_downs: int = 8
    norm: str | None = None
    dropout: bool | None = None
    # Losses.
    gan_mode: str | None = None
    lambda_cycle: float = 10.0
    lambda_identity: float = 0.5
    lambda_l1: float = 100.0
    pool_size: int = 50
    # Optimisation: Adam, constant lr then linear decay to zero over the last part.
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    decay_fraction: float = 0.5
    batch_size: int = 1  # per worker
    epochs: int = 12
    max_steps: int | None = None  # when set, the run's length in steps (overrides epochs)
    # Run control.
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    log_every: int = 10
    images_per_epoch: int = 3
    stop_after_steps: int | None = None  # end this invocation early (resumable), e.g. a time slot
    init_from: str | None = None
    seed: int = 0
    shuffle: str = "full"  # full: Ray Data random_shuffle per epoch; local: block order + buffer
    shuffle_buffer: int = 256
    # Speed.
    precision: str = "auto"  # auto = bf16 autocast on GPU, fp32 on CPU
    channels_last: bool | None = None  # None = on GPU only
    compile: bool = False
    # Testing aid: a worker of this rank exits hard at this step of the first attempt.
    crash_at_step: int | None = None
    crash_rank: int = 1
    extra: dict = field(default_factory=dict)

    def resolved(self) -> "TrainConfig":
        """A copy with the model's paper defaults filled in, validated."""
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {MODELS}, got {self.model!r}")
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
            (self.log_every >= 1, "log_every must be >= 1"),
            (self.lr >= 0, "lr must be >= 0"),
            (0.0 <= self.decay_fraction <= 1.0, "decay_fraction must be in [0, 1]"),
            (self.pool_size >= 0, "pool_size must be >= 0"),
            (self.stop_after_steps is None or self.stop_after_steps >= 1,
             "stop_after_steps must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

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
        unknown = set(d) - names - {"mel_params", "steps_per_epoch", "total_steps"}
        if unknown:
            raise ValueError(f"unknown training options {sorted(unknown)}")
        return cls(**{k: v for k, v in d.items() if k in names})
