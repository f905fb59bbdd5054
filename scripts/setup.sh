#!/usr/bin/env bash
# Prepares a fresh machine: a Vulkan driver (Mesa's lavapipe, on the CPU, when no Vulkan
# driver is installed) and the reference model. Idempotent; safe to run again.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# (A loop, not `ls ... | grep`: under pipefail, ls failing on the directory that does not exist
# failed the test even when the other held a driver, and setup reinstalled lavapipe every run.)
have_vulkan_icd() {
  local f
  for f in /usr/share/vulkan/icd.d/*.json /etc/vulkan/icd.d/*.json; do
    [ -e "$f" ] && return 0
  done
  return 1
}

if ! have_vulkan_icd; then
  if command -v apt-get >/dev/null 2>&1; then
    echo "setup: no Vulkan driver found; installing Mesa's lavapipe (mesa-vulkan-drivers)" >&2
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq mesa-vulkan-drivers >/dev/null
  else
    echo "setup: no Vulkan driver found; install your GPU's Vulkan driver (or Mesa's lavapipe)" >&2
  fi
fi

./models/fetch_smollm2.sh >/dev/null
./scripts/fetch_tokenizer_suite.sh
echo "setup: ready (model: models/SmolLM2-135M-Instruct.Q4_1.gguf)" >&2
