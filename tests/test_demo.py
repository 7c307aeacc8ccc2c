"""`clipmc demo` (what `make demo` runs), shortened: a small synthetic set and a few training steps."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_makes_data_trains_ingests_and_names_crops_to_try(tmp_path, capsys):
    from clipmc.cli import main
    from clipmc.export import create_embedder
    from clipmc.gallery import open_gallery
    from clipmc.model.data.sysu import SYSUDataset

    config = json.loads((ROOT / "configs" / "tiny-synth.json").read_text())
    config.update(epochs=1, max_steps_per_epoch=3, eval_trials=1)
    (tmp_path / "cfg.json").write_text(json.dumps(config))
    argv = ["demo", "--dir", str(tmp_path / "demo"), "--ids", "12", "--config", str(tmp_path / "cfg.json")]
    assert main([*argv, "--port", "0", "--no-serve"]) == 0
    out = capsys.readouterr().out
    assert "SYNTHETIC" in out and "web page: http://127.0.0.1:" in out
    # calibrated on the run's held-out identities: the page will show probabilities and match marks
    assert "calibration: loaded" in out and (tmp_path / "demo" / "run" / "best" / "calibration.json").is_file()
    tried = re.findall(r"identity (\d+): (.+)", out)
    assert tried, out
    dataset = SYSUDataset(tmp_path / "demo" / "synth")
    for pid, paths in tried:
        assert int(pid) in dataset.test_ids  # infrared crops of test identities, never training ones
        for path in paths.split():
            assert Path(path).is_file() and Path(path).parent.parent.name in ("cam3", "cam6")
    checkpoint = tmp_path / "demo" / "run" / "best"
    embedder = create_embedder("torch", str(checkpoint), batch_sizes=(1,))
    with open_gallery(tmp_path / "demo" / "gallery", embedder.embedding_dim, embedder.embedding_version) as gallery:
        stats = gallery.stats()
        items = [item for batch in gallery.iter_items(with_vectors=False) for item in batch]
    embedder.close()
    assert stats["count"] == len(items) > 0
    assert {int(item.identity) for item in items} == set(dataset.test_ids)  # the visible test crops, all of them
    assert all(int(item.modality) == 0 and item.track_id == item.identity for item in items)

    # a second run skips the finished steps and adds nothing twice
    assert main([*argv, "--port", "0", "--no-serve"]) == 0
    assert "(0 new)" in capsys.readouterr().out
