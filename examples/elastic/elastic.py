#!/usr/bin/python3
"""An elastic HTTP service: a front end that clones the running service to add capacity.

    elastic.py serve [--port 8080] [--mode clone|process] [--min 1] [--max 4] ...
    elastic.py backend --listen ADDRESS:PORT [--records N]    # a cold backend (what --mode
                                                              # process starts for each one)
    elastic.py backend --self-test                            # load, answer one request, exit

The service holds a table it takes a while to build (--records, --load-rounds: a stand-in for
loading a dataset and warming caches) and answers GET /item/N with a digest that costs CPU
(--work). `serve` builds the table once, listens on 127.0.0.1:PORT and forwards each request to
the backend with the fewest requests in flight. Every 0.2 s it looks at the requests waiting per
backend: above --scale-up for two looks in a row it adds a backend; with nothing in flight for
--idle seconds it retires the newest, down to --min.

Adding a backend:
  --mode clone    clones this process with the SnowFlock API (a ticket of one clone): the clone
                  has the table already and serves on its cluster address at once;
  --mode process  starts a fresh `elastic.py backend` process, which builds the table first (a
                  cold start, as a new VM or container would).
Each addition prints when it was decided and when it answered its first request; --timeline
FILE writes, per second, requests completed, backends serving and mean latency.
"""
import argparse
import asyncio
import hashlib
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import time

BACKEND_PORT = 8090


def build_table(records, rounds):
    """The service's state: `records` digests, each `rounds` SHA-256 deep."""
    table = []
    for i in range(records):
        v = b"%d" % i
        for _ in range(rounds):
            v = hashlib.sha256(v).digest()
        table.append(v)
    return table


def answer(table, item, work, name):
    v = table[item % len(table)]
    for _ in range(work):
        v = hashlib.sha256(v).digest()
    return {"item": item, "digest": v.hex(), "backend": name}


def backend_handler(table, work, name):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            parts = self.path.strip("/").split("/")
            if len(parts) != 2 or parts[0] != "item" or not parts[1].isdigit():
                self.send_error(404, "use /item/N")
                return
            body = json.dumps(answer(table, int(parts[1]), work, name)).encode() + b"\n"
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass
    return Handler


def serve_backend(address, port, table, work):
    """Serves until killed (one request at a time: one backend is one core's worth)."""
    http.server.HTTPServer.allow_reuse_address = True
    http.server.HTTPServer.request_queue_size = 256
    server = http.server.HTTPServer((address, port), backend_handler(table, work, f"{address}:{port}"))
    server.serve_forever()


class Backend:
    def __init__(self, name, address, port, decided):
        self.name, self.address, self.port = name, address, port
        self.decided = decided          # when the front end decided to add it
        self.in_flight = 0
        self.ready = False
        self.draining = False
        self.first_served = None
        self.ticket = None              # --mode clone
        self.process = None             # --mode process


class FrontEnd:
    def __init__(self, args, table, listener):
        self.args, self.table, self.listener = args, table, listener
        self.backends = []
        self.transports = set()         # every socket this process has open (closed in a clone)
        self.scaling = False
        self.hot_looks = 0
        self.last_busy = time.monotonic()
        self.completed = 0
        self.latency_sum = 0.0
        self.started = time.monotonic()
        self.next_process_port = listener.getsockname()[1] + 100
        self.timeline = open(args.timeline, "w") if args.timeline else None
        if self.timeline:
            self.timeline.write("seconds requests_per_second backends mean_latency_ms\n")

    def log(self, text):
        print(f"elastic: {time.monotonic() - self.started:7.2f} s: {text}", file=sys.stderr, flush=True)

    # --- adding and retiring backends ---

    def add_backend(self):
        decided = time.monotonic()
        n = len(self.backends) + 1
        if self.args.mode == "clone":
            import snowflock
            ticket = snowflock.request_ticket(clones=1, driver=self.args.driver)
            if ticket.clone() > 0:
                self.become_backend(ticket)  # does not return
            b = Backend(f"clone {ticket.node(1).address}", ticket.node(1).address, BACKEND_PORT, decided)
            b.ticket = ticket
        else:
            port = self.next_process_port
            self.next_process_port += 1
            b = Backend(f"process :{port}", "127.0.0.1", port, decided)
            b.process = subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), "backend", "--listen", f"127.0.0.1:{port}",
                 "--records", str(self.args.records), "--load-rounds", str(self.args.load_rounds),
                 "--work", str(self.args.work)])
        self.backends.append(b)
        self.log(f"adding backend {n} ({b.name})")
        return b

    def become_backend(self, ticket):
        """In a new clone: drop the parent's sockets and serve on this clone's address."""
        import snowflock
        for fd in [self.listener.fileno()] + [t.get_extra_info("socket").fileno() for t in self.transports]:
            try:
                os.close(fd)
            except OSError:
                pass
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        try:
            serve_backend(ticket.node(ticket.id).address, BACKEND_PORT, self.table, self.args.work)
        finally:
            snowflock.sync(1)

    async def await_ready(self, b):
        """Ready once the backend accepts connections (a cold one binds after loading)."""
        while True:
            if b.process is not None and b.process.poll() is not None:
                raise RuntimeError(f"backend {b.name} exited with {b.process.returncode} while starting")
            try:
                _, w = await asyncio.open_connection(b.address, b.port)
                w.close()
                b.ready = True
                self.log(f"backend {b.name} accepts requests {time.monotonic() - b.decided:.3f} s after the decision")
                return
            except OSError:
                await asyncio.sleep(0.005)

    async def retire(self, b):
        b.draining = True
        while b.in_flight:
            await asyncio.sleep(0.01)
        self.backends.remove(b)
        if b.ticket is not None:
            b.ticket.kill()
        if b.process is not None:
            b.process.terminate()
            b.process.wait()
        self.log(f"retired backend {b.name}; {len(self.backends)} left")

    async def scale(self, add):
        self.scaling = True
        try:
            if add:
                await self.await_ready(self.add_backend())
            else:
                await self.retire(self.backends[-1])
        finally:
            self.scaling = False

    async def autoscale(self):
        while True:
            await asyncio.sleep(0.2)
            serving = [b for b in self.backends if b.ready and not b.draining]
            in_flight = sum(b.in_flight for b in self.backends)
            now = time.monotonic()
            if in_flight:
                self.last_busy = now
            self.hot_looks = self.hot_looks + 1 if serving and in_flight / len(serving) > self.args.scale_up else 0
            if self.scaling:
                continue
            if self.hot_looks >= 2 and len(self.backends) < self.args.max:
                self.hot_looks = 0
                asyncio.ensure_future(self.scale(True))
            elif now - self.last_busy > self.args.idle and len(self.backends) > self.args.min:
                self.last_busy = now
                asyncio.ensure_future(self.scale(False))

    async def write_timeline(self):
        while self.timeline:
            before, latency_before = self.completed, self.latency_sum
            await asyncio.sleep(1.0)
            done = self.completed - before
            mean = (self.latency_sum - latency_before) / done * 1000 if done else 0.0
            serving = sum(1 for b in self.backends if b.ready and not b.draining)
            self.timeline.write(f"{time.monotonic() - self.started:.1f} {done} {serving} {mean:.1f}\n")
            self.timeline.flush()

    # --- forwarding ---

    def pick(self):
        serving = [b for b in self.backends if b.ready and not b.draining]
        return min(serving, key=lambda b: b.in_flight) if serving else None

    async def forward(self, path):
        b = self.pick()
        while b is None:  # only while the first backend starts
            await asyncio.sleep(0.005)
            b = self.pick()
        b.in_flight += 1
        start = time.monotonic()
        try:
            reader, writer = await asyncio.open_connection(b.address, b.port)
            self.transports.add(writer.transport)
            try:
                writer.write(f"GET {path} HTTP/1.0\r\nHost: backend\r\n\r\n".encode())
                response = await reader.read()
            finally:
                self.transports.discard(writer.transport)
                writer.close()
        finally:
            b.in_flight -= 1
        head, _, body = response.partition(b"\r\n\r\n")
        status = head.split(b"\r\n", 1)[0].split(b" ", 2)
        if b.first_served is None:
            b.first_served = time.monotonic()
            self.log(f"backend {b.name} served its first request {b.first_served - b.decided:.3f} s after the decision")
        self.completed += 1
        self.latency_sum += time.monotonic() - start
        return (int(status[1]) if len(status) > 1 else 502), body

    async def client(self, reader, writer):
        self.transports.add(writer.transport)
        try:
            while True:
                request = await reader.readuntil(b"\r\n\r\n")
                line = request.split(b"\r\n", 1)[0].split()
                if len(line) != 3 or line[0] != b"GET":
                    writer.write(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    break
                try:
                    status, body = await self.forward(line[1].decode())
                except OSError as e:
                    status, body = 502, f"backend failed: {e}\n".encode()
                keep = line[2] == b"HTTP/1.1" and b"connection: close" not in request.lower()
                writer.write(b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n"
                             % (status, b"OK" if status == 200 else b"Error", len(body),
                                b"" if keep else b"Connection: close\r\n") + body)
                await writer.drain()
                if not keep:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.transports.discard(writer.transport)
            writer.close()

    async def run(self):
        for _ in range(self.args.min):
            await self.await_ready(self.add_backend())
        self.log(f"serving on 127.0.0.1:{self.listener.getsockname()[1]} with {len(self.backends)} backend(s)")
        server = await asyncio.start_server(self.client, sock=self.listener)
        tasks = [asyncio.ensure_future(self.autoscale()), asyncio.ensure_future(self.write_timeline())]
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for s in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(s, stop.set)
        try:
            await stop.wait()
        finally:
            for t in tasks:
                t.cancel()
            server.close()
            for b in list(self.backends):
                if b.ticket is not None:
                    b.ticket.kill()
                if b.process is not None:
                    b.process.terminate()
                    b.process.wait()
            self.log("stopped")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="the front end and the elastic pool of backends")
    serve.add_argument("--port", type=int, default=8080, help="the front end's port (0: any free one)")
    serve.add_argument("--mode", choices=("clone", "process"), default="clone")
    serve.add_argument("--driver", default="auto", help="the clone driver (--mode clone)")
    serve.add_argument("--min", type=int, default=1)
    serve.add_argument("--max", type=int, default=os.cpu_count(), help="at most this many backends (default: one per core)")
    serve.add_argument("--scale-up", type=float, default=2.0, help="requests waiting per backend that add one")
    serve.add_argument("--idle", type=float, default=3.0, help="seconds without requests that retire one")
    serve.add_argument("--timeline", help="write requests/s, backends and latency per second here")
    backend = sub.add_parser("backend", help="one cold backend: build the table, then serve")
    backend.add_argument("--listen", default="127.0.0.1:8090")
    backend.add_argument("--self-test", action="store_true",
                         help="build the table, answer one request over loopback, print the times, exit")
    for p in (serve, backend):
        p.add_argument("--records", type=int, default=200000)
        p.add_argument("--load-rounds", type=int, default=8)
        p.add_argument("--work", type=int, default=50000, help="SHA-256 rounds per request (about 20 ms)")
    args = parser.parse_args()

    start = time.monotonic()
    if args.command == "backend":
        if args.self_test:
            return self_test(args, start)
        address, _, port = args.listen.rpartition(":")
        table = build_table(args.records, args.load_rounds)
        serve_backend(address, int(port), table, args.work)
        return 0

    # The front end's socket comes first: for an ordinary user the first ticket moves this
    # process into the clusters' own network namespace, and the socket stays in this one.
    listener = socket.create_server(("127.0.0.1", args.port), reuse_port=False, backlog=256)
    table = build_table(args.records, args.load_rounds)
    print(f"elastic: the table took {time.monotonic() - start:.2f} s to build", file=sys.stderr, flush=True)
    asyncio.run(FrontEnd(args, table, listener).run())
    return 0


def self_test(args, start):
    """A cold backend's time to serve: build the table, serve, answer one request to itself."""
    table = build_table(args.records, args.load_rounds)
    loaded = time.monotonic()
    server = http.server.HTTPServer(("127.0.0.1", 0), backend_handler(table, args.work, "self-test"))
    if os.fork() == 0:
        server.handle_request()
        os._exit(0)
    with socket.create_connection(server.server_address) as c:
        c.sendall(b"GET /item/7 HTTP/1.0\r\n\r\n")
        reply = b"".join(iter(lambda: c.recv(65536), b""))
    os.wait()
    ok = reply.startswith(b"HTTP/1.0 200")
    print(f"elastic backend: table built in {loaded - start:.3f} s, first request answered "
          f"{time.monotonic() - start:.3f} s after start: {'ok' if ok else 'FAILED'}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
