"""A backend that gives its readiness signal after $DELAY_MS, and appends the epoch ms of the signal to
$MARK_FILE (bench/signals.js): $SIGNAL `notify` sends READY=1 on $NOTIFY_SOCKET, `stdout` prints a line,
`fd` accepts its first connection on the listening socket it was handed as descriptor 3 (the moment of the
accept is the mark) and answers it 200. Then it stays until stopped (answering requests with `fd`)."""
import os
import socket
import sys
import time

signal = os.environ["SIGNAL"]
time.sleep(int(os.environ.get("DELAY_MS", "0")) / 1000)
if signal == "notify":
    say = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    say.connect(os.environ["NOTIFY_SOCKET"])
    at = time.time()
    say.send(b"READY=1")
elif signal == "stdout":
    at = time.time()
    sys.stdout.write("ready now\n")
    sys.stdout.flush()
elif signal == "fd":
    server = socket.socket(fileno=3)
    conn, _ = server.accept()
    at = time.time()
    conn.recv(4096)
    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
    conn.close()
else:
    raise SystemExit(f"unknown SIGNAL {signal}")
with open(os.environ["MARK_FILE"], "a") as mark:
    mark.write(f"{at * 1000}\n")
if signal == "fd":
    while True:
        conn, _ = server.accept()
        conn.recv(4096)
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
        conn.close()
while True:
    time.sleep(3600)
