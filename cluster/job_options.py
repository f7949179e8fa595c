"""The command-line options every Ray job shares: where its Ray and its S3 are.

Kept apart from the entry point (cycledrums_cli.py) so each package's cli.py can add them
without importing the module that imports every cli.py.
"""
from __future__ import annotations

import argparse


def add_job_parser(sub, name: str, **kwargs) -> argparse.ArgumentParser:
    """A job's subcommand, its description laid out as written (a sentence, an example, details)."""
    return sub.add_parser(name, formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)


def add_json_option(parser) -> None:
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object (default: off)")


def add_job_options(parser) -> None:
    """The options every Ray job (prepare, train, generate, score, ...) shares: where it runs,
    where its S3 is, and --json."""
    parser.add_argument("--address", default=None,
                        help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray on this machine)")
    parser.add_argument("--s3-endpoint-url", default=None,
                        help="S3-compatible endpoint for s3:// paths, e.g. MinIO or Ceph "
                        "(default: $AWS_ENDPOINT_URL, else AWS)")
    add_json_option(parser)
