"""SIGKILL a writer in the middle of a stream of batches: acknowledged batches survive, none is partial."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from clipmc.gallery import open_gallery

DIM = 24
BATCH = 40
VERSION = "crash-test"

WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from clipmc.gallery import Item, open_gallery

    path, start, dim, batch_size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    gallery = open_gallery(path, dim, "crash-test", snapshot_every=0)
    print("ready", flush=True)
    b = start
    while True:
        rng = np.random.default_rng(b)
        x = rng.standard_normal((batch_size, dim)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        gallery.add(
            [Item(x[i], i % 2, camera=b % 5, external_id=f"b{b}-{i}", metadata={"batch": b}) for i in range(batch_size)]
        )
        print(b, flush=True)  # acknowledged: add() has returned
        if b % 3 == 2:
            gallery.snapshot()  # so that some kills land while a snapshot is being written
        b += 1
    """
)


def batch_vectors(b: int) -> np.ndarray:
    rng = np.random.default_rng(b)
    x = rng.standard_normal((BATCH, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def run_and_kill(script: Path, path: Path, start: int, acks_before_kill: int, delay: float) -> list[int]:
    """Start a writer, let it acknowledge some batches, SIGKILL it; return the acknowledged batch ids."""
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(path), str(start), str(DIM), str(BATCH)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    acked: list[int] = []
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read() if proc.stderr else ""
        while len(acked) < acks_before_kill:
            line = proc.stdout.readline()
            assert line, f"writer died early: {proc.stderr.read() if proc.stderr else ''}"
            acked.append(int(line))
        time.sleep(delay)  # let it get into the middle of the next batch (or snapshot)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        # Lines printed between our last read and the kill were acknowledged too.
        acked.extend(int(line) for line in proc.stdout.read().split())
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return acked


@pytest.mark.timeout(180)
def test_sigkilled_writer_loses_no_acknowledged_batch_and_leaves_no_partial_one(tmp_path: Path) -> None:
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    path = tmp_path / "gallery"
    rng = np.random.default_rng(0)
    acked: set[int] = set()
    start = 0
    for round_number in range(4):
        acked.update(run_and_kill(script, path, start, int(rng.integers(2, 7)), float(rng.uniform(0.0, 0.03))))
        # The next writer starts at the last acknowledged batch + 1: a batch that was committed but not
        # acknowledged gets added again, which must be a no-op (same external ids).
        start = max(acked) + 1

        with open_gallery(path, DIM, VERSION) as gallery:
            per_batch: collections.Counter[int] = collections.Counter()
            for items in gallery.iter_items(with_vectors=False):
                for item in items:
                    per_batch[item.metadata["batch"]] += 1
            partial = {b: n for b, n in per_batch.items() if n != BATCH}
            assert not partial, f"round {round_number}: partial batches {partial}"
            missing = acked - set(per_batch)
            assert not missing, f"round {round_number}: acknowledged batches lost: {sorted(missing)}"
            # at most the one batch in flight at the kill was committed without acknowledgement
            assert len(set(per_batch) - acked) <= 1
            assert gallery.stats()["count"] == BATCH * len(per_batch)
            for b in sorted(acked):
                vectors = batch_vectors(b)
                hits = gallery.search(vectors[[0, BATCH - 1]], top_k=1)
                assert hits[0][0].item.external_id == f"b{b}-0"
                assert hits[1][0].item.external_id == f"b{b}-{BATCH - 1}"
                assert hits[0][0].score == pytest.approx(1.0, abs=1e-5)
