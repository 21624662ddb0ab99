#!/usr/bin/env bash
# Packs what the GPU machine needs into device/ (git-ignored), small enough for the device tool's
# 64 MiB transfer: build/cuda/{smt,smt_gpu_tests} stripped and gzip'ed (~23 MB together; unpacked
# they are ~84 MB, too much to carry build/cuda itself). bench/gpu_session.sh unpacks them there.
#   cmake --preset cuda && cmake --build --preset cuda -j2 && bash bench/pack_for_device.sh
# then run with carry ["device"] and timeout_s 600:  bash bench/gpu_session.sh all 540
set -eu
mkdir -p device/bin
for b in smt smt_gpu_tests; do
  [ -x "build/cuda/$b" ] || { echo "build/cuda/$b is missing: build the cuda preset first" >&2; exit 2; }
  strip -o "device/bin/$b" "build/cuda/$b"
  gzip -9 -f "device/bin/$b"
done
git rev-parse HEAD >device/bin/COMMIT
du -ch device/bin/*.gz | tail -1
# All of device/ travels: anything else left there counts against the 64 MiB too.
total_kib=$(du -sk device | cut -f1)
[ "$total_kib" -le $((60 * 1024)) ] || echo "warning: device/ holds $((total_kib / 1024)) MiB; remove what is not device/bin" >&2
