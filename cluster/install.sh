#!/bin/sh
# Install CycleDRUMS into a Python environment: the ONE install command, used by the
# Makefile (`make install`: the dev venv, editable, with test tools) and by
# cluster/Dockerfile (the cluster image), so the two cannot drift apart.
#
#   cluster/install.sh PYTHON [PIP-INSTALL-ARGS...]      (run from the repository root)
#   cluster/install.sh .venv/bin/python -e '.[dev]'      # make install
#   cluster/install.sh python .                          # the Docker image
#
# Every install goes through constraints.txt: the versions tested together.
set -eu
if [ "$#" -lt 1 ]; then
    echo "usage: cluster/install.sh PYTHON [PIP-INSTALL-ARGS...] (default args: .)" >&2
    exit 2
fi
python="$1"
shift
if [ "$#" -eq 0 ]; then
    set -- .
fi
cd "$(dirname "$0")/.."
"$python" -m pip install --quiet --upgrade pip
"$python" -m pip install --no-cache-dir -c constraints.txt "$@"
