"""dedup.py: the duplicate decision partitioned over ranks equals the in-memory one, sorted runs merge into
whole groups, union-find keeps the lowest document. (Several Gloo ranks: test_curation's four-rank test.)"""

from collections import defaultdict

import numpy as np
import pytest

import dedup


def random_records(rng, n, keys, band=dedup.EXACT):
    records = np.zeros(n, dtype=dedup.RECORD)
    records["band"], records["key"], records["doc"] = band, rng.integers(-keys, keys, n), rng.permutation(n)
    return records


def test_merged_runs_are_sorted_and_keep_each_group_in_one_block(tmp_path):
    rng = np.random.default_rng(0)
    runs = []
    for k in range(5):
        records = random_records(rng, int(rng.integers(0, 300)), 40)
        records["band"] = rng.integers(0, 3, len(records))
        runs.append(str(tmp_path / f"run-{k}.bin"))
        dedup.sort_records(records).tofile(runs[-1])
    blocks = list(dedup.merge_runs(runs, block=7))
    merged = np.concatenate(blocks)
    everything = np.concatenate([np.fromfile(p, dtype=dedup.RECORD) for p in runs])
    assert np.array_equal(merged, dedup.sort_records(everything))
    groups = [set(zip(b["band"].tolist(), b["key"].tolist())) for b in blocks]
    assert sum(map(len, groups)) == len(set().union(*groups))  # no (band, key) is split between two blocks


def test_components_join_chains_and_root_at_the_lowest_document():
    nodes, roots = dedup.components(np.array([9, 4, 30, 7]), np.array([4, 12, 31, 12]))
    assert dict(zip(nodes.tolist(), roots.tolist())) == {4: 4, 7: 4, 9: 4, 12: 4, 30: 30, 31: 30}
    assert dedup.largest_clusters(nodes, roots) == [[4, 7, 9, 12], [30, 31]]


def decide(tmp_path, exact, near, memory_mb):
    """dedup.decide_duplicates in one process from key files written as curate_shard writes them."""
    paths = {}
    for name, (docs, keys) in (("exact", exact), ("near", near)):
        writer = dedup.KeyWriter(str(tmp_path / f"{name}.bin"), block=5)
        for doc, key in zip(docs.tolist(), keys.tolist()):
            writer.add(doc, key) if name == "exact" else writer.add_bands(doc, key)
        paths[name] = writer.close()
    drops, (count, largest) = dedup.decide_duplicates(paths["exact"], paths["near"], lambda d: np.zeros(len(d), np.int64),
                                                      0, 1, memory_mb, str(tmp_path), top=None)
    decided = {doc: (dedup.REASONS[reason], kept) for reason, kept, doc in drops.tolist()}
    return decided, largest, count, sorted(p.name for p in tmp_path.glob("run-*"))


def naive_duplicates(exact, near):
    """The decision written the plain way, as the oracle: in index order, a document whose exact key came
    before is removed for the first one; then, among the rest, documents that share a band value (in the same
    band) are joined, and each cluster keeps its lowest document."""
    first, drop = {}, {}
    for doc, key in sorted(zip(*(a.tolist() for a in exact))):
        if key in first:
            drop[doc] = ("exact_dup", first[key])
        first.setdefault(key, doc)
    parent, seen = {}, {}

    def find(x):
        while parent.get(x, x) != x:
            x = parent[x]
        return x

    for doc, row in sorted(zip(near[0].tolist(), near[1].tolist())):
        for band, key in enumerate(row):
            if doc not in drop and (band, key) in seen:
                a, b = find(seen[band, key]), find(doc)
                parent[max(a, b)] = min(a, b)
            elif doc not in drop:
                seen[band, key] = doc
    clusters = defaultdict(list)
    for doc in set(parent) | set(parent.values()):
        clusters[find(doc)].append(doc)
    drop |= {doc: ("near_dup", root) for root, members in clusters.items() for doc in members if doc != root}
    return drop, sorted((sorted(m) for m in clusters.values()), key=lambda c: (-len(c), c[0]))


@pytest.mark.parametrize("memory_mb", [64, 0.0005])
def test_partitioned_decision_equals_the_plain_one(tmp_path, memory_mb):
    rng = np.random.default_rng(1)
    n, bands = 400, 4
    docs = rng.permutation(n)
    exact_keys = rng.integers(0, 300, n)  # many exact copies
    band_keys = rng.integers(0, 2000, (n, bands))  # and band collisions that chain documents into clusters
    near_docs = docs[rng.random(n) < 0.8]  # some documents are too short to shingle
    near = (near_docs, band_keys[near_docs])
    expected_drop, expected_clusters = naive_duplicates((docs, exact_keys[docs]), near)
    assert dedup.find_duplicates((docs, exact_keys[docs]), near) == (expected_drop, expected_clusters)
    drop, clusters, count, runs = decide(tmp_path, (docs, exact_keys[docs]), near, memory_mb)
    assert drop == expected_drop and clusters == expected_clusters and count == len(expected_clusters)
    assert any(r == "near_dup" for r, _ in drop.values()) and any(r == "exact_dup" for r, _ in drop.values())
    assert bool(runs) == (memory_mb < 1)  # a budget of 500 bytes spills sorted runs; 64 MB holds everything


def test_an_exact_copy_does_not_join_near_clusters():
    # 2 is an exact copy of 0 and shares a band with 3: exact dedup removes 2 first, so 3 stays apart from 0
    drop, clusters = dedup.find_duplicates((np.array([0, 2, 3]), np.array([5, 5, 6])),
                                     (np.array([0, 2, 3]), np.array([[1, 1], [1, 2], [9, 2]])))
    assert drop == {2: ("exact_dup", 0)} and clusters == []
