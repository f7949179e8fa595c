"""`cycledrums train`: CycleGAN / Pix2Pix on Ray Train.  No heavy imports at parse time."""
from __future__ import annotations

import dataclasses
import json
import sys

from cluster.resources import add_device_option
from cluster.job_options import add_job_options, add_job_parser

from cluster.options import add_option_flags, options_from_args
from train.config import TrainConfig, option_fields

# The order the option groups appear in `--help`.
_GROUPS = ("model", "cluster", "run length and checkpoints", "architecture",
           "losses and optimiser", "speed")


def register(subparsers) -> None:
    p = add_job_parser(
        subparsers, "train",
        help="train the CycleGAN (or the Pix2Pix baseline) on prepared windows with Ray Train",
        description="""\
Train the CycleGAN (or the Pix2Pix baseline) on a `prepare` window set with Ray Train.

  cycledrums train windows/ run/ --num-workers 2 --max-steps 3000 --checkpoint-every 500

DATA is the window set (Parquet, local or s3://).  Data-parallel workers (DDP),
checkpoints every --checkpoint-every steps into RUN_DIR (local or s3://), resumable
with --resume, fine-tunable with --init-from.  Options left unset take the paper's
values.  Metrics go to RUN_DIR/logs/metrics.jsonl, spectrogram previews to
RUN_DIR/logs/*.png.""",
    )
    p.add_argument("data", metavar="DATA", help="window data set written by `cycledrums prepare`")
    p.add_argument("run_dir", metavar="RUN_DIR", help="where checkpoints and logs go")
    groups = {name: (p if name == "model" else p.add_argument_group(name)) for name in _GROUPS}
    run = groups["cluster"]
    run.add_argument("--num-workers", type=int, default=1, help="Ray Train workers, data parallel (default: 1)")
    add_device_option(run)  # cuda: one GPU per worker, bf16 autocast, channels-last, NCCL
    run.add_argument("--cpus-per-worker", type=float, default=1.0,
                     help="logical CPUs each worker reserves; leave some for Ray Data (default: 1)")
    run.add_argument("--max-failures", type=int, default=3,
                     help="worker-group restarts from the last checkpoint before giving up (default: 3)")
    add_job_options(run)
    groups["run length and checkpoints"].add_argument(
        "--resume", action="store_true",
        help="continue the run in RUN_DIR from its latest checkpoint (same step, lr, optimizer "
        "state); only run-length, logging and speed options may change (default: off)")
    add_option_flags(p, TrainConfig, groups=groups)
    p.set_defaults(func=run_train)


def _already_trained(plan, args) -> bool:
    """--resume of a run whose checkpoint is at or past the run's length: nothing to train, said in
    one line before Ray starts.  At the length: done (True, exit 0); past it: a user error."""
    from cluster.errors import CliError
    from pipelines.storage import storage_errors
    from train.checkpoint import read_progress

    with storage_errors("reading", plan.resume_checkpoint):
        done = int(read_progress(plan.resume_checkpoint, args.s3_endpoint_url)["step"])
    if done < plan.total_steps:
        return False
    if done > plan.total_steps:
        raise CliError(f"--resume: the run in {args.run_dir} is already at step {done}, past the "
                       f"{plan.total_steps} steps asked for; give --max-steps (or --epochs) beyond "
                       f"{done} to train it further")
    print(f"the run in {args.run_dir} is already trained to step {done}/{plan.total_steps}; nothing "
          f"to do (give a larger --max-steps or --epochs with --resume to train it further)")
    return True


def run_train(args) -> int:
    from cluster.errors import CliError

    options = {f.name: getattr(args, f.name) for f in option_fields()}
    if options["epochs"] is not None and options["max_steps"] is not None:
        raise CliError("give the run length as --epochs or --max-steps, not both")
    if args.num_workers < 1:
        raise CliError("--num-workers must be at least 1")
    if args.cpus_per_worker <= 0:
        raise CliError("--cpus-per-worker must be positive")

    from cluster.ray_runtime import init_ray
    from train.trainer import preflight, train

    TrainConfig(**options_from_args(TrainConfig, args)).resolved()  # a bad option: TrainOptionError
    from ray.train import TrainingFailedError

    from cluster.ray_runtime import local_cluster_view
    from cluster.placement import ending_placement_books
    from cluster.resources import plan_workers

    local = local_cluster_view(args.address)
    if local:  # an impossible request fails before a local Ray starts (ResourceError: a UserError)
        plan_workers(args.device, args.num_workers, args.cpus_per_worker, view=local)
    # Data, RUN_DIR, options and checkpoints are checked before Ray starts; their errors
    # are user errors (exit 2, no traceback).
    plan = preflight(args.data, args.run_dir, options, num_workers=args.num_workers,
                     resume=args.resume, s3_endpoint_url=args.s3_endpoint_url)
    if plan.resume_checkpoint and _already_trained(plan, args):
        return 0
    init_ray(args.address)
    device, placements = plan_workers(args.device, args.num_workers, args.cpus_per_worker)
    try:
        with ending_placement_books(placements):  # the book made here ends here, the run finished or failed
            summary = train(plan.data, plan.run_dir, options, num_workers=args.num_workers,
                            device=device, placements=placements, cpus_per_worker=args.cpus_per_worker,
                            resume=args.resume, max_failures=args.max_failures,
                            s3_endpoint_url=args.s3_endpoint_url, plan=plan)
    except TrainingFailedError as err:
        print(f"cycledrums train: training failed after {args.max_failures} restart(s): {err}\n"
              f"the last checkpoint (if any) is in {args.run_dir}; continue with --resume",
              file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(dataclasses.asdict(summary)))
        return 0
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
