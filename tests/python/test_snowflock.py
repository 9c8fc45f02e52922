"""Tests of the snowflock Python module with real sandbox clones (namespaces, a bridge).

Run by ctest as root and as an ordinary user (tests/as-ordinary-user):
    PYTHONPATH=build/python /usr/bin/python3 -m unittest -v test_snowflock
Every clone body runs through in_clone(), so an exception in a clone ends that clone with a
status the parent checks, instead of carrying on with the rest of the test run.
"""
import os
import select
import json
import signal
import socket
import subprocess
import sys
import threading
import traceback
import unittest
from pathlib import Path

import snowflock

HERE = Path(__file__).resolve().parent
AWAIT_SECONDS = 60  # an upper bound for events that come at once; only a failure waits this long


def in_clone(body):
    """Runs body() in a clone and ends the clone: status 0, or 99 if body raised."""
    try:
        body()
    except BaseException:
        traceback.print_exc()
        snowflock.sync(99)
    snowflock.sync(0)


def read_until_eof(fd):
    """Reads fd until every writer has closed it; fails the test if that takes too long."""
    chunks = []
    while True:
        ready, _, _ = select.select([fd], [], [], AWAIT_SECONDS)
        if not ready:
            raise AssertionError("a pipe's writers are still alive (clones left running?)")
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def example(name, tree_variable, tree_path):
    """An example program: next to this file (copied there for the ordinary user), else in the
    tree that the environment variable tree_variable (SF_BUILD_DIR, SF_SOURCE_DIR) names."""
    local = HERE / name
    return str(local) if local.exists() else str(Path(os.environ[tree_variable]) / tree_path)


class CloneLifecycle(unittest.TestCase):
    def test_clones_sync_and_the_parent_joins_their_statuses(self):
        with snowflock.request_ticket(clones=3) as ticket:
            self.assertEqual(ticket.granted, 3)
            self.assertEqual(ticket.requested, 3)
            self.assertIn(ticket.driver, ("sandbox", "qemu"))
            cid = ticket.clone()
            if cid > 0:
                snowflock.sync(cid * 10)
            self.assertEqual(cid, 0)
            statuses = ticket.join()
        self.assertEqual([(s.id, s.end, s.value) for s in statuses],
                         [(i, snowflock.End.SYNCED, i * 10) for i in (1, 2, 3)])
        self.assertTrue(all(not s.ok for s in statuses))  # nonzero statuses are not ok

    def test_each_clone_knows_its_identity_hostname_and_address(self):
        r, w = os.pipe()
        with snowflock.request_ticket(clones=2) as ticket:
            nodes = ticket.nodes
            cid = ticket.clone()
            if cid > 0:
                def report():
                    os.close(r)
                    me = ticket.node(cid)
                    # The node's address is configured here: binding to it works.
                    with socket.socket() as s:
                        s.bind((me.address, 0))
                    line = f"{cid} {snowflock.clone_id()} {ticket.id} {ticket.is_clone} {socket.gethostname()} {me.address}\n"
                    os.write(w, line.encode())
                in_clone(report)
            os.close(w)
            lines = sorted(read_until_eof(r).decode().splitlines())
            os.close(r)
            statuses = ticket.join()
        self.assertEqual([s.ok for s in statuses], [True, True])
        self.assertEqual(snowflock.clone_id(), 0)
        self.assertEqual([n.id for n in nodes], [0, 1, 2])
        self.assertEqual(len({n.address for n in nodes}), 3)
        self.assertEqual(len({n.hostname for n in nodes}), 3)
        self.assertEqual(lines, [f"{i} {i} {i} True {nodes[i].hostname} {nodes[i].address}" for i in (1, 2)])

    def test_a_clone_has_a_private_copy_of_the_parents_memory(self):
        data = {"value": 41, "list": [1, 2, 3]}
        r, w = os.pipe()
        with snowflock.request_ticket(clones=2) as ticket:
            cid = ticket.clone()
            if cid > 0:
                def change_and_report():
                    os.close(r)
                    data["value"] += cid  # each clone sees the parent's 41 and changes its own copy
                    data["list"].append(cid)
                    os.write(w, f"{cid}:{data['value']}:{data['list']}\n".encode())
                in_clone(change_and_report)
            os.close(w)
            lines = sorted(read_until_eof(r).decode().splitlines())
            os.close(r)
            self.assertTrue(all(s.ok for s in ticket.join()))
        self.assertEqual(lines, ["1:42:[1, 2, 3, 1]", "2:43:[1, 2, 3, 2]"])
        self.assertEqual(data, {"value": 41, "list": [1, 2, 3]})

    def test_exit_without_sync_and_death_by_signal_are_reported(self):
        with snowflock.request_ticket(clones=3) as ticket:
            cid = ticket.clone()
            if cid == 1:
                os._exit(3)
            if cid == 2:
                os.kill(os.getpid(), signal.SIGKILL)
            if cid == 3:
                in_clone(lambda: None)
            statuses = ticket.join()
        self.assertEqual([(s.id, s.end, s.value) for s in statuses],
                         [(1, snowflock.End.EXITED, 3), (2, snowflock.End.SIGNALED, signal.SIGKILL),
                          (3, snowflock.End.SYNCED, 0)])

    def test_output_printed_before_clone_appears_once(self):
        code = ("import snowflock\n"
                "print('before the clone')\n"  # buffered: stdout is a pipe
                "t = snowflock.request_ticket(clones=2)\n"
                "cid = t.clone()\n"
                "if cid > 0:\n"
                "    print('clone', cid)\n"
                "    snowflock.sync(0)\n"
                "print('joined', [s.ok for s in t.join()])\n")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env={**os.environ, "PYTHONUNBUFFERED": ""}, timeout=AWAIT_SECONDS)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(sorted(out.stdout.splitlines()),
                         ["before the clone", "clone 1", "clone 2", "joined [True, True]"])

    def test_poll_exited_reports_a_clone_that_ended_while_others_run(self):
        release_r, release_w = os.pipe()
        with snowflock.request_ticket(clones=2) as ticket:
            cid = ticket.clone()
            if cid == 1:
                in_clone(lambda: None)
            if cid == 2:
                in_clone(lambda: os.read(release_r, 1))  # waits for the parent
            ended = []
            while not ended:
                ready, _, _ = select.select([ticket.exit_fd()], [], [], AWAIT_SECONDS)
                self.assertTrue(ready, "exit_fd never became readable")
                ended += ticket.poll_exited()
            self.assertEqual([(s.id, s.end) for s in ended], [(1, snowflock.End.SYNCED)])
            os.write(release_w, b"x")
            statuses = ticket.join()
        self.assertEqual([(s.id, s.ok) for s in statuses], [(1, True), (2, True)])


class Teardown(unittest.TestCase):
    def start_blocked_clones(self, ticket):
        """Clones that block forever holding a pipe's write end; returns the read end."""
        r, w = os.pipe()
        cid = ticket.clone()
        if cid > 0:
            in_clone(lambda: signal.pause())
        os.close(w)
        return r

    def test_kill_ends_every_clone(self):
        ticket = snowflock.request_ticket(clones=2)
        r = self.start_blocked_clones(ticket)
        ticket.kill()
        self.assertEqual(read_until_eof(r), b"")  # every holder of the write end is gone
        os.close(r)
        with self.assertRaises(snowflock.Error) as caught:
            ticket.join()
        self.assertEqual(caught.exception.code, snowflock.ERR_BAD_STATE)
        ticket.kill()  # idempotent

    def test_leaving_the_with_block_kills_clones_that_were_not_joined(self):
        class Stop(Exception):
            pass
        with self.assertRaises(Stop):
            with snowflock.request_ticket(clones=2) as ticket:
                r = self.start_blocked_clones(ticket)
                raise Stop()
        self.assertEqual(read_until_eof(r), b"")
        os.close(r)

    def test_a_dropped_ticket_kills_its_clones(self):
        ticket = snowflock.request_ticket(clones=1)
        r = self.start_blocked_clones(ticket)
        del ticket
        self.assertEqual(read_until_eof(r), b"")
        os.close(r)


class Errors(unittest.TestCase):
    def assert_error(self, code, call, *args, **kwargs):
        with self.assertRaises(snowflock.Error) as caught:
            call(*args, **kwargs)
        e = caught.exception
        self.assertEqual(e.code, code)
        self.assertEqual(getattr(snowflock, "ERR_" + e.name), code)
        self.assertTrue(e.message)
        self.assertEqual(str(e), e.message)
        return e

    def test_bad_requests_name_the_problem(self):
        e = self.assert_error(snowflock.ERR_INVALID_ARGUMENT, snowflock.request_ticket, clones=0)
        self.assertIn("at least 1 clone", e.message)
        e = self.assert_error(snowflock.ERR_INVALID_ARGUMENT, snowflock.request_ticket, clones=2, driver="nonsense")
        self.assertIn("nonsense", e.message)
        e = self.assert_error(snowflock.ERR_INVALID_ARGUMENT, snowflock.request_ticket, clones=2, tmp="bogus")
        self.assertIn("bogus", e.message)
        e = self.assert_error(snowflock.ERR_INSUFFICIENT_RESOURCES, snowflock.request_ticket, clones=100000)
        self.assertIn("ask for fewer", e.message)

    def test_calls_on_the_wrong_side_or_in_the_wrong_state(self):
        self.assert_error(snowflock.ERR_WRONG_SIDE, snowflock.sync, 0)
        with snowflock.request_ticket(clones=1) as ticket:
            self.assert_error(snowflock.ERR_BAD_STATE, ticket.join)
            self.assert_error(snowflock.ERR_WRONG_SIDE, ticket.sync, 0)
            with self.assertRaises(IndexError):
                ticket.node(2)
            if ticket.clone() > 0:
                in_clone(lambda: None)
            self.assert_error(snowflock.ERR_BAD_STATE, ticket.clone)
            self.assertTrue(all(s.ok for s in ticket.join()))
            self.assert_error(snowflock.ERR_BAD_STATE, ticket.join)

    def test_clone_refuses_a_multithreaded_process(self):
        stop = threading.Event()
        thread = threading.Thread(target=stop.wait)
        thread.start()
        try:
            with snowflock.request_ticket(clones=1) as ticket:
                e = self.assert_error(snowflock.ERR_NOT_SINGLE_THREADED, ticket.clone)
                self.assertIn("thread", e.message)
        finally:
            stop.set()
            thread.join()


class Examples(unittest.TestCase):
    def test_the_elastic_service_adds_a_clone_under_load_and_retires_it_when_idle(self):
        import queue
        import re
        import urllib.request
        events = queue.Queue()
        server = subprocess.Popen(
            [sys.executable, example("elastic.py", "SF_SOURCE_DIR", "examples/elastic/elastic.py"), "serve",
             "--port", "0", "--min", "1", "--max", "2", "--idle", "1", "--records", "2000", "--load-rounds", "1",
             "--work", "20000"], stderr=subprocess.PIPE, text=True)
        log = []

        def read_events():
            for line in server.stderr:
                log.append(line)
                events.put(line)
            events.put(None)
        reader = threading.Thread(target=read_events, daemon=True)
        reader.start()

        def await_event(pattern):
            while True:
                try:
                    line = events.get(timeout=AWAIT_SECONDS)
                except queue.Empty:
                    self.fail(f"no event {pattern!r} in {AWAIT_SECONDS} s; the log:\n{''.join(log)}")
                self.assertIsNotNone(line, f"elastic.py ended before {pattern!r}; the log:\n{''.join(log)}")
                m = re.search(pattern, line)
                if m:
                    return m

        stop = threading.Event()
        backends, failures = set(), []

        def client():
            while not stop.is_set():
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/item/7", timeout=AWAIT_SECONDS) as r:
                        backends.add(json.loads(r.read())["backend"])
                except OSError as e:
                    failures.append(e)
        try:
            port = int(await_event(r"serving on 127\.0\.0\.1:(\d+) with 1 backend")[1])
            clients = [threading.Thread(target=client) for _ in range(6)]
            for c in clients:
                c.start()
            try:
                await_event(r"adding backend 2 \(clone ")
                await_event(r"backend clone \S+ served its first request")
            finally:
                stop.set()
                for c in clients:
                    c.join()
            await_event(r"retired backend clone \S+; 1 left")
            server.send_signal(signal.SIGTERM)
            self.assertEqual(server.wait(timeout=AWAIT_SECONDS), 0, "".join(log))
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()
            reader.join()
            server.stderr.close()
        self.assertEqual(failures, [])
        self.assertEqual(len(backends), 2, backends)  # both clones answered
        self.assertIn("stopped", log[-1])
        report = snowflock.cleanup()  # anything the example left would be found and counted here
        self.assertEqual((report["clusters"], report["processes"]), (0, 0), report)

    def test_sf_sum_in_python_gives_the_c_examples_answer(self):
        args = ["3", "1000000"]
        py = subprocess.run([sys.executable, example("sf_sum.py", "SF_SOURCE_DIR", "examples/sf-api/sf_sum.py")] + args,
                            capture_output=True, text=True, timeout=AWAIT_SECONDS)
        c = subprocess.run([example("sf_sum", "SF_BUILD_DIR", "examples/sf-api/sf_sum")] + args,
                           capture_output=True, text=True, timeout=AWAIT_SECONDS)
        self.assertEqual((py.returncode, c.returncode), (0, 0), py.stderr + c.stderr)
        last = lambda out: out.stdout.splitlines()[-1]
        self.assertEqual(last(py), "sum 499500000 (expected 499500000): ok")
        self.assertEqual(last(py), last(c))
        self.assertEqual(py.stdout.splitlines()[0], c.stdout.splitlines()[0])  # granted 3 of 3 ...
        self.assertEqual(sorted(py.stdout.splitlines()[1:-1]), sorted(c.stdout.splitlines()[1:-1]))


if __name__ == "__main__":
    unittest.main()
