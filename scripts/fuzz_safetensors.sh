#!/usr/bin/env bash
# scripts/fuzz_safetensors.sh: builds the libFuzzer target tests/fuzz/fuzz_safetensors_header.cpp with
# clang++ -fsanitize=fuzzer,address,undefined into build-fuzz/, seeds a corpus with valid headers and
# runs it for ${FUZZ_SECONDS:-60} seconds. Exits non-zero on any crash, leak or sanitizer report.
# Torch-free: it needs only model/safetensors_header.cpp and the nlohmann json headers.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${FUZZ_BUILD_DIR:-$ROOT/build-fuzz}"
SECONDS_TO_RUN="${FUZZ_SECONDS:-60}"
CXX_FUZZ="${CXX_FUZZ:-clang++}"

if ! command -v "$CXX_FUZZ" >/dev/null 2>&1; then
  echo "[fuzz] ERROR: $CXX_FUZZ not found; install clang and libclang-rt-14-dev (scripts/setup.sh)" >&2
  exit 1
fi
mkdir -p "$OUT/corpus" "$OUT/artifacts"

echo "[fuzz] building $OUT/fuzz_safetensors_header"
"$CXX_FUZZ" -std=c++17 -g -O1 -fno-omit-frame-pointer \
  -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
  -I "$ROOT" \
  "$ROOT/tests/fuzz/fuzz_safetensors_header.cpp" "$ROOT/model/safetensors_header.cpp" \
  -o "$OUT/fuzz_safetensors_header"

# Seeds: valid files (8-byte little-endian header length + JSON + data) and a few near misses.
seed() {  # seed NAME HEADER DATA_BYTES
  local name=$1 header=$2 data_bytes=$3
  python3 - "$OUT/corpus/$name" "$header" "$data_bytes" <<'PY'
import struct, sys
path, header, n = sys.argv[1], sys.argv[2].encode(), int(sys.argv[3])
header += b" " * (-len(header) % 8)
open(path, "wb").write(struct.pack("<Q", len(header)) + header + bytes(range(256)) * (n // 256) + bytes(n % 256))
PY
}
seed empty '{}' 0
seed meta '{"__metadata__":{"format":"pt","step":"3"}}' 0
seed one '{"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]}}' 24
seed mixed '{"__metadata__":{"format":"pt"},"a":{"dtype":"BF16","shape":[3],"data_offsets":[0,6]},"b":{"dtype":"F16","shape":[1],"data_offsets":[6,8]},"c":{"dtype":"I64","shape":[],"data_offsets":[8,16]},"d":{"dtype":"BOOL","shape":[0,4],"data_offsets":[16,16]},"e":{"dtype":"U8","shape":[5],"data_offsets":[16,21]}}' 21
seed unordered '{"z":{"dtype":"I32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F64","shape":[1,1],"data_offsets":[4,12]}}' 12
seed hole '{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}' 8
seed overflow '{"a":{"dtype":"F32","shape":[1099511627776,1099511627776],"data_offsets":[0,4]}}' 4

LOG="$OUT/fuzz.log"
echo "[fuzz] running for ${SECONDS_TO_RUN}s (log: $LOG)"
set +e
(cd "$OUT" && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ./fuzz_safetensors_header -max_total_time="$SECONDS_TO_RUN" -max_len=4096 -timeout=10 -rss_limit_mb=2048 \
  -artifact_prefix="$OUT/artifacts/" -print_final_stats=1 corpus) >"$LOG" 2>&1
rc=$?
set -e
grep -E "^(stat::number_of_executed_units|stat::peak_rss_mb|Done)" "$LOG" || true
if [[ $rc -ne 0 ]] || grep -qE "ERROR: (AddressSanitizer|LeakSanitizer|UndefinedBehaviorSanitizer|libFuzzer)|runtime error:" "$LOG"; then
  echo "[fuzz] FAILED (exit $rc); see $LOG and $OUT/artifacts/" >&2
  tail -n 40 "$LOG" >&2
  exit 1
fi
echo "[fuzz] ok: no crash in ${SECONDS_TO_RUN}s"
