#!/usr/bin/env bash
# Adds to .devkit/wheels the pure-Python and binary wheels (CPython 3.12, x86-64 Linux) of the dependencies a
# bare GPU machine may lack beyond SpikingJelly and loguru: pydantic and what it needs. gpu_check.sh and
# gpu_reproduce.sh install every wheel in .devkit/wheels into /tmp/site before they run.
#   bash benchmarks/gpu_wheels.sh        (from the project root, on a machine with network; then carry .devkit)
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .devkit/wheels
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any -d .devkit/wheels \
  "pydantic==$(python3 -c 'import pydantic; print(pydantic.VERSION)' 2>/dev/null || echo 2.14.4)" \
  "pydantic-core==$(python3 -c 'import pydantic_core; print(pydantic_core.__version__)' 2>/dev/null || echo 2.50.5)" \
  annotated-types typing-inspection typing-extensions
ls .devkit/wheels
