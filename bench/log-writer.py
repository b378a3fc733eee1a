# A backend that writes LOG_BYTES of lines to stdout as fast as it can (bench/logs.js), in blocks of a
# header line ("block 00000042") and 1000 numbered lines ("000 xxx…" to "999 xxx…"), so that a reader can
# tell a dropped, repeated or split line. Says "start" first and "done" last; writes to RESULT_FILE when
# (wall clock, ms) it began and ended writing and how much it wrote.
import json, os, sys, time

total = int(os.environ.get("LOG_BYTES", str(200 * 1000 * 1000)))
line_len = int(os.environ.get("LINE_BYTES", "100"))
template = b"".join(b"%03d " % i + b"x" * (line_len - 5) + b"\n" for i in range(1000))
out = sys.stdout.buffer
out.write(b"start\n")
out.flush()
written = 0
lines = 0
block = 0
began = time.time()
while written < total:
    chunk = b"block %08d\n" % block + template
    out.write(chunk)
    written += len(chunk)
    lines += 1001
    block += 1
out.write(b"done\n")
out.flush()
ended = time.time()
with open(os.environ["RESULT_FILE"], "w") as f:
    json.dump({"began": began * 1000, "ended": ended * 1000, "bytes": written, "lines": lines, "blocks": block}, f)
