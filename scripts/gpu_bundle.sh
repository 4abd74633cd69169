#!/usr/bin/env bash
# scripts/gpu_bundle.sh: builds the carried GPU proof, gpu-bundle/ (git-ignored), for one `run` call on a
# lent GPU machine (its README: /work/.library/device; the run is `bash gpu-bundle/run.sh`, carry
# ["gpu-bundle"]). CUDA for sm_80 and sm_90, Release, stripped:
#   bin/      sft, sft_tests, bench_attention, and libsft_cuda.so beside them (the CUDA plugin they dlopen:
#             kernels/cuda_plugin.h)
#   lib/      the shared libraries ldd shows that are neither LibTorch, CUDA/NCCL/cuDNN nor the C/C++
#             runtime (libsentencepiece, libyaml-cpp, ...); the machine's torch/lib + nvidia/*/lib give the rest
#   model/    SmolLM2-135M's config.json and tokenizer files WITHOUT its weights: run.sh makes random-init
#             weights there with that machine's python3 + transformers (throughput and loss-falls checks only)
#   data/     the quiz examples of scripts/make_quiz_data.py (train 429, eval 48)
#   scripts/  bench_train.py (the HF transformers + PEFT side of the training table)
#   run.sh    scripts/gpu_run.sh; MANIFEST: commit, build settings, sizes
# Fails if the bundle exceeds 48 MiB, if the plugin lacks sm_80 or sm_90 code, or if ldd with
# LD_LIBRARY_PATH = gpu-bundle/lib leaves a library unresolved or resolved outside the bundle that is not
# torch/CUDA/NCCL/cuDNN/cuBLAS... or the C/C++ runtime. Reuses build/ when it is a Release CUDA build for
# 80;90 (what scripts/build.sh makes where nvcc exists), otherwise builds build-gpu-bundle/.
# Usage: bash scripts/gpu_bundle.sh            then: bash gpu-bundle/run.sh --dry-run (CPU), or on the GPU
#        bash gpu-bundle/run.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BUNDLE="$ROOT/gpu-bundle"
LIMIT_MIB=48
TARGETS=(sft sft_tests bench_attention)
fail() { echo "gpu_bundle: $*" >&2; exit 1; }

# ---- the build: reuse build/ when it already is what we need ----
cache_value() { sed -n "s/^$2:[A-Z]*=//p" "$1/CMakeCache.txt" 2>/dev/null | head -1; }
build_ok() {
  [[ -f "$1/CMakeCache.txt" ]] && [[ "$(cache_value "$1" CMAKE_BUILD_TYPE)" == Release ]] &&
    [[ "$(cache_value "$1" SFT_CUDA_ARCHITECTURES)" == "80;90" ]] && compgen -G "$1/CMakeFiles/*/CMakeCUDACompiler.cmake" >/dev/null
}
BUILD="${SFT_BUNDLE_BUILD_DIR:-}"
if [[ -z "$BUILD" ]]; then
  if build_ok build; then BUILD="$ROOT/build"; else BUILD="$ROOT/build-gpu-bundle"; fi
fi
if ! build_ok "$BUILD"; then
  [[ -x /usr/local/cuda/bin/nvcc ]] || command -v nvcc >/dev/null || fail "nvcc not found: the bundle needs a CUDA build"
  cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DSFT_CUDA=ON "-DSFT_CUDA_ARCHITECTURES=80;90" >/dev/null
fi
echo "[bundle] building ${TARGETS[*]} in $BUILD"
build_args=()
for t in "${TARGETS[@]}"; do build_args+=(--target "$t"); done
cmake --build "$BUILD" -j"${SFT_JOBS:-2}" "${build_args[@]}" 2>&1 |
  grep -v -E "^\[ *[0-9]+%\]|ptxas info|bytes stack frame|Used [0-9]+ registers|Compiling entry function|Function properties" || true
for t in "${TARGETS[@]}"; do [[ -x "$BUILD/$t" ]] || fail "build of $t failed"; done
PLUGIN=libsft_cuda.so
[[ -f "$BUILD/$PLUGIN" ]] || fail "build of the CUDA plugin ($BUILD/$PLUGIN) failed"

# ---- gather ----
rm -rf "$BUNDLE"
mkdir -p "$BUNDLE"/{bin,lib,model,data,scripts}
for t in "${TARGETS[@]}" "$PLUGIN"; do strip --strip-unneeded -o "$BUNDLE/bin/$t" "$BUILD/$t"; done
# Our kernels must be in the plugin as sm_80 and sm_90 machine code (no JIT from PTX on the device).
# cuobjdump: PATH, the CUDA toolkit, or the pinned nvidia-cuda-cuobjdump wheel in .venv (as check_cuda_build.py).
CUOBJDUMP="$(command -v cuobjdump || ls /usr/local/cuda/bin/cuobjdump .venv/lib/python3*/site-packages/nvidia/*/bin/cuobjdump 2>/dev/null | head -1 || true)"
[[ -x "$CUOBJDUMP" ]] || fail "cuobjdump not found (PATH, /usr/local/cuda/bin, .venv's nvidia wheels)"
elfs="$("$CUOBJDUMP" --list-elf "$BUNDLE/bin/$PLUGIN" 2>/dev/null || true)"
for sm in sm_80 sm_90; do grep -q "$sm" <<<"$elfs" || fail "bin/$PLUGIN has no $sm code (cuobjdump --list-elf)"; done

# Libraries LibTorch's wheel and the CUDA/NCCL/cuDNN wheels provide on the device, and the C/C++ runtime.
PROVIDED='^(linux-vdso|ld-linux|libc\.so|libm\.so|libdl\.so|librt\.so|libpthread\.so|libutil\.so|libstdc\+\+\.so|libgcc_s\.so|libgomp|libtorch|libc10|libcaffe2|libshm|libcuda|libcudart|libcublas|libcudnn|libcufft|libcufile|libcurand|libcusolver|libcusparse|libcupti|libnccl|libnvJitLink|libnvrtc|libnvshmem|libnvToolsExt|libnvtx|libnvperf)'
ldd_rows() {  # "name path" per library (path "not found" when unresolved)
  LD_LIBRARY_PATH="$BUNDLE/lib" ldd "$1" |
    awk '/=>/ {print $1, ($3 == "not" ? "not-found" : $3)} !/=>/ && NF {n = $1; sub(".*/", "", n); print n, n}'
}
for t in "${TARGETS[@]}" "$PLUGIN"; do
  while read -r name path; do
    [[ "$name" =~ $PROVIDED ]] && continue
    [[ "$path" == not-found ]] && fail "bin/$t needs $name, which is not found here either"
    [[ -f "$BUNDLE/lib/$name" ]] || cp -L "$path" "$BUNDLE/lib/$name"
  done < <(ldd_rows "$BUNDLE/bin/$t")
done
# The check: with only the bundle on LD_LIBRARY_PATH, everything else is resolved inside it.
problems=()
for f in "$BUNDLE"/bin/* "$BUNDLE"/lib/*; do
  while read -r name path; do
    [[ "$name" =~ $PROVIDED ]] && continue
    [[ "$path" == "$BUNDLE"/lib/* || "$path" == "$name" ]] || problems+=("${f#$BUNDLE/}: $name -> $path")
  done < <(ldd_rows "$f")
done
((${#problems[@]} == 0)) || fail "libraries outside the bundle and not provided on the device: ${problems[*]}"

# Model config + tokenizer (no weights), quiz data, the HF side of the training table.
MODEL_SRC="$ROOT/.cache/models/smollm2-135m-instruct"
[[ -f "$MODEL_SRC/config.json" ]] || bash scripts/get_model.sh >/dev/null
for f in config.json generation_config.json tokenizer.json tokenizer_config.json chat_template.jinja; do
  [[ -f "$MODEL_SRC/$f" ]] && cp "$MODEL_SRC/$f" "$BUNDLE/model/"
done
[[ -f .cache/data/quiz/train.jsonl ]] || .venv/bin/python scripts/make_quiz_data.py >/dev/null
cp .cache/data/quiz/train.jsonl .cache/data/quiz/eval.jsonl "$BUNDLE/data/"
cp scripts/bench_train.py "$BUNDLE/scripts/"
cp scripts/gpu_run.sh "$BUNDLE/run.sh"
chmod +x "$BUNDLE/run.sh"

{
  echo "commit: $(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)$(git -C "$ROOT" diff --quiet 2>/dev/null || echo ' (+ uncommitted changes)')"
  echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -m), from $BUILD ($(cache_value "$BUILD" CMAKE_BUILD_TYPE), CUDA archs $(cache_value "$BUILD" SFT_CUDA_ARCHITECTURES))"
  echo "nvcc: $("${CUDACXX:-/usr/local/cuda/bin/nvcc}" --version | tail -1)"
  echo "torch (build): $("$ROOT/.venv/bin/python" -c 'import torch; print(torch.__version__)')"
  (cd "$BUNDLE" && find . -type f ! -name MANIFEST | sort | xargs du -b | awk '{printf "%10d %s\n", $1, $2}')
} >"$BUNDLE/MANIFEST"

size_kib=$(du -sk "$BUNDLE" | cut -f1)
((size_kib <= LIMIT_MIB * 1024)) || fail "bundle is $((size_kib / 1024)) MiB > ${LIMIT_MIB} MiB"
echo "[bundle] ok: $BUNDLE, $((size_kib / 1024)) MiB ($(ls "$BUNDLE/lib" | tr '\n' ' '))"
