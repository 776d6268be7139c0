#!/usr/bin/env bash
# Fills benchmarks/gpu/wheels/ (git-ignored) with what the GPU machine lacks, for run.sh to install offline.
# The GPU machine has torch, transformers and peft; it cannot reach a package index. Binary wheels are fetched
# for CPython 3.10-3.13 because its Python version is not known here. About 15 MB in all (the device tool
# carries at most 64 MiB): pass `carry: ["benchmarks/gpu/wheels"]`.
set -euo pipefail
cd "$(dirname "$0")"
PIP=${PIP:-../../.venv/bin/pip}
mkdir -p wheels
pure=(
  deepspeed==0.19.8 hydra-core==1.3.2 omegaconf==2.3.0 antlr4-python3-runtime==4.9.3 hjson einops ninja
  py-cpuinfo pydantic==2.14.4 annotated-types typing-inspection liger-kernel==0.8.5
)
"$PIP" download -q --no-deps -d wheels "${pure[@]}"
core=$("$PIP" show pydantic-core | sed -n 's/^Version: //p')  # the build pydantic==2.14.4 pins
for v in 3.10 3.11 3.12 3.13; do
  "$PIP" download -q --no-deps --only-binary=:all: --python-version "$v" --platform manylinux2014_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 -d wheels "pydantic-core==$core" msgpack
done
du -sh wheels
