"""A backend that answers its first request at once (Node's http needs 5-10 ms to warm up after it
listens, for every waiter alike), so the readiness benchmark measures the waiters, not the backend.
Listens on $HOST:$PORT after $LISTEN_DELAY_MS, appends the epoch ms of that moment to $LISTEN_MARK_FILE,
prints a line (as most servers do), and answers every request with 200."""
import os
import socket
import time

time.sleep(int(os.environ.get("LISTEN_DELAY_MS", "0")) / 1000)
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind((os.environ["HOST"], int(os.environ["PORT"])))
server.listen(128)
with open(os.environ["LISTEN_MARK_FILE"], "a") as mark:
    mark.write(f"{time.time() * 1000}\n")
print("listening", flush=True)
while True:
    conn, _ = server.accept()
    conn.recv(4096)
    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
    conn.close()
