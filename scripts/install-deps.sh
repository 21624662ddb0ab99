#!/usr/bin/env bash
# Installs the Debian/Ubuntu packages smt builds against (idempotent; quick when present).
set -euo pipefail
pkgs=(build-essential cmake pkg-config libopenmpi-dev openmpi-bin libhdf5-dev hdf5-tools
      libboost-program-options-dev libopenblas-dev libgtest-dev python3 python3-numpy python3-h5py)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# For the fuzz targets only (scripts/fuzz.sh): clang with libFuzzer and its OpenMP runtime.
fuzz_pkgs=(clang libclang-rt-dev libomp-dev)
fuzz_missing=()
for p in "${fuzz_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || fuzz_missing+=("$p")
done
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
if [ ${#missing[@]} -gt 0 ] || [ ${#fuzz_missing[@]} -gt 0 ]; then
  $SUDO apt-get update -qq || [ ${#missing[@]} -eq 0 ]  # only the optional fuzz packages: go on
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if [ ${#fuzz_missing[@]} -gt 0 ]; then
  echo "installing (fuzzing): ${fuzz_missing[*]}"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${fuzz_missing[@]}" >/dev/null ||
    echo "install-deps: could not install ${fuzz_missing[*]}: scripts/fuzz.sh will not build"
fi
