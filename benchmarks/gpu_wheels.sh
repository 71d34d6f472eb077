#!/usr/bin/env bash
# The pure-Python packages `seaflow predict` needs that the GPU machine's image lacks
# (jsonargparse and its docstring readers; vaderSentiment for the lexicon reward), as wheels
# in .whl/ (ignored by git). Run it here, where PyPI is reachable, before a GPU session, and
# name .whl in the device run's `carry`; benchmarks/gpu_session.sh installs them from there.
# The versions are the ones installed in this checkout's environment.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
mkdir -p .whl
specs=()
for name in jsonargparse docstring_parser typeshed_client vaderSentiment; do
  version=$("$PY" -c "import importlib.metadata as m; print(m.version('$name'))")
  specs+=("$name==$version")
done
"$PY" -m pip download -q --no-deps --only-binary=:all: -d .whl "${specs[@]}"
ls -l .whl
