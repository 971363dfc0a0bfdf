"""benchmarks.thread_cpu: its reading of /proc per thread, and the figures per unit."""

from __future__ import annotations

import os
import threading
import time

from benchmarks.thread_cpu import ThreadSample, per_unit, thread_samples


def test_a_busy_thread_shows_its_cpu_and_the_main_thread_is_named():
    started, stop = threading.Event(), threading.Event()
    ids: list[int] = []

    def spin() -> None:
        ids.append(threading.get_native_id())
        started.set()
        end = time.thread_time() + 0.3
        while time.thread_time() < end:
            pass
        stop.wait(5)

    thread = threading.Thread(target=spin)
    before = thread_samples(os.getpid())
    thread.start()
    started.wait(5)
    time.sleep(0.05)
    try:
        deadline = time.monotonic() + 5
        while thread_samples(os.getpid())[ids[0]].cpu_seconds < 0.25:
            assert time.monotonic() < deadline, "the spinning thread's CPU never showed"
            time.sleep(0.05)
        after = thread_samples(os.getpid())
    finally:
        stop.set()
        thread.join()
    assert before[os.getpid()].name == "main"
    assert ids[0] not in before and after[ids[0]].name != "main"
    rows = dict((label, (cpu, wakeups)) for label, cpu, wakeups in per_unit(before, after, 1))
    spinner = next(label for label in rows if label.endswith(f"({ids[0]})"))
    assert rows[spinner][0] >= 0.25e6  # µs: a thread that started in between, from zero


def test_figures_are_per_unit_busiest_first_and_idle_threads_left_out():
    before = {1: ThreadSample("main", 1.0, 10), 2: ThreadSample("rdk:broker1", 0.5, 4),
              3: ThreadSample("idle", 0.2, 1)}  # fmt: skip
    after = {1: ThreadSample("main", 1.2, 30), 2: ThreadSample("rdk:broker1", 0.9, 14),
             3: ThreadSample("idle", 0.2, 1)}  # fmt: skip
    rows = [(label, round(cpu, 6), round(wakeups, 6)) for label, cpu, wakeups
            in per_unit(before, after, 100)]  # fmt: skip
    assert rows == [("rdk:broker1 (2)", 4000.0, 0.1), ("main", 2000.0, 0.2)]
