#!/usr/bin/env bash
# Runs the Rust core's (crates/core) tests of the spawn/wait/stop paths (and the whole lifecycle without Node) under
# valgrind's memcheck: any definite leak or memory error fails. Usage: npm run leakcheck
# Left out: the property tests (thousands of cases under valgrind take too long; they run in npm test), the
# comparison of sysinfo with /proc and the held child's executable (valgrind answers /proc/PID/exe with its own
# path), and the test that a request written into a replica's queue is not replayed (under valgrind the relay
# is slow enough that the replica's reset comes before the write: nothing reached it, so a replay is right).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "valgrind is not installed (apt-get install valgrind)"; exit 1; }
binary=$(cargo test -p backend-process-manager-core --lib --no-run --message-format=json 2>/dev/null \
  | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{for(const l of s.split("\n")){try{const m=JSON.parse(l);if(m.executable)console.log(m.executable)}catch{}}})' | tail -1)
echo "valgrind on $binary"
valgrind --quiet --leak-check=full --show-leak-kinds=definite --errors-for-leak-kinds=definite \
  --error-exitcode=1 --trace-children=no --child-silent-after-fork=yes \
  "$binary" --test-threads=1 os:: lifecycle:: state:: net:: error:: \
  --skip properties --skip the_portable_implementation_agrees_with_proc \
  --skip a_held_child_runs_its_program_only_when_let_go \
  --skip a_post_or_an_unknown_protocol_reset_before_the_first_byte_is_not_replayed 2>&1 | tee target/leakcheck.log
echo "leakcheck: no definite leaks, no memory errors"
