#!/bin/bash
# One GPU session (about 8 minutes on an H200 with no internet): the model from carried parts, every
# drafter on CUDA against AR, distillation data and an EAGLE-3 head made on the GPU, a held-out bench.
#
# Bring along (ignored folder .gpu/ and .whl/, see docs/benchmarks.md "On a GPU"):
#   split -b 34000000 -d -a 1 ~/.cache/specviz/gguf/SmolLM2-135M-Instruct.Q4_1.gguf .gpu/gguf.part
#   cp ~/.cache/specviz/gguf/SmolLM2-135M-Instruct.Q4_1.gguf.sha256 .gpu/gguf.sha256
#   pip download --no-deps --only-binary=:all: -d .whl gguf==0.19.0
# then, on the GPU machine with the parts in /tmp/keep or .gpu/:  OUT=<results dir> bash docs/gpu/session.sh
set -u; PY=${PY:-python3}; DEV=${DEV:-cuda}
export PYTHONUNBUFFERED=1 SPECVIZ_CACHE=/tmp/svc HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
mkdir -p $SPECVIZ_CACHE/gguf /tmp/keep
cp .gpu/gguf.part* /tmp/keep/ 2>/dev/null
G=$SPECVIZ_CACHE/gguf/SmolLM2-135M-Instruct.Q4_1.gguf
cat /tmp/keep/gguf.part0 /tmp/keep/gguf.part1 /tmp/keep/gguf.part2 > $G && cp .gpu/gguf.sha256 $G.sha256
$PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
el fetch; $PY -m specviz fetch smollm2-135m 2>&1 | tail -1
el standin; PYTHONPATH=.:${PYTHONPATH:-} $PY docs/gpu/standin.py 2>&1 | grep -v Warn | tail -3
el check-device
timeout ${CHECK_S:-75} $PY -m specviz check-device --limit 3 --max-new-tokens 40 --json $OUT/check-device.json 2>&1 | grep -v -i warn | tail -16
el data
timeout ${DATA_S:-150} $PY -m specviz train-drafter eagle3 --shards ${SHARDS:-0} --data-only --device $DEV --group ${GROUP:-8} 2>&1 | tr '\r' '\n' | grep -v -i warn | tail -4
N=$(ls $SPECVIZ_CACHE/distill/smollm2-135m/v2/shard-*.safetensors 2>/dev/null | wc -l); el "shards $N"
du -sh $SPECVIZ_CACHE/distill/smollm2-135m/v2
el train
[ "$N" -ge 8 ] || { el "too few shards to train"; N=1; TRAIN_S=1; }
timeout ${TRAIN_S:-200} $PY -m specviz train-drafter eagle3 --shards $N --device $DEV --minutes ${TRAIN_MIN:-2.0} --steps 100000 \
  --batch-tokens 8192 --lr 2e-3 --out $OUT/eagle3-smollm2-135m.safetensors --work /tmp/eagle3-work 2>&1 | tr '\r' '\n' | grep -v -i warn | grep -E "step|valid|written|training|error|Error|Traceback|File" | tail -30
cp /tmp/eagle3-work/history.json $OUT/eagle3-history.json 2>/dev/null; cp /tmp/eagle3-work/loss.png $OUT/eagle3-loss.png 2>/dev/null
el bench
# the new head replaces the shipped one in this checkout (a throwaway copy on the GPU machine)
if [ -f $OUT/eagle3-smollm2-135m.safetensors ]; then cp $OUT/eagle3-smollm2-135m.safetensors assets/drafters/; fi
timeout ${BENCH_S:-80} $PY -m specviz bench --prompts assets/prompts-heldout.jsonl --limit 6 --max-new-tokens 64 \
  --drafters ngram-tree:chain:8,eagle3:dynamic:2,eagle3:chain:4 --json $OUT/bench-gpu.json 2>&1 | grep -v -i warn | grep "|" | tail -20
el done
