#!/usr/bin/env bash
# The GPU throughput run, in ONE call on the GPU machine: install what it lacks from the wheels carried in the
# working tree, run every arm of benchmarks/bench_throughput.py for the 1B and 8B shapes (each arm in its own
# process, with a timeout), and write results.json (all rows) and table.txt (the printed tables) under $OUT.
#
#   bash benchmarks/gpu/fetch_wheels.sh                                   # here, once: fills benchmarks/gpu/wheels
#   run(command="bash benchmarks/gpu/run.sh", carry=["benchmarks/gpu/wheels"], timeout_s=570)   # device tool
#   SHAPES=tiny DEVICE=cpu STEPS=1 WARMUP=1 bash benchmarks/gpu/run.sh /tmp/out   # the CPU check the tests run
#
# Budget (total under 8 minutes on one H200): 1B: 2 recipes x 2 data shapes x 6 arms; 8B: LoRA only (a full
# fine-tune of 8B does not fit one GPU), 2 data shapes x 6 arms; STEPS timed steps after WARMUP per arm.
# An arm past ARM_TIMEOUT seconds is recorded as "timeout" and the run goes on.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-${OUT:-benchmarks/results/gpu-$(date -u +%Y%m%dT%H%M%SZ)}}
SHAPES=${SHAPES:-"1b 8b"}
DEVICE=${DEVICE:-cuda}
STEPS=${STEPS:-10}
WARMUP=${WARMUP:-3}
ARM_TIMEOUT=${ARM_TIMEOUT:-75}
PY=${PYTHON:-$(command -v python3 || command -v python)}
mkdir -p "$OUT"
log() { echo "[run.sh $(date -u +%H:%M:%S)] $*" | tee -a "$OUT/table.txt"; }

# 1. What the GPU machine lacks, offline from the carried wheels (torch, transformers, peft are there).
missing=$("$PY" - <<'PY'
import importlib.util
mods = {"deepspeed": "deepspeed", "hydra": "hydra-core", "omegaconf": "omegaconf", "hjson": "hjson",
        "pydantic": "pydantic", "liger_kernel": "liger-kernel", "einops": "einops", "msgpack": "msgpack",
        "cpuinfo": "py-cpuinfo", "ninja": "ninja"}
print(" ".join(pkg for mod, pkg in mods.items() if importlib.util.find_spec(mod) is None))
PY
)
if [ -n "$missing" ]; then
  if [ -d benchmarks/gpu/wheels ]; then
    log "installing from benchmarks/gpu/wheels: $missing"
    # deepspeed ships as an sdist: build it against the installed torch, no ops compiled ahead of time.
    DS_BUILD_OPS=0 "$PY" -m pip install -q --no-index --find-links benchmarks/gpu/wheels --no-build-isolation \
      $missing >>"$OUT/install.log" 2>&1 || log "pip install failed (see install.log)"
  else
    log "missing $missing and no benchmarks/gpu/wheels (run benchmarks/gpu/fetch_wheels.sh and carry it)"
  fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" TOKENIZERS_PARALLELISM=false
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$OUT/table.txt"

# 2. Every arm, per shape. 8B full fine-tuning does not fit one GPU: LoRA only there.
parts=()
for shape in $SHAPES; do
  recipes=lora,full
  [ "$shape" = 8b ] && recipes=lora
  log "shape $shape: recipes $recipes"
  "$PY" benchmarks/bench_throughput.py --shape "$shape" --device "$DEVICE" --recipes "$recipes" \
    --steps "$STEPS" --warmup "$WARMUP" --isolate --arm-timeout "$ARM_TIMEOUT" --json "$OUT/$shape.json" \
    2>>"$OUT/stderr.log" | tee -a "$OUT/table.txt"
  [ -f "$OUT/$shape.json" ] && parts+=("$OUT/$shape.json")
done

# 3. One JSON file: the rows of every shape, each with its shape and the device.
"$PY" - "$OUT/results.json" "${parts[@]}" <<'PY'
import json, sys
from pathlib import Path

out, parts = Path(sys.argv[1]), sys.argv[2:]
try:
    import torch
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
except ImportError:
    device = "unknown"
rows = []
for p in parts:
    shape = Path(p).stem
    rows += [{"shape": shape, "device": device, **r} for r in json.loads(Path(p).read_text())]
out.write_text(json.dumps({"device": device, "rows": rows}, indent=2))
print(f"wrote {out} ({len(rows)} rows)")
PY
log "done: $OUT"
