"""The methods side by side on synthetic SYSU-MM01, from one small CLIP pretrained on captions (SYNTHETIC).

DESIGN.md section 13. From the one CLIP that ``clipmc pretrain-clip`` wrote (``--clip FILE``), on a
synthetic SYSU-MM01 tree (``clipmc synth --layout sysu``; training, validation and test identities):

- zero-shot: the pretrained CLIP in CLIP-MC with untrained heads, no training (one run: no seed);
- image-only: ``clipmc train --ablate text`` (the CLIP-ReID-style baseline with the same image losses);
- CLIP-MC, and CLIP-MC without MC / ITPG / MCL (``--ablate mc|itpg|mcl``);
- MIP on the same CLIP's image tower (``mip-synth-small`` for ``synth-small``: the tower's ViT loaded into
  timm's VisionTransformer by timm's own CLIP converter, as MIP starts from ImageNet weights), untrained
  (new prompts, SIE and heads) and trained with its recipe (``configs/mip-synth-small-methods.json``);
  CSDN has no row: it needs a ModifiedResNet CLIP, and the synthetic CLIP is a ViT;

each trained with ``--seed`` 0, 1, 2 and evaluated with ``clipmc evaluate`` on its ``best/`` checkpoint,
which the trainer selects on the validation identities (a ``best/`` without a validation selection
record is refused: it may have been chosen on test identities). SYSU all-search and indoor-search,
10 trials each (PROTOCOLS.md); R1, mAP and mINP are per-run means over the trials, reported as mean +-
sample standard deviation over the seeds. Then the infrared-coupling sweep: image-only vs CLIP-MC at
``clipmc synth --ir-coupling`` 0, 0.5 and 0.9 (3 seeds each), where compensation could pay if anywhere.

Nothing is tuned on test identities: the training options are ``configs/synth-small-methods.json`` and
``configs/mip-synth-small-methods.json`` (see the README for how each was fixed). Writes ``methods.json``,
``methods.md``, ``methods.png`` and ``methods-coupling.png`` under ``--out`` with the run time, the machine
and its load. ``--toy`` runs the whole pipeline at seconds size (a test does); ``--from-json`` rewrites the
table and plots from a results JSON.

    python benchmarks/methods.py --clip runs/synthclip.safetensors --jobs 2   # 15 to 25 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

log = logging.getLogger("benchmarks.methods")


@dataclass(frozen=True)
class Method:
    """One row: its architecture family ("clipmc": `--arch`; "mip": MIP on the same CLIP's image tower) and
    its extra `clipmc train` flags (None: no training, the pretrained CLIP with untrained heads)."""

    family: str
    flags: tuple[str, ...] | None


METHODS: dict[str, Method] = {
    "zero-shot": Method("clipmc", None),
    "image-only": Method("clipmc", ("--ablate", "text")),
    "CLIP-MC": Method("clipmc", ()),
    "w/o MC": Method("clipmc", ("--ablate", "mc")),
    "w/o ITPG": Method("clipmc", ("--ablate", "itpg")),
    "w/o MCL": Method("clipmc", ("--ablate", "mcl")),
    "MIP untrained": Method("mip", None),
    "MIP": Method("mip", ()),
}
SWEEP_METHODS = ("image-only", "CLIP-MC")
SETTINGS = ("all", "indoor")
METRICS = ("R1", "mAP", "mINP")
TRAIN_CONFIG = ROOT / "configs" / "synth-small-methods.json"
MIP_TRAIN_CONFIG = ROOT / "configs" / "mip-synth-small-methods.json"


class BenchmarkError(RuntimeError):
    """The benchmark cannot run as asked (missing trainer flags, a checkpoint not selected on validation)."""


@dataclass(frozen=True)
class Plan:
    """Sizes of one benchmark run."""

    ids: int = 184  # 50 test; of the other 134, SYSU's synthetic layout puts a quarter in val_id.txt
    test_ids: int = 50
    images_per_camera: int = 4
    data_seed: int = 0
    seeds: tuple[int, ...] = (0, 1, 2)
    trials: int = 10
    coupling: float = 0.5  # the main table: infrared partly follows colour, as real near-infrared
    sweep: tuple[float, ...] = (0.0, 0.5, 0.9)
    methods: tuple[str, ...] = tuple(METHODS)
    train_overrides: dict[str, Any] = field(default_factory=dict)


TOY = Plan(ids=12, test_ids=4, images_per_camera=2, seeds=(0, 1), trials=2, coupling=0.0, sweep=(0.0, 0.9),
           train_overrides={"epochs": 1, "max_steps_per_epoch": 2, "eval_every": 1, "num_ids": 2,
                            "num_per_modality": 1})  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clip", help="the pretrained small CLIP (clipmc pretrain-clip --out FILE)")
    p.add_argument("--arch", default="synth-small", help="CLIP-MC architecture of that CLIP (name or JSON file)")
    p.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "out" / "methods",
                   help="datasets and runs (kept: a rerun skips runs finished with the same settings)")  # fmt: skip
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="where the results go")
    p.add_argument("--name", help="output file stem (default methods, or methods-toy with --toy)")
    p.add_argument("--toy", action="store_true", help="seconds-sized run of the whole pipeline (tests)")
    p.add_argument("--seeds", type=_ints, help="training seeds (default 0,1,2)")
    p.add_argument("--trials", type=int, help="evaluation trials per setting (default 10)")
    p.add_argument("--coupling", type=float, help="--ir-coupling of the main table's data (default 0.5)")
    p.add_argument("--sweep", type=_floats, help="couplings of the sweep (default 0,0.5,0.9); 'none' to skip")
    p.add_argument("--methods", type=_methods, help=f"subset of {','.join(METHODS)}")
    p.add_argument("--config", type=Path, default=TRAIN_CONFIG, help="CLIP-MC training options JSON")
    p.add_argument("--mip-config", type=Path, default=MIP_TRAIN_CONFIG, help="MIP training options JSON")
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel (processes; torch threads split the cores)")
    p.add_argument("--from-json", type=Path, help="only rewrite the table and plots from this results JSON")
    return p.parse_args(argv)


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _floats(text: str) -> tuple[float, ...]:
    if text == "none":
        return ()
    try:
        values = tuple(float(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers in 0..1, got {text!r}") from None
    if any(not 0.0 <= v <= 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"couplings are in 0..1, got {text!r}")
    return values


def _methods(text: str) -> tuple[str, ...]:
    names = tuple(t.strip() for t in text.split(","))
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown method(s) {unknown}; known: {list(METHODS)}")
    return names


# --------------------------------------------------------------------------------------------------
# Running


def machine() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def _load() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def check_trainer_flags() -> None:
    """The trainer must have issue 11's flags (seeding, ablations); fail before any work if not."""
    from clipmc.cli import build_parser

    train = build_parser()._subparsers._group_actions[0].choices["train"]  # type: ignore[union-attr]
    flags = {s for a in train._actions for s in a.option_strings}
    missing = [f for f in ("--seed", "--ablate") if f not in flags]
    if missing:
        raise BenchmarkError(f"`clipmc train` has no {' / '.join(missing)}: this benchmark needs the seeded, "
                             "ablatable, validation-selecting trainer of issue 11")  # fmt: skip


def _cli(argv: list[str]) -> None:
    from clipmc.cli import main as clipmc_main

    log.info("clipmc %s", " ".join(argv))
    rc = clipmc_main(argv)
    if rc != 0:
        raise BenchmarkError(f"`clipmc {' '.join(argv)}` exited with {rc}")


def make_data(work: Path, plan: Plan, coupling: float, size: tuple[int, int]) -> Path:
    """The synthetic SYSU tree at one coupling (written once; captions.jsonl, written last, marks it done)."""
    from clipmc.model.synth import generate

    out = work / f"sysu-c{coupling:g}"
    if (out / "captions.jsonl").is_file():
        return out
    if out.exists():
        import shutil

        shutil.rmtree(out)  # an interrupted generation
    generate("sysu", out, plan.ids, seed=plan.data_seed, images_per_camera=plan.images_per_camera, size=size,
             test_ids=plan.test_ids, ir_coupling=coupling, progress=False)  # fmt: skip
    return out


def split_sizes(data: Path) -> dict[str, int]:
    sizes = {}
    for name in ("train", "val", "test"):
        path = data / "exp" / f"{name}_id.txt"
        text = path.read_text(encoding="utf-8") if path.is_file() else ""
        sizes[name] = len([t for t in text.replace("\n", ",").split(",") if t.strip()])
    return sizes


def find_selection(config: Any) -> dict[str, Any] | None:
    """The `selection` record anywhere in a checkpoint's config.json."""
    if isinstance(config, dict):
        if isinstance(config.get("selection"), dict):
            return config["selection"]
        for value in config.values():
            found = find_selection(value)
            if found:
                return found
    return None


def selected_checkpoint(run: Path) -> tuple[Path, dict[str, Any]]:
    """`run/best` and its selection record; refused unless it was chosen on validation identities."""
    best = run / "best"
    config = json.loads((best / "config.json").read_text(encoding="utf-8"))
    selection = find_selection(config)
    if not selection or "test" in str(selection.get("split", "test")).lower():
        raise BenchmarkError(f"{best}: no validation selection record ({selection!r}); refusing a checkpoint "
                             "that may have been chosen on test identities")  # fmt: skip
    return best, selection


def evaluate(checkpoint: Path, data: Path, trials: int, out: Path) -> dict[str, dict[str, float]]:
    _cli(["evaluate", "--checkpoint", str(checkpoint), "--dataset", str(data), "--trials",
          ",".join(str(t) for t in range(trials)), "--workers", "0", "--device", "cpu", "--out", str(out)])  # fmt: skip
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    return {s: {m: float(results["settings"][s]["mean"][m]) for m in METRICS} for s in SETTINGS}


@dataclass(frozen=True)
class RunSpec:
    """What one run needs (picklable: runs may go to worker processes)."""

    work: Path
    data: Path
    coupling: float
    method: str
    seed: int | None
    clip: str
    arch: str  # the architecture file or name of the method's family
    train_config: Path
    trials: int
    key: str = ""  # what the run depends on (CLIP, architecture, options, trials): a record of another key is re-run


def run_one(spec: RunSpec) -> dict[str, Any]:
    """Train (unless untrained) and evaluate one (coupling, method, seed); a finished run is read back."""
    method = METHODS[spec.method]
    slug = spec.method.replace("/", "").replace(" ", "-").lower()
    run = spec.work / f"runs-c{spec.coupling:g}" / (slug if spec.seed is None else f"{slug}-seed{spec.seed}")
    record_path = run / "record.json"
    if record_path.is_file():
        record = json.loads(record_path.read_text(encoding="utf-8"))
        if record.get("key") == spec.key:
            return record
        log.info("%s: made with other settings (CLIP, architecture, options or trials): running it again", run)
        import shutil

        shutil.rmtree(run)
    run.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {"coupling": spec.coupling, "method": spec.method, "seed": spec.seed,
                              "family": method.family, "key": spec.key}  # fmt: skip
    t0 = time.perf_counter()
    if method.flags is None:
        from clipmc.model import build_model, save_checkpoint

        checkpoint = run / "checkpoint"
        save_checkpoint(build_model(spec.arch, pretrained=spec.clip), checkpoint, note="untrained heads")
        record["selection"] = None
    else:
        train_out = run / "train"
        _cli(["train", "--dataset", str(spec.data), "--config", str(spec.train_config), "--out", str(train_out),
              "--model", spec.arch, "--pretrained", spec.clip, "--seed", str(spec.seed), "--device", "cpu",
              *method.flags])  # fmt: skip
        checkpoint, record["selection"] = selected_checkpoint(train_out)
    record["train_seconds"] = round(time.perf_counter() - t0, 1)
    t1 = time.perf_counter()
    record["settings"] = evaluate(checkpoint, spec.data, spec.trials, run / "eval")
    record["eval_seconds"] = round(time.perf_counter() - t1, 1)
    record["checkpoint"] = str(checkpoint)
    atomic = record_path.with_suffix(".tmp")
    atomic.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    atomic.replace(record_path)
    return record


def run_key(clip_sha256: str, arch: str, train_config: Path | None, trials: int) -> str:
    """A digest of what a run's numbers depend on besides (coupling, method, seed): the CLIP, the
    architecture (name or file contents), the training options (None for untrained rows) and the trials."""
    import hashlib

    arch_text = Path(arch).read_text(encoding="utf-8") if Path(arch).is_file() else arch
    options = train_config.read_text(encoding="utf-8") if train_config is not None else "untrained"
    return hashlib.sha256("\0".join([clip_sha256, arch_text, options, str(trials)]).encode()).hexdigest()[:16]


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def mip_arch_for(clip_arch: str, work: Path) -> Path:
    """MIP's architecture on the CLIP's image tower, as a JSON file `clipmc train --model` reads."""
    from clipmc.model.config import get_config
    from clipmc.model.mip.config import config_for_clip_tower

    clip_config = get_config(clip_arch)
    name = "mip-synth-small" if clip_config.name == "synth-small" else f"mip-{clip_config.name}"
    path = work / "mip-arch.json"
    config = config_for_clip_tower(name, clip_config.clip["vision_cfg"], bool(clip_config.clip.get("quick_gelu")))
    path.write_text(json.dumps({"family": "mip", **config.to_dict()}, indent=2) + "\n", encoding="utf-8")
    return path


def run_benchmark(args: argparse.Namespace, plan: Plan) -> dict[str, Any]:
    from clipmc.contract import file_sha256
    from clipmc.model.config import get_config

    if not args.clip or not Path(args.clip).is_file():
        raise BenchmarkError(f"--clip {args.clip!r}: not a file (run clipmc pretrain-clip first)")
    if args.jobs < 1:
        raise BenchmarkError(f"--jobs must be >= 1, got {args.jobs}")
    check_trainer_flags()
    size = tuple(get_config(args.arch).image_size)
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    families = {m: METHODS[m].family for m in plan.methods}
    arch = {"clipmc": str(args.arch), "mip": str(mip_arch_for(args.arch, work))}
    train_configs = {}
    for family, source in (("clipmc", args.config), ("mip", args.mip_config)):
        if family not in families.values():
            continue
        options = json.loads(Path(source).read_text(encoding="utf-8"))
        options.pop("model", None)  # the architecture is --model (arch above)
        train_configs[family] = work / f"train-config-{family}.json"
        train_configs[family].write_text(json.dumps({**options, **plan.train_overrides}, indent=2) + "\n",
                                         encoding="utf-8")  # fmt: skip
    clip_sha = file_sha256(args.clip)
    started, load_start, t0 = dt.datetime.now(dt.timezone.utc), _load(), time.perf_counter()
    jobs: list[tuple[float, str]] = [(plan.coupling, m) for m in plan.methods]
    jobs += [(c, m) for c in plan.sweep for m in SWEEP_METHODS if (c, m) not in jobs]
    specs, splits = [], {}
    for coupling, method in jobs:
        data = make_data(work, plan, coupling, size)  # type: ignore[arg-type]
        splits[f"{coupling:g}"] = split_sizes(data)
        family = METHODS[method].family
        seeds: list[int | None] = [None] if METHODS[method].flags is None else list(plan.seeds)
        config_path = train_configs.get(family, Path())
        key = run_key(clip_sha, arch[family], config_path if METHODS[method].flags is not None else None, plan.trials)
        specs += [RunSpec(work, data, coupling, method, seed, str(args.clip), arch[family], config_path, plan.trials,
                          key) for seed in seeds]  # fmt: skip
    threads = None
    if args.jobs == 1:
        runs = [run_one(spec) for spec in specs]
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        threads = max(1, cores // args.jobs)
        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_init_worker, initargs=(threads,)) as pool:  # fmt: skip
            runs = list(pool.map(run_one, specs))
    return {
        "title": "Methods on synthetic SYSU-MM01 (SYNTHETIC data, a small CLIP pretrained on captions)",
        "started_utc": started.isoformat(timespec="seconds"),
        "seconds_total": round(time.perf_counter() - t0, 1),
        "load_average_1min": {"start": load_start, "end": _load()},
        "machine": {**machine(), "jobs": args.jobs, "threads_per_job": threads},
        "clip": {"file": str(args.clip), "sha256": clip_sha, "arch": args.arch},
        "plan": {**asdict(plan), "train_options": {f: json.loads(p.read_text()) for f, p in train_configs.items()}},
        "splits": splits,
        "runs": runs,
    }


# --------------------------------------------------------------------------------------------------
# Tables and plots (from the results JSON alone)


def summarize(results: dict[str, Any]) -> dict[str, dict[str, dict[str, dict[str, dict[str, float]]]]]:
    """coupling -> method -> setting -> metric -> {mean, std, n} over the runs (seeds); std is the sample
    standard deviation (ddof=1), 0 for a single run."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in results["runs"]:
        groups.setdefault((f"{r['coupling']:g}", r["method"]), []).append(r)
    out: dict[str, Any] = {}
    for (coupling, method), rs in groups.items():
        per = out.setdefault(coupling, {}).setdefault(method, {})
        for s in SETTINGS:
            per[s] = {}
            for m in METRICS:
                v = np.array([r["settings"][s][m] for r in rs], float)
                per[s][m] = {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "n": len(v)}
    return out


def markdown(results: dict[str, Any]) -> str:
    summary = summarize(results)
    plan = results["plan"]
    main = f"{plan['coupling']:g}"
    cell = lambda d: f"{d['mean']:.1f} ± {d['std']:.1f}"  # noqa: E731
    head = " | ".join(f"{s} {m}" for s in SETTINGS for m in METRICS)
    lines = [
        f"# {results['title']}",
        "",
        f"SYNTHETIC. Synthetic SYSU-MM01 tree (`clipmc synth --layout sysu --ids {plan['ids']} --test-ids "
        f"{plan['test_ids']} --seed {plan['data_seed']} --ir-coupling {main}`; identities train/val/test "
        f"{_split_text(results, main)}), every method from the CLIP `{results['clip']['file']}` "
        f"(sha256 {results['clip']['sha256'][:12]}, architecture `{results['clip']['arch']}`). Trained methods: "
        f"seeds {', '.join(map(str, plan['seeds']))}, `best/` selected by the trainer on the validation "
        f"identities; untrained rows (zero-shot, MIP untrained): one run. SYSU protocol (PROTOCOLS.md), "
        f"{plan['trials']} trials per setting, not re-ranked; R1 / mAP / mINP in %: per-run mean over the trials, "
        "then mean ± sample std over the seeds.",
        "",
        f"| method (coupling {main}) | runs | {head} |",
        "|---|---|" + "---|" * (len(SETTINGS) * len(METRICS)),
    ]
    for method, per in summary.get(main, {}).items():
        n = per[SETTINGS[0]][METRICS[0]]["n"]
        lines.append(f"| {method} | {n} | " + " | ".join(cell(per[s][m]) for s in SETTINGS for m in METRICS) + " |")
    sweep = [c for c in (f"{c:g}" for c in plan["sweep"]) if c in summary]
    if sweep:
        lines += ["", "Infrared-coupling sweep (all-search; the same CLIP; mean ± std over the seeds):", "",
                  "| coupling | image-only R1 | image-only mAP | CLIP-MC R1 | CLIP-MC mAP | CLIP-MC − image-only mAP |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        for c in sweep:
            per = summary[c]
            if not all(m in per for m in SWEEP_METHODS):
                continue
            a, b = per["image-only"]["all"], per["CLIP-MC"]["all"]
            lines.append(f"| {c} | {cell(a['R1'])} | {cell(a['mAP'])} | {cell(b['R1'])} | {cell(b['mAP'])} | "
                         f"{b['mAP']['mean'] - a['mAP']['mean']:+.1f} |")  # fmt: skip
    mach = results["machine"]
    load = results["load_average_1min"]
    lines += [
        "",
        f"Run time {results['seconds_total'] / 60:.1f} min for this invocation (runs finished by an earlier one "
        f"are read back); the runs' own training and evaluation took {_run_minutes(results):.0f} minutes "
        f"summed over runs (per run: `train_seconds`, `eval_seconds` in the "
        f"JSON), started {results['started_utc']} on {mach['cpu']} ({mach['cores']} cores; {_threads_text(mach)}), "
        f"1-min load average {load['start']} at the start, {load['end']} at "
        "the end (a shared machine).",
    ]
    return "\n".join(lines) + "\n"


def _run_minutes(results: dict[str, Any]) -> float:
    return sum(r.get("train_seconds", 0.0) + r.get("eval_seconds", 0.0) for r in results["runs"]) / 60


def _threads_text(mach: dict[str, Any]) -> str:
    if mach.get("jobs", 1) > 1:
        return f"{mach['jobs']} runs in parallel, {mach.get('threads_per_job') or '?'} torch thread(s) each"
    return f"one run at a time, {mach['torch_threads']} torch threads"


def _split_text(results: dict[str, Any], coupling: str) -> str:
    s = results.get("splits", {}).get(coupling)
    return f"{s['train']}/{s['val']}/{s['test']}" if s else "?"


def plot_methods(results: dict[str, Any], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    summary = summarize(results).get(f"{results['plan']['coupling']:g}", {})
    methods = list(summary)
    fig = Figure(figsize=(9, 4), dpi=110)
    FigureCanvasAgg(fig)
    x = np.arange(len(methods))
    for k, setting in enumerate(SETTINGS):
        ax = fig.add_subplot(1, len(SETTINGS), k + 1)
        for j, metric in enumerate(METRICS):
            means = [summary[m][setting][metric]["mean"] for m in methods]
            stds = [summary[m][setting][metric]["std"] for m in methods]
            ax.bar(x + (j - 1) * 0.27, means, 0.27, yerr=stds, capsize=2, label=metric)
        ax.set_xticks(x, methods, rotation=30, ha="right", fontsize=8)
        ax.set_title(f"{setting}-search", fontsize=9)
        ax.set_ylim(0, 100)
        ax.grid(True, axis="y", alpha=0.3)
        if k == 0:
            ax.set_ylabel("% (mean ± std over seeds)")
            ax.legend(fontsize=8)
    fig.suptitle(f"SYNTHETIC SYSU-MM01, coupling {results['plan']['coupling']:g}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)


def plot_sweep(results: dict[str, Any], path: Path) -> bool:
    """mAP and R1 (all-search) against the infrared coupling; False when the results hold no sweep."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    summary = summarize(results)
    couplings = sorted(float(c) for c in summary if all(m in summary[c] for m in SWEEP_METHODS))
    couplings = [c for c in couplings if c in results["plan"]["sweep"]]
    if not couplings:
        return False
    fig = Figure(figsize=(8, 3.6), dpi=110)
    FigureCanvasAgg(fig)
    for k, metric in enumerate(("mAP", "R1")):
        ax = fig.add_subplot(1, 2, k + 1)
        for method in SWEEP_METHODS:
            d = [summary[f"{c:g}"][method]["all"][metric] for c in couplings]
            ax.errorbar(couplings, [v["mean"] for v in d], yerr=[v["std"] for v in d], marker="o", capsize=3,
                        label=method)  # fmt: skip
        ax.set_xlabel("infrared coupling (clipmc synth --ir-coupling)")
        ax.set_ylabel(f"all-search {metric} (%)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("SYNTHETIC: does compensation pay when infrared carries some colour?", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    return True


def write_outputs(results: dict[str, Any], out: Path, name: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.json", out / f"{name}.md", out / f"{name}.png"]
    paths[0].write_text(json.dumps({**results, "summary": summarize(results)}, indent=2) + "\n", encoding="utf-8")
    paths[1].write_text(markdown(results), encoding="utf-8")
    plot_methods(results, paths[2])
    if plot_sweep(results, out / f"{name}-coupling.png"):
        paths.append(out / f"{name}-coupling.png")
    return paths


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    name = args.name or ("methods-toy" if args.toy else "methods")
    try:
        if args.from_json:
            results = json.loads(args.from_json.read_text(encoding="utf-8"))
        else:
            plan = TOY if args.toy else Plan()
            given = {"seeds": args.seeds, "trials": args.trials, "coupling": args.coupling, "sweep": args.sweep,
                     "methods": args.methods}  # fmt: skip
            plan = replace(plan, **{k: v for k, v in given.items() if v is not None})
            results = run_benchmark(args, plan)
    except (BenchmarkError, OSError, ValueError, KeyError) as exc:
        print(f"methods.py: error: {exc}", file=sys.stderr)
        return 2
    for path in write_outputs(results, args.out, name):
        print(f"wrote {path}")
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
