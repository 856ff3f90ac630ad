#!/usr/bin/env bash
# `npm test`: everything, in order, failing fast.
#   1. system tools: qemu-img + qemu-io (the oracle, apt package qemu-utils) and Chromium
#      (Playwright's browser, apt package chromium). Installed with apt when running as root on
#      Debian; otherwise the script says exactly what to install and stops.
#   2. node_modules (npm ci) if missing.
#   3. vitest: unit, interop, crash and bounded fuzz tests (vitest.config.ts), and at the same
#      time npm run build (dist/web + dist/cli/qcowscope.mjs).
#   4. Playwright end-to-end tests against the production build, if playwright.config.ts exists.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v qemu-img >/dev/null 2>&1 || missing+=(qemu-img)
command -v qemu-io >/dev/null 2>&1 || missing+=(qemu-io)
# Playwright launches Debian's Chromium (playwright.config.ts; CHROMIUM_PATH overrides the path).
[ -x "${CHROMIUM_PATH:-/usr/bin/chromium}" ] || missing+=("${CHROMIUM_PATH:-/usr/bin/chromium}")

if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = "0" ] && [ -f /etc/debian_version ] && command -v apt-get >/dev/null 2>&1; then
    echo "Installing system packages for tests (missing: ${missing[*]}): qemu-utils chromium"
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y qemu-utils chromium
  else
    echo "Missing: ${missing[*]}. Install with: sudo apt-get install qemu-utils chromium" >&2
    exit 1
  fi
fi

if [ ! -d node_modules ]; then
  npm ci
fi

# The build runs beside Vitest (it needs a core for a minute; the tests spend much of their time
# waiting on qemu-img), its output kept in a log shown when it ends. Both must pass.
build_log="$(mktemp)"
trap 'rm -f "$build_log"' EXIT
npm run build >"$build_log" 2>&1 &
build_pid=$!
vitest_status=0
npx vitest run || vitest_status=$?
build_status=0
wait "$build_pid" || build_status=$?
cat "$build_log"
if [ "$vitest_status" -ne 0 ] || [ "$build_status" -ne 0 ]; then
  [ "$build_status" -ne 0 ] && echo "npm run build failed (exit $build_status)" >&2
  exit 1
fi
if [ -f playwright.config.ts ]; then
  npx playwright test
fi
