"""The docker/ files: compose.yaml's services, ports, volumes, health checks and secrets, the
Dockerfiles and their build contexts, .env.example, the shell scripts, and the flags they pass
to tuning.run and mlflow_server. `docker compose config` runs where Compose v2 is installed.

Images are not built here (that needs a Docker engine and the network)."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
COMPOSE_FILE = DOCKER / "compose.yaml"
ENV_EXAMPLE = DOCKER / ".env.example"

SERVICES = {"postgres", "minio", "minio-init", "mlflow", "ray-head", "ray-worker", "search"}
ONE_SHOT = {"minio-init", "search"}  # run to completion; everything else must report its health
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN")  # never a value in a committed file
CREDENTIAL_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY")  # only from .env, never a default
REQUIRED_REF = re.compile(r"^\$\{([A-Z][A-Z0-9_]*):\?[^}]+\}$")  # ${NAME:?message}
LOOPBACK_OR_ENV = re.compile(r"^(127\.0\.0\.1|\$\{[A-Z][A-Z0-9_]*:-127\.0\.0\.1\})$")
DOCKERFILE_INSTRUCTIONS = {
    "FROM",
    "RUN",
    "CMD",
    "LABEL",
    "EXPOSE",
    "ENV",
    "ADD",
    "COPY",
    "ENTRYPOINT",
    "VOLUME",
    "USER",
    "WORKDIR",
    "ARG",
    "ONBUILD",
    "STOPSIGNAL",
    "HEALTHCHECK",
    "SHELL",
}
NEVER_IN_CONTEXT = [".venv/bin/python", "runs/tune/x/job.json", "data/train/a.png", ".git/HEAD", "docker/.env"]


@pytest.fixture(scope="module")
def compose_text() -> str:
    return COMPOSE_FILE.read_text()


@pytest.fixture(scope="module")
def compose(compose_text) -> dict:
    return yaml.safe_load(compose_text)


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def _variables(text: str) -> dict[str, set[str]]:
    """Every ${NAME...} that compose interpolates, with the operators used on it (':?', ':-', '')."""
    found: dict[str, set[str]] = {}
    for name, rest in re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)([^}]*)\}", text.replace("$$", "")):
        found.setdefault(name, set()).add(rest[:2] if rest[:1] in ":-?" else rest)
    return found


def _env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, sep, value = line.partition("=")
            assert sep, f".env.example: not NAME=VALUE: {line!r}"
            assert name not in values, f".env.example sets {name} twice"
            values[name] = value
    return values


def _environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def parse_dockerfile(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction: continuation lines joined, comments dropped."""
    instructions, pending = [], ""
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # parser directives (# syntax=) are comments too
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        keyword, _, arguments = line.partition(" ")
        assert keyword.upper() in DOCKERFILE_INSTRUCTIONS, f"{path.name}:{number}: unknown instruction {keyword!r}"
        assert keyword == keyword.upper(), f"{path.name}:{number}: write {keyword.upper()}"
        instructions.append((keyword, arguments.strip()))
    assert not pending, f"{path.name} ends inside a continued line"
    return instructions


def _key_values(arguments: str) -> dict[str, str]:
    """ENV/ARG arguments: NAME=value pairs (shell-quoted) or a bare ARG name."""
    pairs = {}
    for word in shlex.split(arguments):
        name, _, value = word.partition("=")
        pairs[name] = value
    return pairs


def _flags_declared(source: Path) -> set[str]:
    return set(re.findall(r"add_argument\(\s*\"(--[a-z0-9-]+)\"", source.read_text()))


def _dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        if any(fnmatch.fnmatchcase(prefix, pattern) for prefix in prefixes):
            excluded = not negated
    return excluded


def _built_dockerfiles(services: dict) -> dict[str, Path]:
    built = {}
    for name, service in services.items():
        build = service.get("build")
        if build:
            assert (DOCKER / build["context"]).resolve() == ROOT, f"{name}: the build context must be the repository root"
            built[name] = ROOT / build["dockerfile"]
    return built


# --- compose.yaml -----------------------------------------------------------------------------


def test_compose_has_the_stack_services(services):
    assert set(services) == SERVICES
    assert services["search"].get("profiles") == ["search"], "search must not start with `up`"
    for name in ONE_SHOT:
        assert services[name].get("restart") == "no", f"{name} is one-shot"


def test_long_running_services_have_health_checks_and_restart(services):
    for name, service in services.items():
        if name in ONE_SHOT:
            continue
        check = service.get("healthcheck")
        assert check and not check.get("disable"), f"{name} has no health check"
        test = check.get("test")
        assert isinstance(test, list) and test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, f"{name}: bad test {test!r}"
        for key in ("interval", "timeout", "retries", "start_period"):
            assert key in check, f"{name}: healthcheck without {key}"
        assert service.get("restart") == "unless-stopped", f"{name} should come back after a crash or reboot"


def test_depends_on_waits_for_health_or_completion(services):
    seen = 0
    for name, service in services.items():
        for target, spec in (service.get("depends_on") or {}).items():
            assert isinstance(spec, dict), f"{name}: depends_on {target} needs a condition"
            assert target in services, f"{name} depends on unknown {target}"
            if target in ONE_SHOT:
                assert spec["condition"] == "service_completed_successfully", f"{name} -> {target}"
            else:
                assert spec["condition"] == "service_healthy", f"{name} -> {target}: wait for health"
                assert services[target].get("healthcheck"), f"{target} has no health check to wait for"
            seen += 1
    assert seen >= 8
    assert set(services["mlflow"]["depends_on"]) == {"postgres", "minio", "minio-init"}
    assert set(services["ray-worker"]["depends_on"]) == {"ray-head"}
    assert set(services["search"]["depends_on"]) >= {"ray-head", "mlflow", "postgres"}


def test_named_volumes_are_declared_and_used(compose, services):
    declared = set(compose.get("volumes") or {})
    used = set()
    for name, service in services.items():
        for entry in service.get("volumes") or []:
            source = entry.split(":", 1)[0] if isinstance(entry, str) else entry.get("source", "")
            if source.startswith("${"):
                continue  # a host folder chosen in .env
            if source.startswith((".", "/")):
                assert (DOCKER / source).exists(), f"{name}: bind source {source} does not exist"
                continue
            assert source in declared, f"{name} uses undeclared volume {source}"
            used.add(source)
    assert used == declared, f"declared but unused: {declared - used}"
    assert {"postgres-data", "minio-data", "mlflow-state", "tune-runs"} <= declared
    mounts = {name: [v.split(":")[1] for v in s.get("volumes", []) if v.startswith("tune-runs:")] for name, s in services.items()}
    for node in ("ray-head", "ray-worker", "search"):
        assert mounts[node] == ["/home/trainer/runs"], f"{node}: Ray Tune needs one storage path on every node"


def test_published_ports_bind_loopback(services):
    published = {}
    for name, service in services.items():
        for port in service.get("ports") or []:
            if isinstance(port, str):
                host_ip = port.split("}:", 1)[0] + "}" if port.startswith("${") else port.split(":")[0]
                target = port.rsplit(":", 1)[-1]
            else:
                host_ip, target = str(port.get("host_ip", "")), port["target"]
            assert LOOPBACK_OR_ENV.match(host_ip), f"{name}: port {target} binds {host_ip or 'every address'}"
            published[name] = published.get(name, []) + [int(str(target).split("/")[0])]
    assert published == {"minio": [9001], "mlflow": [5000], "ray-head": [8265]}
    assert services["ray-head"]["ports"][0]["host_ip"] == "127.0.0.1", "Ray's dashboard has no login"


def test_secrets_only_by_required_interpolation(services, compose_text):
    checked = 0
    for name, service in services.items():
        for key, value in _environment(service).items():
            if CREDENTIAL_NAME.search(key):
                assert REQUIRED_REF.match(value), f"{name}.{key} must be ${{VAR:?message}}, not {value!r}"
                checked += 1
            for password in re.findall(r"://[^:/@\s]+:([^@\s]+)@", value):
                assert REQUIRED_REF.match(password), f"{name}.{key}: literal password in a URL"
                checked += 1
    assert checked >= 15
    for variable, operators in _variables(compose_text).items():
        if CREDENTIAL_NAME.search(variable):
            assert operators == {":?"}, f"{variable} is used without ':?' ({operators}): it could default or be empty"
    assert not re.search(r"\$[A-Za-z_]", compose_text.replace("$$", "").replace("${", "")), (
        "a bare $NAME is interpolated by compose: write $$NAME for the container's shell"
    )


def test_ray_worker_reserves_gpus_and_shared_memory(services):
    worker = services["ray-worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert {"driver": "nvidia", "count": "all", "capabilities": ["gpu"]} in devices
    assert "container_name" not in worker, "a fixed name forbids --scale ray-worker=N"
    assert worker["command"][:2] == ["ray", "start"] and "--address=ray-head:6379" in worker["command"]
    assert "--block" in worker["command"] and "--block" in services["ray-head"]["command"]
    assert "--head" in services["ray-head"]["command"]
    for name in ("ray-head", "ray-worker", "search"):
        assert services[name]["image"] == "fracture-tune/trainer:latest"
        assert "shm_size" in services[name], f"{name}: Ray's object store needs /dev/shm"


def test_services_wire_the_stores_together(services):
    mlflow = _environment(services["mlflow"])
    assert mlflow["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg://mlflow:")
    assert mlflow["MLFLOW_BACKEND_STORE_URI"].endswith("@postgres:5432/mlflow")
    assert mlflow["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://")
    assert mlflow["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    search = _environment(services["search"])
    assert search["OPTUNA_STORAGE_URL"].endswith("@postgres:5432/optuna")
    assert search["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert search["AWS_ENDPOINT_URL"] == _environment(services["ray-worker"])["AWS_ENDPOINT_URL"] == "http://minio:9000"
    init_script = (DOCKER / "postgres" / "init-databases.sh").read_text()
    assert "CREATE DATABASE mlflow" in init_script and "CREATE DATABASE optuna" in init_script


def test_env_example_lists_every_variable_and_no_secret(compose_text):
    example = _env_example()
    referenced = _variables(compose_text)
    assert set(referenced) == set(example), (
        f"missing from .env.example: {set(referenced) - set(example)}; unused there: {set(example) - set(referenced)}"
    )
    secrets_ = {name for name in example if SECRET_NAME.search(name)}
    assert len(secrets_) >= 6
    for name in secrets_:
        assert example[name] == "", f".env.example must leave {name} empty (compose then refuses to start)"
    for name, operators in referenced.items():
        if ":?" not in operators:
            assert example[name], f"{name} has a default in compose: show it in .env.example"


# --- Dockerfiles and build contexts -----------------------------------------------------------


@pytest.mark.parametrize("service", ["mlflow", "ray-head"])
def test_dockerfile_parses_and_runs_as_a_user(services, service):
    dockerfile = _built_dockerfiles(services)[service]
    instructions = parse_dockerfile(dockerfile)
    keywords = [keyword for keyword, _ in instructions]
    assert keywords[[k != "ARG" for k in keywords].index(True)] == "FROM", f"{dockerfile.name}: FROM first"
    users = [arguments for keyword, arguments in instructions if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), f"{dockerfile.name} must end as a non-root user"
    user = users[-1].split(":")[0]
    assert any(keyword == "RUN" and re.search(rf"useradd .*\b{user}\b", args) for keyword, args in instructions), f"{user} is never created"
    for keyword, arguments in instructions:
        if keyword in ("ENV", "ARG"):
            for name, value in _key_values(arguments).items():
                assert not (CREDENTIAL_NAME.search(name) and value), f"{dockerfile.name}: {keyword} {name} bakes in a secret"
    for keyword, arguments in instructions:
        if keyword in ("CMD", "ENTRYPOINT"):
            assert isinstance(json.loads(arguments), list), f"{dockerfile.name}: exec form, so signals reach the process"


def test_dockerfile_copies_only_what_its_context_holds(services):
    for service, dockerfile in _built_dockerfiles(services).items():
        ignore = dockerfile.with_name(dockerfile.name + ".dockerignore")
        assert ignore.exists(), f"{ignore.name} is missing: the whole repository (.venv, data) would be sent"
        patterns = [line.strip() for line in ignore.read_text().splitlines() if line.strip() and not line.startswith("#")]
        for path in NEVER_IN_CONTEXT:
            assert _dockerignore_excludes(patterns, path), f"{ignore.name} lets {path} into the build"
        copies = [args for keyword, args in parse_dockerfile(dockerfile) if keyword == "COPY"]
        assert copies
        for arguments in copies:
            sources = [word for word in arguments.split()[:-1] if not word.startswith("--")]
            for source in sources:
                assert (ROOT / source).exists(), f"{dockerfile.name}: COPY {source}: no such path"
                probe = source if (ROOT / source).is_file() else f"{source}/__init__.py"
                assert not _dockerignore_excludes(patterns, probe), f"{dockerfile.name}: COPY {source}, but {ignore.name} leaves it out"
        text = dockerfile.read_text()
        assert re.search(r'pip install "/tmp/fracture-tune\[postgres\]" boto3', text), (
            f"{dockerfile.name}: project with [postgres] and boto3"
        )


def test_trainer_image_has_cuda_torch_and_ray(services):
    dockerfile = _built_dockerfiles(services)["ray-head"]
    text = dockerfile.read_text()
    assert "ARG TORCH_VERSION=2.14.1" in text and "ARG TORCHVISION_VERSION=0.29.1" in text
    assert "--index-url" not in text, "the trainer's torch comes from PyPI: the CUDA build"
    assert '"ray[default,tune]"' in text, "Ray's dashboard needs ray[default]"
    assert "procps" in text and services["ray-worker"]["healthcheck"]["test"][1] == "pgrep"
    assert "docker/ray-search.sh /usr/local/bin/fracture-search" in text
    assert services["search"]["entrypoint"] == ["fracture-search"]


# --- the commands and the flags they pass -----------------------------------------------------


def test_mlflow_image_command_uses_real_flags(services):
    dockerfile = _built_dockerfiles(services)["mlflow"]
    commands = [json.loads(args) for keyword, args in parse_dockerfile(dockerfile) if keyword == "CMD"]
    assert commands and commands[-1][:2] == ["sh", "-c"]
    words = shlex.split(commands[-1][2])
    assert words[:4] == ["exec", "python", "-m", "mlflow_server"]
    flags = [w for w in words if w.startswith("--")]
    assert set(flags) <= _flags_declared(ROOT / "mlflow_server" / "__main__.py"), flags
    assert {"--auth", "--backend-store-uri", "--artifacts-destination"} <= set(flags)
    assert words[words.index("--host") + 1] == "0.0.0.0" and "--insecure" not in flags
    environment = _environment(services["mlflow"])
    for name in re.findall(r"\$\{([A-Z_]+):\?", commands[-1][2]):
        assert name in environment, f"the mlflow image needs {name}; compose does not set it"
    assert "MLFLOW_AUTH_ADMIN_PASSWORD" in environment


def test_search_entry_point_passes_real_tuning_flags(services):
    script = (DOCKER / "ray-search.sh").read_text()
    run_flags = _flags_declared(ROOT / "tuning" / "run.py")
    passed = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]+)", script.split("exec python -m tuning.run --address", 1)[1]))
    assert passed and passed <= run_flags, passed - run_flags
    assert {"--storage-path", "--optuna-storage"} <= passed
    environment = _environment(services["search"])
    for name in re.findall(r"\$\{([A-Z_]+):\?", script):
        assert name in environment, f"ray-search.sh needs {name}; the search service does not set it"
    assert "--num-cpus=0" in script and "--num-gpus=0" in script, "the driver's node must take no trials"


def test_shell_scripts_parse():
    if shutil.which("sh") is None:
        pytest.skip("no sh")
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    inline = compose["services"]["minio-init"]["command"][0].replace("$$", "$")
    scripts = {"minio-init command": inline}
    scripts.update({p.name: p.read_text() for p in [DOCKER / "ray-search.sh", DOCKER / "postgres" / "init-databases.sh"]})
    for name, text in scripts.items():
        assert text.startswith(("#!/bin/sh\n", "set -e\n")), name
        result = subprocess.run(["sh", "-n"], input=text, capture_output=True, text=True, timeout=10)
        assert result.returncode == 0, f"{name}: {result.stderr}"


# --- docker compose config, where compose exists ----------------------------------------------


def _compose_command() -> tuple[list[str] | None, str]:
    """A Compose v2 command line, or None and why not."""
    why = "neither `docker compose` nor `docker-compose` answers `version` here"
    for command in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(command[0]) is None:
            continue
        try:
            result = subprocess.run([*command, "version"], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if result.returncode != 0:
            continue
        if re.search(r"version v?1\.", result.stdout):
            why = f"{' '.join(command)} is Compose 1.x, which predates the compose spec this file uses (name, ports host_ip)"
            continue
        return command, ""
    return None, why


def _run_compose_config(command: list[str], env_file: Path, variables: set[str]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in variables and not k.startswith("COMPOSE_")}
    return subprocess.run(
        [*command, "--env-file", str(env_file), "-f", str(COMPOSE_FILE), "--profile", "search", "config"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=DOCKER,
    )


def test_docker_compose_config(tmp_path, compose_text):
    command, why = _compose_command()
    if command is None:
        pytest.skip(why)
    example = _env_example()
    filled = {name: (f"test{secrets.token_hex(8)}" if value == "" else value) for name, value in example.items()}
    env_file = tmp_path / "env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in filled.items()))
    result = _run_compose_config(command, env_file, set(example))
    assert result.returncode == 0, result.stderr
    rendered = yaml.safe_load(result.stdout)
    assert set(rendered["services"]) == SERVICES
    assert filled["MLFLOW_DB_PASSWORD"] in str(rendered["services"]["mlflow"]["environment"])
    for service in rendered["services"].values():
        for port in service.get("ports") or []:
            assert port.get("host_ip") == "127.0.0.1", port

    # The example as committed leaves the secrets empty: compose must refuse it, naming one.
    refused = _run_compose_config(command, ENV_EXAMPLE, set(example))
    assert refused.returncode != 0
    assert any(name in refused.stderr for name in example if SECRET_NAME.search(name)), refused.stderr
