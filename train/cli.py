"""`cycledrums train`: CycleGAN / Pix2Pix on Ray Train.  No heavy imports at parse time."""
from __future__ import annotations

import argparse
import sys

from cluster.resources import add_device_option
from cycledrums_cli import add_job_options

from train.config import GAN_MODES, MODELS, NORMS, PRECISIONS, SHUFFLES, TrainConfig

_DEFAULTS = TrainConfig()


def _default(name: str, note: str = "") -> str:
    value = getattr(_DEFAULTS, name)
    return f"(default: {value}{', ' + note if note else ''})"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train the CycleGAN (or the Pix2Pix baseline) on prepared windows with Ray Train",
        description="Train bass->drums on a `prepare` window set (Parquet, local or s3://) with "
        "Ray Train: data-parallel workers (DDP), checkpoints every K steps into RUN_DIR "
        "(local or s3://), resumable with --resume, fine-tunable with --init-from.  Options "
        "left unset take the paper's values.  Metrics go to RUN_DIR/logs/metrics.jsonl, "
        "spectrogram previews to RUN_DIR/logs/*.png.",
    )
    p.add_argument("data", metavar="DATA", help="window data set written by `cycledrums prepare`")
    p.add_argument("run_dir", metavar="RUN_DIR", help="where checkpoints and logs go")
    p.add_argument("--model", choices=MODELS, default=None,
                   help=f"cyclegan (unpaired, the paper's) or pix2pix (paired baseline) "
                   f"{_default('model')}")
    run = p.add_argument_group("cluster")
    run.add_argument("--num-workers", type=int, default=1, help="Ray Train workers, data parallel (default: 1)")
    add_device_option(run)  # cuda: one GPU per worker, bf16 autocast, channels-last, NCCL
    run.add_argument("--cpus-per-worker", type=float, default=1.0,
                     help="logical CPUs each worker reserves; leave some for Ray Data (default: 1)")
    run.add_argument("--max-failures", type=int, default=3,
                     help="worker-group restarts from the last checkpoint before giving up (default: 3)")
    add_job_options(run)

    length = p.add_argument_group("run length and checkpoints")
    excl = length.add_mutually_exclusive_group()
    excl.add_argument("--epochs", type=int, default=None, help=f"passes over the data {_default('epochs')}")
    excl.add_argument("--max-steps", type=int, default=None,
                      help="run length in optimizer steps, instead of --epochs (default: unset)")
    length.add_argument("--stop-after-steps", type=int, default=None,
                        help="end this invocation after this many steps with a checkpoint; "
                        "continue later with --resume (default: run to the end)")
    length.add_argument("--checkpoint-every", type=int, default=None,
                        help=f"steps between checkpoints {_default('checkpoint_every', 'and one at the end')}")
    length.add_argument("--keep-checkpoints", type=int, default=None,
                        help=f"checkpoints kept in RUN_DIR {_default('keep_checkpoints')}")
    length.add_argument("--resume", action="store_true",
                        help="continue the run in RUN_DIR from its latest checkpoint (same step, lr, "
                        "optimizer state); only run-length/logging options may change (default: off)")
    length.add_argument("--init-from", default=None, metavar="CKPT",
                        help="start a new run from the weights of a checkpoint or run folder "
                        "(fine-tuning); the architecture is taken from it (default: random init)")
    length.add_argument("--log-every", type=int, default=None,
                        help=f"steps between progress lines {_default('log_every')}")
    length.add_argument("--images-per-epoch", type=int, default=None,
                        help=f"windows in the preview PNG drawn each epoch {_default('images_per_epoch')}")

    arch = p.add_argument_group("architecture")
    arch.add_argument("--ngf", type=int, default=None, help=f"generator width {_default('ngf')}")
    arch.add_argument("--ndf", type=int, default=None, help=f"critic width {_default('ndf')}")
    arch.add_argument("--n-blocks", type=int, default=None,
                      help=f"ResNet generator blocks {_default('n_blocks')}")
    arch.add_argument("--n-layers-d", type=int, default=None,
                      help=f"PatchGAN layers (3 = 70x70 patches) {_default('n_layers_d')}")
    arch.add_argument("--unet-downs", type=int, default=None,
                      help=f"U-Net levels for pix2pix (8 = unet_256) {_default('unet_downs')}")
    arch.add_argument("--norm", choices=NORMS, default=None,
                      help="normalisation (default: instance for cyclegan, batch for pix2pix)")
    arch.add_argument("--dropout", action=argparse.BooleanOptionalAction, default=None,
                      help="dropout 0.5 in the generator (default: on for pix2pix, off for cyclegan)")

    loss = p.add_argument_group("losses and optimiser")
    loss.add_argument("--gan-mode", choices=GAN_MODES, default=None,
                      help="adversarial loss (default: lsgan for cyclegan, vanilla for pix2pix)")
    loss.add_argument("--lambda-cycle", type=float, default=None,
                      help=f"cycle-consistency weight, both ways {_default('lambda_cycle')}")
    loss.add_argument("--lambda-identity", type=float, default=None,
                      help=f"identity loss weight, relative to the cycle weight {_default('lambda_identity')}")
    loss.add_argument("--lambda-l1", type=float, default=None,
                      help=f"pix2pix L1 weight {_default('lambda_l1')}")
    loss.add_argument("--pool-size", type=int, default=None,
                      help=f"image pool of past fakes per critic {_default('pool_size')}")
    loss.add_argument("--lr", type=float, default=None, help=f"Adam learning rate {_default('lr')}")
    loss.add_argument("--beta1", type=float, default=None, help=f"Adam beta1 {_default('beta1')}")
    loss.add_argument("--beta2", type=float, default=None, help=f"Adam beta2 {_default('beta2')}")
    loss.add_argument("--decay-fraction", type=float, default=None,
                      help=f"share of the run over which lr decays linearly to 0 {_default('decay_fraction')}")
    loss.add_argument("--batch-size", type=int, default=None,
                      help=f"windows per worker per step {_default('batch_size')}")
    loss.add_argument("--seed", type=int, default=None, help=f"random seed {_default('seed')}")
    loss.add_argument("--shuffle", choices=SHUFFLES, default=None,
                      help="full: a global shuffle per epoch (Ray Data random_shuffle); local: "
                      f"block order + a per-worker buffer, cheaper on huge data {_default('shuffle')}")
    loss.add_argument("--shuffle-buffer", type=int, default=None,
                      help=f"windows in the local shuffle buffer {_default('shuffle_buffer')}")

    speed = p.add_argument_group("speed")
    speed.add_argument("--precision", choices=PRECISIONS, default=None,
                       help=f"auto = bf16 autocast on GPU, fp32 on CPU {_default('precision')}")
    speed.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                       help="channels-last memory format (default: on GPU only)")
    speed.add_argument("--compile", action="store_true", default=None,
                       help="torch.compile the networks (default: off)")
    p.set_defaults(func=run_train)


_OPTION_NAMES = (
    "model", "epochs", "max_steps", "stop_after_steps", "checkpoint_every", "keep_checkpoints",
    "init_from", "log_every", "images_per_epoch", "ngf", "ndf", "n_blocks", "n_layers_d",
    "unet_downs", "norm", "dropout", "gan_mode", "lambda_cycle", "lambda_identity", "lambda_l1",
    "pool_size", "lr", "beta1", "beta2", "decay_fraction", "batch_size", "seed", "shuffle",
    "shuffle_buffer", "precision", "channels_last", "compile",
)


def run_train(args) -> int:
    from cycledrums_cli import CliError

    options = {name: getattr(args, name) for name in _OPTION_NAMES}
    if args.num_workers < 1:
        raise CliError("--num-workers must be at least 1")
    if args.cpus_per_worker <= 0:
        raise CliError("--cpus-per-worker must be positive")

    from cluster.ray_runtime import init_ray
    from train.checkpoint import CheckpointNotFoundError
    from train.trainer import TrainSetupError, train

    try:
        TrainConfig(**{k: v for k, v in options.items() if v is not None}).resolved()
    except ValueError as err:
        raise CliError(str(err)) from err
    from ray.train import TrainingFailedError

    from cluster.ray_runtime import local_cluster_view
    from cluster.resources import ResourceError, plan_workers

    try:
        local = local_cluster_view(args.address)
        if local:  # an impossible request fails before a local Ray starts
            plan_workers(args.device, args.num_workers, args.cpus_per_worker, view=local)
        init_ray(args.address)
        device, placements = plan_workers(args.device, args.num_workers, args.cpus_per_worker)
    except ResourceError as err:
        raise CliError(str(err)) from err
    try:
        summary = train(args.data, args.run_dir, options, num_workers=args.num_workers,
                        device=device, placements=placements, cpus_per_worker=args.cpus_per_worker,
                        resume=args.resume, max_failures=args.max_failures,
                        s3_endpoint_url=args.s3_endpoint_url)
    except (TrainSetupError, CheckpointNotFoundError) as err:
        raise CliError(str(err)) from err
    except TrainingFailedError as err:
        print(f"cycledrums train: training failed after {args.max_failures} restart(s): {err}\n"
              f"the last checkpoint (if any) is in {args.run_dir}; continue with --resume",
              file=sys.stderr)
        return 1
    metrics = summary.metrics
    losses = " ".join(f"{k} {v:.3f}" for k, v in metrics.items() if k.startswith("loss_"))
    print(f"trained to step {summary.step}/{summary.total_steps}: {losses}; "
          f"{metrics.get('samples_per_s', 0.0):.2f} samples/s")
    print(f"checkpoint: {summary.checkpoint}")
    print(f"device: {summary.resources.get('device')} on node(s) {summary.resources.get('nodes')}, "
          f"GPU ids {summary.resources.get('gpu_ids')} (RUN_DIR/logs/resources.json)")
    print(f"logs: {summary.run_dir.rstrip('/')}/logs/metrics.jsonl")
    if summary.step < summary.total_steps:
        print("stopped early; continue with --resume")
    return 0
