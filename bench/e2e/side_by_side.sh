#!/usr/bin/env bash
# ShardLM vs the PyTorch baseline (torch.compile + flash SDPA), same GPU, same call, for the
# three GPT configs of issue 4: 124M (16x1024), 350M (16x1024), 1.3B (8x2048), and the
# Llama-style 1B of issue 8 (llama1B: 16 layers, hidden 2048, 32 heads, 8 query groups, ffn 5632,
# 8x2048, vocab 32000; baseline torch_llama_bench.py --config 1B).
#
#   bench/e2e/side_by_side.sh SHARDLM_BINARY BASELINE_DIR OUT_DIR [CONFIG ...]
#
# Writes OUT_DIR/results.jsonl (one RESULT json per run), OUT_DIR/<system>_<config>.log and
# OUT_DIR/table.md: a dated markdown table (device, commit, both systems, ratio) ready to append
# to bench/RESULTS.md. Both sides use the FLOP formula of train/metrics.h (= the baseline's).
set -uo pipefail
BIN="$1"; BASE="$2"; OUT="$3"; shift 3
CONFIGS=("$@"); [[ ${#CONFIGS[@]} -eq 0 ]] && CONFIGS=(124M 350M 1.3B)
STEPS="${STEPS:-20}"; WARMUP="${WARMUP:-5}"
# SHARDLM_EXTRA_FLAGS: appended to ShardLM's command (A/B runs, e.g. with SKIP_TORCH=1).
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0

shardlm_flags() {
  case "$1" in
    124M) echo "--num-layers 12 --hidden-size 768 --num-attention-heads 12 --seq-length 1024 --micro-batch-size 16" ;;
    350M) echo "--num-layers 24 --hidden-size 1024 --num-attention-heads 16 --seq-length 1024 --micro-batch-size 16" ;;
    1.3B) echo "--num-layers 24 --hidden-size 2048 --num-attention-heads 16 --seq-length 2048 --micro-batch-size 8" ;;
    llama1B) echo "--num-layers 16 --hidden-size 2048 --num-attention-heads 32 --group-query-attention --num-query-groups 8 --ffn-hidden-size 5632 --seq-length 2048 --micro-batch-size 8 --position-embedding-type rope --normalization RMSNorm --swiglu --untie-embeddings-and-output-weights --disable-bias-linear" ;;
  esac
}
vocab_of() { [[ "$1" == llama* ]] && echo 32000 || echo 50257; }
baseline_of() {
  case "$1" in
    llama1B) echo "torch_llama_bench.py --config 1B" ;;
    *) echo "torch_gpt_bench.py --config $1" ;;
  esac
}

for cfg in "${CONFIGS[@]}"; do
  flags=$(shardlm_flags "$cfg")
  S=$(echo "$flags" | sed -E 's/.*--seq-length ([0-9]+).*/\1/')
  B=$(echo "$flags" | sed -E 's/.*--micro-batch-size ([0-9]+).*/\1/')
  echo "=== $cfg: ShardLM ($(date +%T))"
  # shellcheck disable=SC2086
  timeout 240 "$BIN" bench $flags --max-position-embeddings "$S" --global-batch-size "$B" \
      --vocab-size "$(vocab_of "$cfg")" --hidden-dropout 0 --attention-dropout 0 --bf16 --device cuda \
      --lr 3e-4 --adam-beta2 0.95 --weight-decay 0.1 --clip-grad 1.0 \
      --bench-steps "$STEPS" --warmup-steps "$WARMUP" --label shardlm --result-jsonl "$OUT/results.jsonl" \
      ${PROFILE:+--profile-ops} ${SHARDLM_EXTRA_FLAGS:-} >"$OUT/shardlm_$cfg.log" 2>&1
  echo "exit $?"; grep -E "^> tokens/s|memory plan|error" "$OUT/shardlm_$cfg.log" | cut -c1-300
  [[ -n "${SKIP_TORCH:-}" ]] && continue  # quick ShardLM-only check; not for RESULTS.md rows
  echo "=== $cfg: PyTorch ($(date +%T))"
  # shellcheck disable=SC2046
  timeout 300 python3 "$BASE"/$(baseline_of "$cfg") --steps "$STEPS" --warmup "$WARMUP" \
      --jsonl "$OUT/results.jsonl" >"$OUT/torch_$cfg.log" 2>&1
  echo "exit $?"; grep -E "RESULT|OOM|Error" "$OUT/torch_$cfg.log" | cut -c1-300
done

python3 - "$OUT" "${COMMIT:-unknown}" <<'PY'
import json, sys, datetime, subprocess
out, commit = sys.argv[1], sys.argv[2]
rows = [json.loads(l) for l in open(f"{out}/results.jsonl") if l.strip()]
dev = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                     capture_output=True, text=True).stdout.strip().splitlines()[0]
cfg_of = lambda r: {(12, 768): "124M", (24, 1024): "350M", (24, 2048): "1.3B",
                    (16, 2048): "llama1B"}.get((r["L"], r["H"]), "?")
by = {}
for r in rows:
    by.setdefault(cfg_of(r), {})[r["system"]] = r
lines = [f"{datetime.date.today()} · {dev} · commit {commit} · `bench/e2e/side_by_side.sh` "
         f"(bf16; ShardLM `--bf16`, fp32 master weights; baseline bf16 autocast + fp32 params)", "",
         "| config | micro-batch × seq | ShardLM tokens/s | torch.compile tokens/s | ratio | ShardLM MFU | torch MFU | ShardLM memory (allocated) | torch memory (reserved) | ShardLM first step | torch first step |",
         "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
for cfg in ("124M", "350M", "1.3B", "llama1B"):
    s, t = by.get(cfg, {}).get("shardlm"), by.get(cfg, {}).get("torch.compile")
    if not s and not t:
        continue
    f = lambda r, k, fmt: (fmt.format(r[k]) if r and k in r else "—")
    ratio = f"{s['tokens_per_s_wall'] / t['tokens_per_s_wall']:.2f}×" if s and t else "—"
    mb = f"{(s or t)['micro_batch']}×{(s or t)['S']}"
    lines.append(f"| {cfg} | {mb} | {f(s,'tokens_per_s_wall','{:,.0f}')} | {f(t,'tokens_per_s_wall','{:,.0f}')} | {ratio} | "
                 f"{f(s,'mfu_989','{:.1%}')} | {f(t,'mfu_989','{:.1%}')} | {f(s,'peak_mem_allocated_GiB','{:.1f} GiB')} | "
                 f"{f(t,'peak_mem_reserved_GiB','{:.1f} GiB')} | {f(s,'first_step_s','{:.1f} s')} | {f(t,'first_step_s','{:.1f} s')} |")
open(f"{out}/table.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
