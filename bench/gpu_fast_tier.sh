#!/usr/bin/env bash
# The one GPU check of the speed tiers: plain diffusers, the engine lossless, the fast tier.
#
# Run once on a lent H100/H200 (Wan2.1-T2V-1.3B at full size, random weights, 832x480, 81
# frames; about 5-6 minutes of the command's wall time, plus the machine's start):
#
#   device run, carry [".whl"], timeout_s 600:
#     bash bench/gpu_fast_tier.sh
#
# It writes under $OUT (default ./bench-out): engine.md and engine.json (bench/engine.py's
# report: the rows, the full 50-step runs, the tier table "request to MP4", peak GiB),
# flops.md (bench/flops.py's FLOP table, counted there with that box's libraries), env.txt
# (nvidia-smi, versions) and run.log (everything printed). bench/engine.py saves its report
# after every row, so a run stopped by the time limit still returns what it measured.
#
# What it runs (edit BENCH_ARGS to change it):
#   bench/engine.py --steps 6 --variants compile --full 50 --full-variant compile \
#       --fast-tier --fast-vae float32,bfloat16 --fast-runs 3 --lora
# = the plain WanPipeline (6 timed steps, then a real 50-step video, then its frames written to
#   MP4 with diffusers.utils.encode_video), the engine's lossless best (batched CFG + regional
#   torch.compile; 6 steps, then a real 50-step request to MP4, and a cancel check), and the
#   fast tier (4 steps, guidance_scale 1, a random rank-32 peft LoRA on to_q/to_k/to_v/to_out.0
#   fused and unloaded; 3 real requests to MP4 each with the VAE in float32 and in bfloat16).
#
# Wheels: the device image (python3 = Python 3.12 at /opt/torch/.venv, torch 2.11.0+cu130,
# transformers 5.17.0, accelerate, peft, huggingface_hub 1.33, tokenizers, safetensors, numpy,
# pillow, httpx, tqdm, regex, requests; see /work/.library/device/KINDS.md) lacks these, which
# must travel as wheels for Python 3.12 / linux x86_64. Put them in `.whl/` at the repository
# root (already in .gitignore, so it travels only when `carry` names it; `wheels/` and
# `shared/wheels/` are looked in too). About 45 MiB, under the 64 MiB a call carries:
#
#   diffusers==0.42.1  pydantic==2.14.4  pydantic_core==2.50.5  annotated-types
#   typing-inspection  typing_extensions==4.16.0  av==18.1.0  ftfy  wcwidth  peft==0.21.2
#
# (diffusers was 0.42.1 on the H100 runs of docs/bench/engine.md, with transformers 5.17.0,
# which the image has; pydantic and av are opendance's own needs: its options are pydantic
# models, its MP4 writer is PyAV; ftfy is what WanPipeline cleans prompts with; the image's peft
# is of a version not recorded, and diffusers 0.42's LoRA code needs peft >= 0.17, so a known
# one travels too, pure Python, 0.8 MiB: its own needs are all in the image.) Download them
# on the developer machine, from the repository root:
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#       --platform manylinux2014_x86_64 -d .whl \
#       diffusers==0.42.1 pydantic==2.14.4 pydantic_core==2.50.5 annotated-types \
#       typing-inspection typing_extensions==4.16.0 av==18.1.0 ftfy wcwidth peft==0.21.2
#
# Keep one version of each (two stop the install). Optional: torchao (only for the `fp8`
# variant, not run here). Off the image: pip install peft, or drop --lora.
# FlashAttention-3 (`flash_attn_interface`) is not on the image: `auto` then picks PyTorch's
# own SDPA, as on the H100 runs.
#
# Locally, as a CPU smoke test of this script (tiny random modules; --lora needs peft, which
# the project's venv lacks: WHEELS=a folder with the peft wheel, or drop --lora):
#   WHEELS=/tmp/wheels PYTHON=.venv/bin/python OUT=/tmp/fast-tier \
#   BENCH_ARGS="--tiny --width 128 --height 64 --frames 9 --steps 3 --variants engine \
#     --fast-tier --fast-base engine --fast-vae float32,bfloat16 --fast-runs 2 --lora \
#     --lora-rank 4" bash bench/gpu_fast_tier.sh
set -uo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
OUT="${OUT:-bench-out}"
LIMIT_S="${LIMIT_S:-540}" # bench/engine.py is stopped after this (the device allows 600 s)
BENCH_ARGS="${BENCH_ARGS:---steps 6 --variants compile --full 50 --full-variant compile \
--fast-tier --fast-vae float32,bfloat16 --fast-runs 3 --lora}"
mkdir -p "$OUT"
exec > >(tee -a "$OUT/run.log") 2>&1
started=$(date +%s)
say() { echo "[gpu_fast_tier +$(($(date +%s) - started))s] $*"; }

wheels=""
for dir in "${WHEELS:-}" .whl wheels shared/wheels; do
    if [ -n "$dir" ] && compgen -G "$dir/*.whl" >/dev/null; then
        wheels="$dir"
        break
    fi
done
site="${SITE:-/tmp/site}"
if [ -n "$wheels" ]; then
    say "installing $(ls "$wheels"/*.whl | wc -l) wheels from $wheels into $site"
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$site" "$wheels"/*.whl || {
        say "wheel install failed"
        exit 1
    }
    export PYTHONPATH="$site:src:${PYTHONPATH:-}"
else
    say "no wheels found (.whl/, wheels/, shared/wheels/): using what $PYTHON has"
    export PYTHONPATH="src:${PYTHONPATH:-}"
fi
export PYTHONUNBUFFERED=1

{
    date -u
    uname -a
    nvidia-smi 2>/dev/null || echo "nvidia-smi: none"
    "$PYTHON" - <<'EOF'
import importlib
import sys

print("python", sys.version.split()[0], sys.executable)
for name in ["torch", "diffusers", "transformers", "accelerate", "peft", "pydantic", "av",
             "ftfy", "torchao", "kernels", "flash_attn_interface"]:
    try:
        module = importlib.import_module(name)
        print(name, getattr(module, "__version__", "?"), getattr(module, "__file__", ""))
    except Exception as exc:
        print(name, "MISSING", type(exc).__name__, str(exc)[:120])
import torch

print("cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("gpu", torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0))
EOF
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

"$PYTHON" -c "import diffusers, pydantic, av, opendance.engines.diffusers" || {
    say "the engine does not import: see the wheels at the top of this script"
    exit 1
}

if [ -z "${SKIP_FLOPS:-}" ]; then
    say "bench/flops.py (meta device, CPU)"
    timeout 120 "$PYTHON" bench/flops.py --json "$OUT/flops.json" >"$OUT/flops.md" 2>&1
    echo "flops.py exit $?"
    cat "$OUT/flops.md"
fi

say "bench/engine.py $BENCH_ARGS --out $OUT"
# shellcheck disable=SC2086 # BENCH_ARGS is a list of words
timeout --signal=INT --kill-after=20 "$LIMIT_S" "$PYTHON" bench/engine.py $BENCH_ARGS --out "$OUT"
status=$?
say "bench/engine.py exit $status"
if [ "$status" -ne 0 ] && [ -f "$OUT/engine.md" ]; then
    # Stopped early (124: at LIMIT_S) or failed: the rows saved so far.
    cat "$OUT/engine.md"
fi
exit "$status"
