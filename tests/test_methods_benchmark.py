"""benchmarks/methods.py: argument parsing, the table and plots from a results JSON, refusals, the toy run."""

from __future__ import annotations

import importlib.util
import json
import logging
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _restore_root_logging():
    """`clipmc.cli.main` (and methods.py's main) call logging.basicConfig, which binds a root handler to
    this test's captured stderr; later tests would log into the closed stream. Put the handlers back."""
    handlers = list(logging.root.handlers)
    yield
    logging.root.handlers[:] = handlers


PNG = b"\x89PNG\r\n\x1a\n"


def _load():
    spec = importlib.util.spec_from_file_location("bench_methods", ROOT / "benchmarks" / "methods.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def _results(bench, values: dict[tuple[float, str], list[float]]) -> dict:
    """A results JSON as run_benchmark writes it, with given all-search mAPs per (coupling, method)."""
    runs = []
    for (coupling, method), maps in values.items():
        for seed, v in enumerate(maps):
            metrics = {"R1": v + 5, "mAP": v, "mINP": v - 5}
            runs.append({"coupling": coupling, "method": method, "seed": seed, "train_seconds": 1.0,
                         "eval_seconds": 1.0, "settings": {s: dict(metrics) for s in bench.SETTINGS}})  # fmt: skip
    return {
        "title": "test",
        "started_utc": "2026-01-01T00:00:00+00:00",
        "seconds_total": 60.0,
        "load_average_1min": {"start": 1.0, "end": 2.0},
        "machine": {"cpu": "cpu", "cores": 2, "torch_threads": 2},
        "clip": {"file": "clip.safetensors", "sha256": "ab" * 32, "arch": "synth-small"},
        "plan": {
            "ids": 184,
            "test_ids": 50,
            "data_seed": 0,
            "seeds": [0, 1, 2],
            "trials": 10,
            "coupling": 0.5,
            "sweep": [0.0, 0.5, 0.9],
        },
        "splits": {"0.5": {"train": 101, "val": 33, "test": 50}},
        "runs": runs,
    }


def test_arguments() -> None:
    bench = _load()
    args = bench.parse_args(["--clip", "c.safetensors", "--seeds", "0,1", "--sweep", "none", "--methods", "CLIP-MC"])
    assert args.seeds == (0, 1) and args.sweep == () and args.methods == ("CLIP-MC",)
    for bad in (["--methods", "CLIP-XX"], ["--sweep", "0,2"], ["--seeds", "a"]):
        with pytest.raises(SystemExit):
            bench.parse_args(bad)


def test_table_and_plots_from_results_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench = _load()
    values = {(0.5, m): [10.0, 20.0, 30.0] for m in bench.METHODS if bench.METHODS[m].flags is not None}
    values[(0.5, "zero-shot")] = values[(0.5, "MIP untrained")] = [4.0]
    values[(0.0, "image-only")], values[(0.0, "CLIP-MC")] = [40.0, 42.0, 44.0], [41.0, 43.0, 45.0]
    values[(0.9, "image-only")], values[(0.9, "CLIP-MC")] = [50.0, 50.0, 50.0], [53.0, 55.0, 57.0]
    src = tmp_path / "in.json"
    src.write_text(json.dumps(_results(bench, values)))
    assert bench.main(["--from-json", str(src), "--out", str(tmp_path / "out"), "--name", "m"]) == 0
    md = (tmp_path / "out" / "m.md").read_text()
    assert "SYNTHETIC" in md and "101/33/50" in md
    # Mean and sample std over the seeds: 10, 20, 30 -> 20.0 ± 10.0 (mAP); R1 = mAP + 5.
    assert "| CLIP-MC | 3 | 25.0 ± 10.0 | 20.0 ± 10.0 | 15.0 ± 10.0 |" in md
    assert "| zero-shot | 1 | 9.0 ± 0.0 | 4.0 ± 0.0 |" in md
    assert "| 0.9 | 55.0 ± 0.0 | 50.0 ± 0.0 | 60.0 ± 2.0 | 55.0 ± 2.0 | +5.0 |" in md
    assert "| 0 | " in md and "2 cores" in md
    out = json.loads((tmp_path / "out" / "m.json").read_text())
    assert out["summary"]["0.9"]["CLIP-MC"]["all"]["mAP"] == {"mean": 55.0, "std": 2.0, "n": 3}
    for png in ("m.png", "m-coupling.png"):
        assert (tmp_path / "out" / png).read_bytes()[:8] == PNG
    assert "wrote" in capsys.readouterr().out


def test_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench = _load()
    assert bench.main(["--clip", str(tmp_path / "missing.safetensors"), "--work", str(tmp_path / "w"),
                       "--out", str(tmp_path / "o")]) == 2  # fmt: skip
    assert "not a file" in capsys.readouterr().err
    # A best/ without a validation selection record (or selected on test) is refused.
    run = tmp_path / "run"
    (run / "best").mkdir(parents=True)
    (run / "best" / "config.json").write_text(json.dumps({"metadata": {"metrics": {"mAP": 50}}}))
    with pytest.raises(bench.BenchmarkError, match="validation selection"):
        bench.selected_checkpoint(run)
    (run / "best" / "config.json").write_text(json.dumps({"metadata": {"selection": {"split": "test"}}}))
    with pytest.raises(bench.BenchmarkError):
        bench.selected_checkpoint(run)
    (run / "best" / "config.json").write_text(json.dumps({"metadata": {"selection": {"split": "val", "epoch": 2}}}))
    assert bench.selected_checkpoint(run) == (run / "best", {"split": "val", "epoch": 2})


def test_a_record_made_with_other_settings_is_not_read_back(tmp_path: Path) -> None:
    """Finished runs are read back only when the CLIP, architecture, options and trials are the same."""
    bench = _load()
    options = tmp_path / "options.json"
    options.write_text('{"lr_encoder": 1e-4}')
    key = bench.run_key("ab" * 32, "synth-small", options, 10)
    assert key == bench.run_key("ab" * 32, "synth-small", options, 10)
    assert bench.run_key("ab" * 32, "synth-small", options, 3) != key
    assert bench.run_key("cd" * 32, "synth-small", options, 10) != key
    assert bench.run_key("ab" * 32, "synth-small", None, 10) != key  # untrained rows
    options.write_text('{"lr_encoder": 1e-5}')
    assert bench.run_key("ab" * 32, "synth-small", options, 10) != key
    spec = bench.RunSpec(tmp_path, tmp_path, 0.5, "CLIP-MC", 0, "c", "synth-small", options, 10, key="new")
    run = tmp_path / "runs-c0.5" / "clip-mc-seed0"
    run.mkdir(parents=True)
    (run / "record.json").write_text(json.dumps({"key": "new", "method": "CLIP-MC", "settings": {}}))
    assert bench.run_one(spec)["key"] == "new"  # same key: read back, nothing run

    class Ran(Exception):
        pass

    def train(argv):
        raise Ran(argv)

    bench._cli = train  # another key: the old record goes and the run trains again
    with pytest.raises(Ran):
        bench.run_one(bench.RunSpec(tmp_path, tmp_path, 0.5, "CLIP-MC", 0, "c", "synth-small", options, 10, "other"))
    assert not (run / "record.json").exists()


@pytest.mark.slow
def test_toy_run_end_to_end(tmp_path: Path) -> None:
    """The whole pipeline at seconds size: synth, every method trained and evaluated, table and plots."""
    bench = _load()
    bench.check_trainer_flags()  # issue 11's --seed and --ablate
    from clipmc.model.pretrain_clip import PretrainConfig, pretrain
    from clipmc.model.synth import generate
    from tests.test_synth_clip import TINY_ARCH

    generate("captions", tmp_path / "captions", 12, seed=2, size=(64, 32), progress=False)
    arch = tmp_path / "arch.json"  # 3 blocks: MIP needs a prompted block, the skipped one and its branches
    vision = {**TINY_ARCH["clip"]["vision_cfg"], "layers": 3}
    arch.write_text(json.dumps({**TINY_ARCH, "clip": {**TINY_ARCH["clip"], "vision_cfg": vision}}))
    clip = tmp_path / "clip.safetensors"
    pretrain(tmp_path / "captions", clip, PretrainConfig(arch=str(arch), batch_size=16, max_steps=2, warmup_steps=1,
                                                         holdout=0.25, threads=1), progress=False)  # fmt: skip
    argv = ["--toy", "--clip", str(clip), "--arch", str(arch), "--work", str(tmp_path / "work"),
            "--out", str(tmp_path / "out")]  # fmt: skip
    assert bench.main(argv) == 0
    result = json.loads((tmp_path / "out" / "methods-toy.json").read_text())
    methods = {(r["coupling"], r["method"]) for r in result["runs"]}
    assert {m for c, m in methods if c == 0.0} == set(bench.METHODS)
    assert {(0.9, "image-only"), (0.9, "CLIP-MC")} <= methods
    for r in result["runs"]:
        assert set(r["settings"]) == set(bench.SETTINGS)
        assert bench.METHODS[r["method"]].flags is None or r["selection"]["split"] != "test"
    mip = json.loads((tmp_path / "work" / "runs-c0" / "mip-seed0" / "train" / "best" / "config.json").read_text())
    assert mip["family"] == "mip"
    assert (tmp_path / "out" / "methods-toy.png").read_bytes()[:8] == PNG
    assert (tmp_path / "out" / "methods-toy-coupling.png").read_bytes()[:8] == PNG
