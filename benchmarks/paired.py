"""Two trees' relays measured at the same time, in pairs: ``python -m benchmarks.paired``.

    python -m benchmarks.paired OTHER_TREE [--rounds 4] [--mode cdc] [--rate 100]
        [--seconds 20]

Runs ``benchmarks.thread_cpu`` from this tree and from OTHER_TREE at once, each from its
own ``.venv`` (so each measures its own installed relay, on a stack of its own), ROUNDS
times, and prints each pair's CPU per message and the mean difference.

Why pairs: on a shared host the same tree's figure can move by a third within minutes,
so windows taken one after the other cannot tell tens of µs apart. The two relays of a
pair share the host's speed of that moment. Both stacks load the host alike, so a
pair's figures read higher than a lone run's: compare within the pairs, not with lone
runs. About 45 s a round.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
FIGURE = re.compile(r"CPU ([\d,]+) µs")


def thread_cpu(tree: Path, args: argparse.Namespace) -> subprocess.Popen[str]:
    command = [
        str(tree / ".venv" / "bin" / "python"), "-m", "benchmarks.thread_cpu",
        "--mode", args.mode, "--rate", str(args.rate), "--seconds", str(args.seconds),
    ]  # fmt: skip
    return subprocess.Popen(command, cwd=tree, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip


def figure(process: subprocess.Popen[str], tree: Path) -> float:
    output, _ = process.communicate()
    found = FIGURE.search(output)
    if process.returncode or found is None:
        raise SystemExit(f"thread_cpu in {tree} failed ({process.returncode}):\n{output}")
    return float(found.group(1).replace(",", ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("other", type=Path, help="the other tree (its .venv installed)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--mode", choices=("poll", "cdc"), default="cdc")
    parser.add_argument("--rate", type=float, default=100.0, help="msg/s; 0: idle")
    parser.add_argument("--seconds", type=float, default=20.0, help="each window")
    args = parser.parse_args()
    other = args.other.resolve()
    if not (other / ".venv" / "bin" / "python").exists():
        raise SystemExit(f"{other} has no .venv: run `make setup` there first")
    unit = "a message" if args.rate > 0 else "a second"
    print(f"CPU µs {unit}, {args.mode} at {args.rate:g} msg/s; this tree ({HERE.name}) | "
          f"{other.name}")  # fmt: skip
    ours, theirs = [], []
    for round_number in range(1, args.rounds + 1):
        started = [thread_cpu(HERE, args), thread_cpu(other, args)]
        ours.append(figure(started[0], HERE))
        theirs.append(figure(started[1], other))
        print(f"  pair {round_number}: {ours[-1]:8,.0f} | {theirs[-1]:8,.0f}", flush=True)
    lower = sum(a < b for a, b in zip(ours, theirs, strict=True))
    change = statistics.mean(ours) / statistics.mean(theirs) - 1
    print(f"  mean    {statistics.mean(ours):8,.0f} | {statistics.mean(theirs):8,.0f}"
          f"  (this tree {change:+.1%}, lower in {lower} of {args.rounds} pairs)")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
