#!/usr/bin/env bash
# libnccl for LINKING host-trainer's `nccl` feature on a machine with no CUDA install, from PyPI.
#
#   source ../shared/cuda/toolkit.sh cudnn     # the CUDA 13 build toolkit (read its header)
#   source scripts/nccl-env.sh                 # installs the NCCL wheel once, then exports env
#   cargo build --profile gpu -p host-trainer --features cudnn,nccl
#
# Why it is needed: candle enables cudarc's `dynamic-linking`, so cudarc's `nccl` feature adds
# `-lnccl` to the link (cudarc's build.rs), which needs a libnccl.so the linker can find. The wheel
# ships only libnccl.so.2; the libnccl.so link name made here points at it. The binary then needs
# libnccl.so.2 at run time even when `--distributed nccl` is not used: scripts/gpu_check.sh puts
# the GPU machine's own (PyTorch's nvidia/nccl/lib) on LD_LIBRARY_PATH.
#
# 2.30.x: the NCCL API version cudarc 0.19's `nccl` feature binds (nccl-02030), and the version
# this project's PyTorch 2.15 pins. Only long-stable entry points are called (ncclGetUniqueId,
# ncclCommInitRank, ncclAllGather, ncclCommAbort), so other 2.x runtimes also resolve them.
set -u
_n=${NCCL_WHEELS_DIR:-$HOME/.cache/nccl-cu13-wheel}
_l="$_n/site/nvidia/nccl/lib"
if [ ! -e "$_l/libnccl.so.2" ]; then
  rm -rf "$_n/site"; mkdir -p "$_n"
  python3 -m pip install -q --no-deps --only-binary=:all: --target "$_n/site" nvidia-nccl-cu13==2.30.7 ||
    return 1 2>/dev/null || exit 1
fi
ln -sf libnccl.so.2 "$_l/libnccl.so"
export LIBRARY_PATH="$_l${LIBRARY_PATH:+:$LIBRARY_PATH}"
echo "NCCL link library ready: $_l"
