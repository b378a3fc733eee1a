#!/usr/bin/env bash
# The JS suite on a Windows node.exe (Node 22) under Wine: ../shared/tools/test-windows.sh builds the addon for
# x86_64-pc-windows-gnu and runs scripts/test-wine.js with its node.exe (XPLAT_NODE / XPLAT_NODE_SCRIPT; the
# Rust tests are left to its own run: `--bins` selects no test target, so cargo builds and runs nothing). Output per test file; exit 0 when every
# file passed. Arguments: test files to run (default all). XPLAT_TOOLS: where test-windows.sh is.
set -uo pipefail
cd "$(dirname "$0")/.."
tools=${XPLAT_TOOLS:-../shared/tools}
export XPLAT_NODE=1
# The tests skip what Wine 8 lacks only under Wine (helpers.js: wineLacks); Wine passes the variable on.
export BPM_UNDER_WINE=1
# test-windows.sh runs `node.exe SCRIPT ADDON`; the files to run come through a wrapper script.
script=target/wine-js/run.js
mkdir -p target/wine-js
{
  echo "process.argv.push(...$(printf '%s\n' "$@" | python3 -c 'import json,sys; print(json.dumps([l for l in sys.stdin.read().splitlines() if l]))'))"
  echo "require('../../scripts/test-wine.js')"
} >"$script"
export XPLAT_NODE_SCRIPT=$script
exec bash "$tools/test-windows.sh" . --bins
