"""``benchmarks.run --replace-in``: a rerun replaces its records and says on which tree."""

from __future__ import annotations

import argparse

import orjson

from benchmarks.run import _merged


def record(workload, mode, figure):
    return {"workload": workload, "kind": "outbox-relay", "mode": mode, "broker": "kafka",
            "run": 1, "figure": figure}


def meta(tree, at):
    return {"command": f"python -m benchmarks.run ({tree})", "started_at": at,
            "relay_tree": tree}


def merge_into(path, records, tree, at):
    args = argparse.Namespace(output=path.parent, replace_in=path.stem)
    merged = _merged(args, records, [], {}, meta(tree, at))
    records, notes, extras, merged_meta = merged
    path.write_bytes(orjson.dumps({"meta": merged_meta, "records": records, "notes": notes,
                                   "extras": extras}))
    return records, notes, merged_meta


def test_each_rerun_is_kept_with_its_tree_and_replaces_only_its_records(tmp_path):
    path = tmp_path / "full.json"
    first = {**meta("aaa", "t0"), "rerun": {"command": "old", "at": "t1", "replaced": "x"}}
    path.write_bytes(orjson.dumps({
        "meta": first,
        "records": [record("drain", "poll", 1), record("latency", "poll", 2),
                    record("latency", "cdc", 3)],
        "notes": [],
    }))
    merge_into(path, [record("latency", "cdc", 30)], "bbb", "t2")
    records, notes, merged_meta = merge_into(path, [record("latency", "poll", 20)], "ccc", "t3")

    assert sorted(r["figure"] for r in records) == [1, 20, 30]
    assert merged_meta["relay_tree"] == "aaa"  # the full run's own tree stays
    assert "rerun" not in merged_meta
    assert [(r["at"], r.get("relay_tree")) for r in merged_meta["reruns"]] == [
        ("t1", None), ("t2", "bbb"), ("t3", "ccc"),
    ]
    assert notes[-1] == "rerun on t3 with relay tree ccc: latency/outbox-relay/poll/kafka"
