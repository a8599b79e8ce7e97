#!/usr/bin/env bash
# Issue 13's Fashion-MNIST runs, several at a time on one GPU, inside one device call.
#
#   bash benchmarks/gpu_session.sh [SECONDS]     # default 480: leaves a 10-minute call time to pack up
#
# Each run resumes from checkpoints/unfinished/NAME/ when that folder is committed (the runs began
# on a CPU in an earlier session), else from $OUT/NAME/ (an earlier call of this session), else
# starts. Every run is stopped after SECONDS by SIGTERM, on which the trainer finishes the iteration
# and writes its checkpoint (atomic; also every --checkpoint-every iterations); its checkpoint.pt,
# config.json, metrics.jsonl and log come back as $OUT/NAME.tar (the device returns at most 8 files: a tar per run and machine.txt),
# which `tar -xf NAME.tar -C checkpoints/unfinished/` puts where the next call or session resumes
# it. A finished run (its last eval record is at its last iteration: 64000, or 140400 for 300 epochs)
# goes into the zoo from there.
#
# The device machine has no Fashion-MNIST: carry the official IDX files, e.g.
#   mkdir -p .fmnist && cp /usr/share/datasets/fashion-mnist/*.gz .fmnist/ && echo /.fmnist/ >> .git/info/exclude
# and call with carry [".fmnist"]; this script reads them from there (FASHION_MNIST_DIR), else from
# $FASHION_MNIST_DIR or /usr/share/datasets/fashion-mnist.
#
# The recipe flags are exactly those of the CPU runs, so their checkpoints resume (the engine refuses a
# resume whose recipe differs). They train in bf16 autocast, as the full-schedule ResNet records did; the
# precision is not part of the recipe, so a checkpoint begun in fp32 on a CPU resumes in bf16 here and
# the zoo record says which iterations ran how.
set -uo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_RUN=${1:-480}
OUT=${OUT:-runs/gpu-session}
mkdir -p "$OUT"
# The carried copy when there is one, else $FASHION_MNIST_DIR, else the system copy (as the trainer).
if [ -z "${FASHION_MNIST_DIR:-}" ] && [ -e .fmnist/train-images-idx3-ubyte.gz ]; then
  export FASHION_MNIST_DIR=$PWD/.fmnist
fi
DATA_DIR=${FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}
export PYTHONUNBUFFERED=1
PYTHON=${PYTHON:-python}
RE_300_EPOCHS="--epochs 300 --weight-decay 5e-4 --random-erasing 0.5 --erasing-fill mean --eval-every 468 --checkpoint-every 468"

# name | arch | recipe options (beyond §4.2's defaults; they come after this script's own flags, so a
# run's --eval-every / --checkpoint-every override them)
# The run still to finish: ResNet-20 with the Random Erasing recipe for the anchor's 300 epochs, evaluated
# every epoch (is the gap to the anchor the 64k budget?). Finished runs (plain-20/56, the ResNet-20 and
# ResNet-56 reruns for Fig. 6, the Random Erasing ResNets with step lr, the cosine ResNet-20s and ResNet-56,
# the anchor-built option-B ResNet-20s at 28x28) are zoo records and left out: listed here, a finished run
# whose folder has left checkpoints/unfinished/ would start again from iteration 0.
RUNS=(
  "resnet20-fmnist-re-300ep|resnet20|$RE_300_EPOCHS"
)
if [ -n "${ONLY:-}" ]; then  # ONLY="NAME ...": a subset of RUNS
  kept=()
  for spec in "${RUNS[@]}"; do [[ " $ONLY " == *" ${spec%%|*} "* ]] && kept+=("$spec"); done
  if [ ${#kept[@]} -eq 0 ]; then
    echo "error: ONLY=\"$ONLY\" names none of this script's runs: ${RUNS[*]%%|*}" >&2
    exit 2
  fi
  RUNS=("${kept[@]}")
fi

if [ ! -e "$DATA_DIR/train-images-idx3-ubyte.gz" ]; then
  echo "error: no Fashion-MNIST training split in $DATA_DIR (carry .fmnist: see this script's header)" >&2
  exit 2
fi
"$PYTHON" - <<'EOF' | tee "$OUT/machine.txt"
import platform, torch
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
print(f"torch {torch.__version__}, {gpu}, {platform.processor() or platform.machine()}")
EOF

pids=()
for spec in "${RUNS[@]}"; do
  IFS='|' read -r name arch options <<<"$spec"
  run="$OUT/$name"
  if [ ! -e "$run/checkpoint.pt" ] && [ -e "checkpoints/unfinished/$name/checkpoint.pt" ]; then
    mkdir -p "$run" && cp "checkpoints/unfinished/$name/"{checkpoint.pt,config.json,metrics.jsonl} "$run/"
  fi
  resume=""
  [ -e "$run/checkpoint.pt" ] && resume="--resume"
  # shellcheck disable=SC2086  # options are words
  timeout --signal=TERM --kill-after=30 "$SECONDS_PER_RUN" "$PYTHON" -m backbones.train "$arch" --dataset fashion-mnist \
      --amp bf16 --channels-last --eval-every 4000 --checkpoint-every 500 --log-every 500 --no-progress $options \
      --output "$run" $resume >"$OUT/$name.log" 2>&1 &
  pids+=($!)
  echo "started $name ($arch${resume:+, resumed}) -> $OUT/$name.log"
done
for pid in "${pids[@]}"; do wait "$pid"; done

for spec in "${RUNS[@]}"; do
  name=${spec%%|*}
  run="$OUT/$name"
  [ -e "$run/checkpoint.pt" ] || { echo "$name: no checkpoint (see $OUT/$name.log)"; continue; }
  cp "$OUT/$name.log" "$run/train.log"
  tar -cf "$OUT/$name.tar" -C "$OUT" "$name/checkpoint.pt" "$name/config.json" "$name/metrics.jsonl" "$name/train.log"
  last=$(grep -o '"iteration": [0-9]*' "$run/metrics.jsonl" | tail -1)
  echo "$name: ${last:-no iterations logged}; $(grep '"kind": "eval"' "$run/metrics.jsonl" | tail -1)"
  rm -rf "${run:?}" "$OUT/$name.log"  # all of it is in the tar
done
