#!/usr/bin/env bash
# Installs Debian's `chromium` for tests/chat_page.rs (headless browser test of the chat page).
# npm's browser downloads do not work on these machines; Debian's package does.
set -euo pipefail

if command -v chromium >/dev/null 2>&1; then
    echo "chromium is already installed: $(command -v chromium)"
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1; then
    # -n: fail instead of waiting for a password nobody will type (the test runs unattended).
    SUDO=(sudo -n)
else
    echo "install_chromium.sh: not root and no sudo: run 'apt-get install -y chromium' as root" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core
command -v chromium >/dev/null
echo "installed $(chromium --version 2>/dev/null || echo chromium)"
