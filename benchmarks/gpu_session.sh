#!/usr/bin/env bash
# Every GPU measurement of docs/results.md's GPU section in one call, a short table last.
#
#   bash benchmarks/gpu_session.sh [explore|final]    (on the GPU host, from the repo root)
#
# The host has jax, flax, optax, orbax, torch and transformers but not grain, tfds or
# ml_collections: their wheels travel in .whl/ (../shared/device/wheels.sh) and the
# photo_crops dataset, prepared offline, in .gpu/tfds. Logs, the profile summary and
# benchmarks/results/gpu.jsonl's new lines go to $OUT (default /tmp/gpu_out).
set -u
PHASE=${1:-final}
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT/logs"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
export TFDS_DATA_DIR=$PWD/.gpu/tfds
# Identical programs compiled by the several processes below are compiled once.
export JAX_COMPILATION_CACHE_DIR=/tmp/jax_cache JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=2
RECORD=$OUT/gpu.jsonl
SUMMARY=$OUT/summary.txt
: > "$SUMMARY"

# The lease is short: a step whose time limit would end past DEADLINE (seconds from the
# start) is skipped and says so.
DEADLINE=${DEADLINE:-540}
step() {  # step NAME TIMEOUT_S COMMAND...: runs it, logs it, keeps its RESULT lines
  local name=$1 limit=$2; shift 2
  local start=$SECONDS
  if [ $((SECONDS + limit)) -gt "$DEADLINE" ]; then
    limit=$((DEADLINE - SECONDS))
    if [ "$limit" -lt 30 ]; then
      echo "== $name: skipped (the session's time is spent)" | tee -a "$SUMMARY"; return 0
    fi
  fi
  timeout "$limit" "$@" > "$OUT/logs/$name.log" 2>&1
  local rc=$?
  echo "== $name: rc=$rc in $((SECONDS - start)) s" | tee -a "$SUMMARY"
  grep -E '^(RESULT|MFU|compiled|model FLOPs|loop |peak|\| )' "$OUT/logs/$name.log" \
      | cut -c1-400 >> "$SUMMARY"
  [ $rc -ne 0 ] && tail -5 "$OUT/logs/$name.log" | cut -c1-300 >> "$SUMMARY"
  return 0
}

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm \
    --format=csv | tee -a "$SUMMARY"
python3 -c "import jax, flax, optax, orbax.checkpoint as o, grain; print('jax', jax.__version__, \
'flax', flax.__version__, 'optax', optax.__version__, 'orbax', o.__version__, \
'grain', grain.__version__, jax.devices())" 2>&1 | tail -1 | tee -a "$SUMMARY"

IO=configs/imagenet_perceiver_io.py
MFU="python3 benchmarks/mfu.py --record=$RECORD"
# The whole loop: full-size Perceiver IO (fourier) at 224x224 on photo_crops with the
# recipe's augmentation (Inception crop, RandAugment 4x5, MixUp/CutMix), LAMB; a first
# job of 40 steps, a resumed job to 80, then eval.py on the restored checkpoint.
LOOP_FLAGS=(--config.data.name=photo_crops --config.model.num_classes=10
            --config.model.dtype=bfloat16 --config.train.log_every_steps=10
            --config.checkpoint.every_steps=20 --config.eval.batch_size=100
            --config.eval.telemetry_examples=0 --config.data.read_threads=0
            --config.data.worker_count=14 --config.data.prefetch=0)
loop() {  # loop BATCH
  local w=/tmp/work_loop_$1 cfg=$IO:batch=$1,steps=80
  rm -rf "$w"
  step "loop_b$1_job1" 300 python3 train.py --config=$cfg --workdir=$w "${LOOP_FLAGS[@]}" \
      --config.train.max_steps_per_run=40
  step "loop_b$1_job2" 200 python3 train.py --config=$cfg --workdir=$w "${LOOP_FLAGS[@]}"
  step "loop_b$1_eval" 120 python3 eval.py --config=$cfg --workdir=$w "${LOOP_FLAGS[@]}"
  grep -h '"split": "eval"' "$w/metrics.jsonl" | tail -1 | cut -c1-300 >> "$SUMMARY"
  step "loop_b$1_vs_step" 200 python3 benchmarks/loop_vs_step.py --config=$cfg \
      --workdir=$w "${LOOP_FLAGS[@]}" --record=$RECORD --label=loop
}

if [ "$PHASE" = explore ]; then
  step attention 150 python3 benchmarks/attention_bench.py --batch=64
  step io_b64_profile 200 $MFU --batch=64 --steps=5 --rounds=2 --profile=/tmp/prof \
      --label=default
  cp "$(find /tmp/prof -name '*.trace.json.gz' | head -1)" "$OUT/trace_b64.json.gz" 2>/dev/null
  loop 64
  step io_b128 150 $MFU --batch=128 --steps=5 --rounds=2 --label=default
  step peer_vision_b32 150 python3 benchmarks/gpu_peers.py --model=vision_fourier --batch=32 \
      --steps=5 --record=$RECORD
fi

if [ "$PHASE" = final ]; then
  Q="--steps=4 --rounds=2 --warmup=2"
  step io_b64 120 $MFU --batch=64 $Q --profile=/tmp/prof --label=default
  cp "$(find /tmp/prof -name '*.trace.json.gz' | head -1)" "$OUT/trace_b64.json.gz" 2>/dev/null
  step io_b128_dots 120 $MFU --batch=128 $Q --remat=dots_saveable --label=remat_dots
  loop 64
  step io_b256_full 120 $MFU --batch=256 $Q --remat=full --label=remat_full
  LM=configs/mlm_c4.py
  step lm_b32 120 $MFU --config=$LM --batch=32 $Q --label=default
  step peer_lm_b32 90 python3 benchmarks/gpu_peers.py --model=language --batch=32 --steps=4 \
      --record=$RECORD
  step perceiver_b64 150 $MFU --config=configs/imagenet_perceiver.py --batch=64 $Q \
      --label=default
  step io_b64_unrolled 200 $MFU --batch=64 $Q --no_scan --label=unrolled
fi

echo; echo '=== summary ==='; cat "$SUMMARY"
tar czf "$OUT/logs.tar.gz" -C "$OUT" logs && rm -rf "$OUT/logs"
