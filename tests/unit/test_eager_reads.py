"""read_what_arrived: waits to read are answered at once while the socket has data, and
only for a bounded time; everything else goes to the caller (psycopg's wait)."""

import inspect
import itertools
import socket

import psycopg
import pytest
from psycopg.waiting import Ready, Wait

from relay import eager_reads
from relay.eager_reads import EagerReadConnection, read_what_arrived


@pytest.fixture
def sockets():
    ours, peer = socket.socketpair()
    yield ours, peer
    ours.close()
    peer.close()


@pytest.fixture
def endless_data(sockets, monkeypatch):
    """Our socket, always readable; a clock that moves 1 ms per reading; a 5 ms budget."""
    ours, peer = sockets
    peer.sendall(b"endless rows")
    clock = itertools.count()
    monkeypatch.setattr(eager_reads, "monotonic", lambda: next(clock) / 1000)
    monkeypatch.setattr(eager_reads, "EAGER_READ_BUDGET", 0.005)
    return ours


def operation(*waits, result="done"):
    """A stand-in for a psycopg generator: yields ``waits``, records what it was sent."""
    received = []

    def gen():
        for wait in waits:
            received.append((yield wait))
        return result

    return gen(), received


def run_to_the_end(wrapper, answer=Ready.R):
    """Drive the wrapper like psycopg's wait would; return (result, waits it was given)."""
    given = []
    try:
        wait = next(wrapper)
        while True:
            given.append(wait)
            wait = wrapper.send(answer)
    except StopIteration as done:
        return done.value, given


def test_reads_with_data_waiting_never_reach_the_caller(sockets):
    ours, peer = sockets
    peer.sendall(b"rows")
    gen, received = operation(Wait.R, Wait.R, Wait.R)
    result, given = run_to_the_end(read_what_arrived(gen, ours.fileno()))
    assert (result, given) == ("done", [])
    assert received == [Ready.R, Ready.R, Ready.R]


def test_a_read_with_nothing_waiting_goes_to_the_caller(sockets):
    ours, _peer = sockets
    gen, received = operation(Wait.R, Wait.R)
    result, given = run_to_the_end(read_what_arrived(gen, ours.fileno()))
    assert (result, given) == ("done", [Wait.R, Wait.R])
    assert received == [Ready.R, Ready.R]


def test_writes_go_to_the_caller_even_with_data_waiting(sockets):
    ours, peer = sockets
    peer.sendall(b"rows")
    gen, received = operation(Wait.W, Wait.RW, Wait.R)
    result, given = run_to_the_end(read_what_arrived(gen, ours.fileno()), answer=Ready.W)
    assert (result, given) == ("done", [Wait.W, Wait.RW])
    assert received == [Ready.W, Ready.W, Ready.R]


def test_the_caller_gets_a_turn_once_the_budget_is_spent(endless_data):
    ours = endless_data
    gen, received = operation(*[Wait.R] * 20)
    _result, given = run_to_the_end(read_what_arrived(gen, ours.fileno()))
    # the fake clock moves 1 ms per reading: after each of the caller's turns 4 reads fit
    # in the 5 ms budget and the fifth goes to the caller
    assert len(given) == 4 and len(received) == 20


def test_an_error_of_the_operation_reaches_the_caller(sockets):
    ours, peer = sockets
    peer.sendall(b"rows")

    def failing():
        yield Wait.R
        raise ConnectionResetError("server closed the connection")

    with pytest.raises(ConnectionResetError):
        run_to_the_end(read_what_arrived(failing(), ours.fileno()))


def test_a_write_does_not_renew_the_budget(endless_data):
    ours = endless_data
    # psycopg answers a write without a loop turn: the reads after it share the budget
    gen, _received = operation(Wait.R, Wait.W, *[Wait.R] * 4)
    _result, given = run_to_the_end(read_what_arrived(gen, ours.fileno()))
    assert given == [Wait.W, Wait.R]


def test_the_override_keeps_psycopgs_wait_signature():
    ours = inspect.signature(EagerReadConnection.wait)
    theirs = inspect.signature(psycopg.AsyncConnection.wait)
    assert [(p.name, p.default) for p in ours.parameters.values()] == [
        (p.name, p.default) for p in theirs.parameters.values()
    ]
