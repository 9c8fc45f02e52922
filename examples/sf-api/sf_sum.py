#!/usr/bin/python3
"""sf_sum.py: the SnowFlock API pattern from the papers, in Python (sf_sum.c in C).

The parent builds the input, requests a ticket, splits the work n ways and clones; each clone
(which inherited the input: fork semantics) sums its share and sends the result to the parent
over the cluster network; the parent adds them up, joins the clones and checks the answer.

    sf_sum.py [clones] [numbers]      (default: 4 clones, 10000000 numbers)

Needs the snowflock module (installed with SnowFlock MPI; from a build tree:
PYTHONPATH=build/python).
"""
import array
import socket
import struct
import sys

import snowflock

PORT = 47300
RESULT = struct.Struct("=IIQ")  # clone id, padding, sum: the C example's struct share_result


def main():
    clones = int(sys.argv[1]) if len(sys.argv) > 1 else 4
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 10000000

    # The input: built once in the parent; every clone inherits it.
    block = array.array("I", range(1000))
    data = block * (count // 1000) + block[: count % 1000]

    try:
        ticket = snowflock.request_ticket(clones=clones, min_clones=1)
    except snowflock.Error as e:
        print(f"sf_sum.py: request_ticket: {e}", file=sys.stderr)
        return 1
    with ticket:
        granted = ticket.granted
        print(f"granted {granted} of {clones} clones on {ticket.subnet}", flush=True)

        # Listen before cloning, on node 0's cluster address (up as soon as the ticket is).
        listener = socket.create_server((ticket.node(0).address, PORT), backlog=64)

        cid = ticket.clone()
        if cid > 0:
            # A clone: its share of the input, split `granted` ways.
            listener.close()
            begin, end = count * (cid - 1) // granted, count * cid // granted
            share = sum(data[begin:end])
            try:
                with socket.create_connection((ticket.node(0).address, PORT)) as s:
                    s.sendall(RESULT.pack(cid, 0, share))
            except OSError as e:
                print(f"sf_sum.py: send result to the parent: {e}", file=sys.stderr)
                snowflock.sync(2)
            snowflock.sync(0)  # does not return

        total = 0
        listener.settimeout(60)
        for _ in range(granted):
            try:
                conn, _ = listener.accept()
                with conn:
                    payload = conn.recv(RESULT.size, socket.MSG_WAITALL)
                clone_id, _, share = RESULT.unpack(payload)
            except (OSError, struct.error):
                print("sf_sum.py: a clone did not report", file=sys.stderr)
                return 1  # leaving the with block kills the clones
            node = ticket.node(clone_id)
            print(f"clone {clone_id} ({node.hostname}, {node.address}): {share}")
            total += share
        listener.close()

        statuses = ticket.join()
    failed = any(s.end != snowflock.End.SYNCED or s.value != 0 for s in statuses)
    expected = sum(data)
    good = total == expected and not failed
    print(f"sum {total} (expected {expected}): {'ok' if good else 'WRONG'}")
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
