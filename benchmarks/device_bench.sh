#!/usr/bin/env bash
# `hypert5 bench` on a lent GPU machine, several sizes and modes in one call (the machine is
# held by the minute). Its image has JAX, Flax, Optax and Orbax but no TensorFlow, seqio or
# gin: gin travels as a wheel in .whl/ (see benchmarks/README.md), and the runs go through
# benchmarks/bench_jax_only.py. Each run is its own process with its own time limit, so an
# out-of-memory or a slow compile costs only that run. JSON results go to $OUT (or ./out).
#   bash benchmarks/device_bench.sh RUN...    RUN = size:kind[:batch[:remat[:scan]]], defaults 32:full:True
# e.g. large:hyper_lora  large:hyper_prefix:32:dots  small:hyper_lora:64:none:False
# (scan: an unscanned model's jitted init alone compiled for 93 s at T5-small on an H100)
# PROFILE=1: also trace 3 more steps of each run and print its top kernels ($out/NAME.kernels).
set -u
out=${OUT:-out}; mkdir -p "$out"
if ! python3 -c "import gin; gin.external_configurable" 2>/dev/null; then  # gin-config, not another gin
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.95} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv 2>/dev/null
python3 -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"
python3 benchmarks/fused_attention_check.py > "$out/fused_attention_check.log" 2>&1  # cuDNN vs dense
echo "fused attention check: exit $?"; grep -v "^20..-" "$out/fused_attention_check.log" | tail -7
for spec in "$@"; do
  IFS=: read -r size kind batch remat scan <<<"$spec"
  name="${size}_${kind}_b${batch:=32}_${remat:=full}_scan${scan:=True}"
  echo "== $name"
  # -X faulthandler with SIGABRT at the limit: the log then ends with where the run was.
  JAX_LOG_COMPILES=1 timeout -s ABRT "${RUN_TIMEOUT:-240}" python3 -X faulthandler \
    benchmarks/bench_jax_only.py \
    --gin_file="models/$size.gin" --gin_file="models/$kind.gin" --gin_file=runs/bench.gin \
    --gin.hypert5.get_config.dtype="'bfloat16'" --gin.experiment.batch_size="$batch" \
    --gin.hypert5.get_config.remat_policy="'$remat'" --gin.hypert5.get_config.scan_layers="$scan" \
    --gin.bench.output_file="'$out/$name.json'" \
    $([ "${PROFILE:-0}" = 1 ] && echo "--gin.bench.profile_dir='/tmp/prof_$name'") \
    > "$out/$name.log" 2>&1
  echo "exit $?"; grep -E '"(step_time_s|tokens_per_s|tflops_per_device|mfu|peak_memory_gb)"' "$out/$name.log" \
    || grep -E "Finished|Error|error" "$out/$name.log" | tail -8
  if [ "${PROFILE:-0}" = 1 ]; then
    python3 benchmarks/trace_summary.py "/tmp/prof_$name" --top 40 > "$out/$name.kernels" 2>&1
    head -22 "$out/$name.kernels"
  fi
done
