"""docker-compose.yml and the images, checked without a Docker engine.

- the file validates against the Compose specification's JSON schema (``../shared/schemas``);
- every build context, Dockerfile, COPY source and named volume it relies on exists (and is
  not excluded by .dockerignore);
- every environment variable given to a container is one that its program reads: ``RNNOPS_*``
  by rnnops' source, ``MLFLOW_*`` by rnnops or MLflow, image variables by their image;
- ports agree (compose, Dockerfile EXPOSE/CMD, healthchecks, client URLs), the healthcheck
  endpoints exist in the code that serves them, dependencies wait for health;
- the serving image has no torch, every image ends as a non-root user, the GPU profile reserves
  an NVIDIA device and asks serving for CUDA, the Bento build file names the real service.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import re
import shlex
import tomllib
from pathlib import Path
from urllib.parse import urlparse

import pytest
from servers import missing

yaml = pytest.importorskip("yaml")

REPO = Path(__file__).resolve().parents[1]
SCHEMAS = REPO.parent / "shared" / "schemas"
SOURCE_DIRS = ["rnnops", "training", "export", "registry", "serving"]
DEFAULT_BASE = "python:3.11-slim-bookworm"

# Variables read by third-party images/programs (their documented names).
IMAGE_ENV = {
    "postgres": {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"},
    "minio": {"MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"},
}
AWS_ENV = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}  # boto3, used by MLflow for s3:// artifacts


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def dockerfile(svc: dict) -> Path | None:
    build = svc.get("build")
    if build is None:
        return None
    if isinstance(build, str):
        return REPO / build / "Dockerfile"
    return REPO / build.get("context", ".") / build.get("dockerfile", "Dockerfile")


def final_stage(path: Path) -> list[str]:
    """Instructions of the last stage, continuation lines joined."""
    text = re.sub(r"\\\n", " ", path.read_text())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    starts = [i for i, ln in enumerate(lines) if ln.upper().startswith("FROM ")]
    return lines[starts[-1] :]


def env_of(svc: dict) -> dict:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return env


def source_text() -> str:
    return "\n".join(p.read_text(errors="replace") for d in SOURCE_DIRS for p in (REPO / d).rglob("*.py"))


def rnnops_env_names() -> set[str]:
    """Every ``RNNOPS_*`` / ``MLFLOW_*`` name rnnops' source mentions as a string literal."""
    return set(re.findall(r"""["']((?:RNNOPS|MLFLOW)_[A-Z0-9_]+)["']""", source_text()))


def mlflow_env_names() -> set[str]:
    spec = importlib.util.find_spec("mlflow")
    text = (Path(spec.origin).parent / "environment_variables.py").read_text()
    return set(re.findall(r"""["'](MLFLOW_[A-Z0-9_]+)["']""", text))


def package_file(package: str, relative: str) -> str:
    spec = importlib.util.find_spec(package)
    assert spec and spec.origin, f"{package} is not installed"
    return (Path(spec.origin).parent / relative).read_text()


def rnnops_services(services: dict) -> dict:
    """Services that run rnnops code (built from docker/Dockerfile.serving or .training)."""
    return {
        n: s
        for n, s in services.items()
        if dockerfile(s) and dockerfile(s).name in ("Dockerfile.serving", "Dockerfile.training")
    }


def healthcheck_url(svc: dict) -> str:
    test = svc["healthcheck"]["test"]
    text = test if isinstance(test, str) else " ".join(test)
    m = re.search(r"https?://[^'\" ]+", text)
    assert m, f"healthcheck has no URL: {text}"
    return m.group(0)


def command_arg(cmd: list[str] | str, flag: str) -> str:
    args = shlex.split(cmd) if isinstance(cmd, str) else cmd
    return args[args.index(flag) + 1]


# ---------------------------------------------------------------- schema


def test_compose_validates_against_the_compose_spec(compose):
    schema_path = SCHEMAS / "compose-spec.json"
    if not schema_path.is_file():
        missing(f"Compose schema not found at {schema_path} (the shared/ folder beside the repo)")
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(schema_path.read_text())
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors[:10])


def test_every_service_has_an_image_or_a_build(services):
    for name, svc in services.items():
        assert "image" in svc or "build" in svc, name


# ---------------------------------------------------------------- files it relies on


def test_build_contexts_dockerfiles_and_copy_sources_exist(services):
    ignored = [
        p.strip() for p in (REPO / ".dockerignore").read_text().splitlines() if p.strip() and not p.startswith("#")
    ]
    seen = set()
    for name, svc in services.items():
        path = dockerfile(svc)
        if path is None:
            continue
        context = REPO / svc["build"].get("context", ".")
        assert context.is_dir(), f"{name}: build context {context} missing"
        assert path.is_file(), f"{name}: {path} missing"
        if path in seen:
            continue
        seen.add(path)
        text = re.sub(r"\\\n", " ", path.read_text())
        for line in text.splitlines():
            parts = line.split()
            if not parts or parts[0].upper() != "COPY" or any(p.startswith("--from") for p in parts):
                continue
            for src in [p for p in parts[1:-1] if not p.startswith("--")]:
                assert (context / src).exists(), f"{path.name}: COPY {src} does not exist in {context}"
                top = src.rstrip("/").split("/")[0]
                hit = [pat for pat in ignored if fnmatch.fnmatch(top, pat) or fnmatch.fnmatch(src.rstrip("/"), pat)]
                assert not hit, f"{path.name}: COPY {src} is excluded by .dockerignore ({hit})"
        args = set(re.findall(r"^ARG (\w+)", text, re.M))
        for svc2 in services.values():
            if dockerfile(svc2) == path:
                for arg in svc2["build"].get("args") or {}:
                    assert arg in args, f"{path.name} has no ARG {arg} (build arg of a service)"


def test_named_volumes_are_declared(compose, services):
    declared = set(compose.get("volumes") or {})
    for name, svc in services.items():
        for vol in svc.get("volumes") or []:
            src = vol.split(":")[0] if isinstance(vol, str) else vol.get("source", "")
            if src and not src.startswith((".", "/", "~", "$")):
                assert src in declared, f"{name}: volume {src} is not declared at the top level"


def test_pipeline_script_is_installed_in_the_training_image(services):
    train = services["train"]
    assert train["entrypoint"] == ["rnnops-pipeline"]
    assert "docker/pipeline.sh /usr/local/bin/rnnops-pipeline" in dockerfile(train).read_text()
    script = (REPO / "docker" / "pipeline.sh").read_text()
    assert "rnnops train" in script and "--register --promote" in script


# ---------------------------------------------------------------- environment


def test_rnnops_containers_get_only_variables_the_code_reads(services):
    read = rnnops_env_names()
    mlflow_vars = mlflow_env_names()
    assert "MLFLOW_TRACKING_URI" in read and "RNNOPS_MODELS" in read  # the grep itself works
    for name, svc in rnnops_services(services).items():
        env = env_of(svc)
        assert env.get("MLFLOW_TRACKING_URI"), f"{name}: no MLFLOW_TRACKING_URI"
        for key in env:
            if key.startswith("RNNOPS_"):
                assert key in read, f"{name}: {key} is not read anywhere in rnnops"
            elif key.startswith("MLFLOW_"):
                assert key in read or key in mlflow_vars, f"{name}: {key} is read neither by rnnops nor MLflow"
            else:
                pytest.fail(f"{name}: unexpected variable {key}")


def test_dockerfile_env_names_are_read_by_the_code():
    read = rnnops_env_names()
    for name in ("Dockerfile.serving", "Dockerfile.training"):
        for line in final_stage(REPO / "docker" / name):
            if line.upper().startswith("ENV "):
                for key in re.findall(r"\b((?:RNNOPS|MLFLOW)_[A-Z0-9_]+)=", line):
                    assert key in read, f"{name}: ENV {key} is not read by rnnops"


def test_mlflow_and_third_party_containers_get_documented_variables(services):
    mlflow_vars = mlflow_env_names()
    for key in env_of(services["mlflow"]):
        assert key in mlflow_vars or key in AWS_ENV, f"mlflow: {key} is not an MLflow/boto3 variable"
    for name, allowed in IMAGE_ENV.items():
        assert set(env_of(services[name])) <= allowed, name
    init = services["minio-init"]
    script = "\n".join(init["command"])
    for key in env_of(init):
        assert key in script or key in AWS_ENV, f"minio-init: {key} is not used by its script"


def test_serving_env_is_valid_for_the_service_config(services):
    from rnnops.serving.config import ServeConfig

    for name in ("serving", "serving-gpu"):
        env = env_of(services[name])
        cfg = ServeConfig(providers=env["RNNOPS_PROVIDERS"])
        cfg.validate()
    assert ServeConfig(providers=env_of(services["serving-gpu"])["RNNOPS_PROVIDERS"]).use_cuda
    from rnnops.serving.models import parse_refs

    default = re.match(r"\$\{RNNOPS_MODELS:-(.*)\}", env_of(services["serving"])["RNNOPS_MODELS"]).group(1)
    assert [r.name for r in parse_refs(default)] == ["char-rnn", "forecaster"]
    # sessions shared through the compose file's own Redis service
    store = re.match(r"\$\{RNNOPS_SESSION_STORE:-(.*)\}", env_of(services["serving"])["RNNOPS_SESSION_STORE"]).group(1)
    ServeConfig(session_store=store).validate()
    assert store.startswith("redis://redis:") and "redis" in services["serving"]["depends_on"]


# ---------------------------------------------------------------- ports, health, order


def test_mlflow_port_command_health_and_clients_agree(services):
    mlflow = services["mlflow"]
    port = command_arg(mlflow["command"], "--port")
    assert any(str(p).endswith(f":{port}") for p in mlflow["ports"])
    url = urlparse(healthcheck_url(mlflow))
    assert (url.port, url.path) == (int(port), "/health")
    assert '"/health"' in package_file("mlflow", "server/__init__.py")  # MLflow's route
    assert "postgres:5432" in command_arg(mlflow["command"], "--backend-store-uri")
    assert "psycopg" in command_arg(mlflow["command"], "--backend-store-uri")
    assert "psycopg" in (REPO / "docker" / "Dockerfile.mlflow").read_text()  # the driver is installed
    assert "--serve-artifacts" in mlflow["command"]
    hosts = mlflow["environment"]["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    for name, svc in rnnops_services(services).items():
        client = urlparse(env_of(svc)["MLFLOW_TRACKING_URI"])
        assert client.hostname in services, f"{name}: {client.hostname} is not a service"
        assert client.port == int(port), name
        assert f"{client.hostname}:{client.port}" in hosts, f"MLflow would refuse the Host header of {name}"
        assert svc["depends_on"][client.hostname]["condition"] == "service_healthy", name


def test_serving_port_health_and_readiness(services):
    df = (REPO / "docker" / "Dockerfile.serving").read_text()
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", df, re.M).group(1))
    assert cmd[:3] == ["bentoml", "serve", "rnnops.serving.service:RnnopsService"]
    port = int(command_arg(cmd, "--port"))
    assert re.search(rf"^EXPOSE {port}$", df, re.M)
    assert f"127.0.0.1:{port}/readyz" in df  # the image's HEALTHCHECK
    for name in ("serving", "serving-gpu"):
        svc = services[name]
        assert any(str(p).endswith(f":{port}") for p in svc["ports"]), name
        url = urlparse(healthcheck_url(svc))
        assert (url.port, url.path) == (port, "/readyz"), name
        assert svc["depends_on"]["mlflow"]["condition"] == "service_healthy"
    # /readyz is BentoML's, and it asks the service whether its models are loaded
    assert '"/readyz"' in package_file("bentoml", "_internal/server/base_app.py")
    service = (REPO / "serving" / "service.py").read_text()
    assert "@bentoml.service" in service and "class RnnopsService" in service and "def __is_ready__" in service


def test_dependencies_exist_and_wait_for_health(services):
    for name, svc in services.items():
        deps = svc.get("depends_on") or {}
        for dep, how in deps.items() if isinstance(deps, dict) else ((d, {}) for d in deps):
            assert dep in services, f"{name} depends on unknown {dep}"
            if how.get("condition") == "service_healthy":
                assert "healthcheck" in services[dep] or dockerfile(services[dep]), f"{dep} has no healthcheck"
    assert services["postgres"]["healthcheck"]["test"][-1].startswith("pg_isready")


# ---------------------------------------------------------------- images, profiles


def test_serving_image_has_no_torch():
    df = (REPO / "docker" / "Dockerfile.serving").read_text()
    # the serve extra and the core dependencies, read from pyproject.toml; mlflow-skinny for mlflow
    assert "['optional-dependencies']['serve']" in df and "p['dependencies']" in df and "--no-deps ." in df
    assert "mlflow-skinny" in df and "[train]" not in df and "[all]" not in df
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    core = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert not [d for d in extras["serve"] + core if d.lower().startswith("torch")]
    # the architecture's rule: serving and registry never import torch
    for d in ("serving", "registry"):
        for p in (REPO / d).rglob("*.py"):
            assert not re.search(r"^\s*(import torch|from torch)", p.read_text(), re.M), p


def test_training_image_takes_torch_from_the_cpu_index():
    df = (REPO / "docker" / "Dockerfile.training").read_text()
    assert "download.pytorch.org/whl/cpu" in df and '".[train]"' in df


def test_images_run_as_non_root():
    for path in sorted((REPO / "docker").glob("Dockerfile.*")):
        users = [ln.split()[1] for ln in final_stage(path) if ln.upper().startswith("USER ")]
        assert users and users[-1] not in ("root", "0"), f"{path.name} ends as root"


def test_gpu_profile_reserves_an_nvidia_gpu(services):
    gpu = services["serving-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["build"]["args"]["ORT"] == "gpu"
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    assert "onnxruntime-gpu" in (REPO / "docker" / "Dockerfile.serving").read_text()


def test_profiles(services):
    assert services["train"]["profiles"] == ["train"]
    assert services["minio"]["profiles"] == services["minio-init"]["profiles"] == ["s3"]
    assert not services["serving"].get("profiles") and not services["mlflow"].get("profiles")
    assert services["mlflow"]["depends_on"]["minio-init"]["required"] is False  # s3 stays optional


def test_bentofile_names_the_service_and_registry_models():
    bento = yaml.safe_load((REPO / "bentofile.yaml").read_text())
    module, cls = bento["service"].split(":")
    assert module == "rnnops.serving.service" and f"class {cls}" in (REPO / "serving" / "service.py").read_text()
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert bento["python"]["wheels"] == [f"./dist/rnnops-{version}-py3-none-any.whl"]
    assert [m.split(":")[0] for m in bento["models"]] == ["char-rnn", "forecaster"]
    env = {e["name"]: e["value"] for e in bento["envs"]}
    from rnnops.serving.models import parse_refs

    refs = parse_refs(env["RNNOPS_MODELS"])
    assert [(r.served, r.source, r.target) for r in refs] == [
        ("char-rnn", "bentoml", "char-rnn:latest"),
        ("forecaster", "bentoml", "forecaster:latest"),
    ]
    # its packages are rnnops' core + serve dependencies, at the versions constraints.txt pins
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = {
        re.split(r"[<>=!~\[ ;]", d, maxsplit=1)[0].lower()
        for d in project["dependencies"] + project["optional-dependencies"]["serve"]
    }
    pins = dict(ln.lower().split("==", 1) for ln in (REPO / "constraints.txt").read_text().split() if "==" in ln)
    packages = dict(p.lower().split("==", 1) for p in bento["python"]["packages"])
    assert set(packages) == wanted
    assert packages == {name: pins[name] for name in packages}


# ---------------------------------------------------------------- building and running them (make images, make stack-test)


def test_dockerfiles_build_on_a_base_image_argument():
    """Every stage starts from ARG BASE_IMAGE (default what users pull); CI passes a local one."""
    for path in sorted((REPO / "docker").glob("Dockerfile.*")):
        text = path.read_text()
        first_from = re.search(r"^FROM ", text, re.M).start()
        assert re.search(rf"^ARG BASE_IMAGE={re.escape(DEFAULT_BASE)}$", text[:first_from], re.M), path.name
        froms = re.findall(r"^FROM (\S+)", text, re.M)
        assert froms and set(froms) <= {"${BASE_IMAGE}", "scratch"} and froms[-1] == "${BASE_IMAGE}", (path.name, froms)
    for name in ("python", "postgres", "redis"):  # the local stand-ins CI builds from Debian
        assert (REPO / "docker" / "ci" / f"Containerfile.{name}").is_file()


def test_ci_override_only_swaps_the_third_party_images(services):
    override = yaml.safe_load((REPO / "docker-compose.ci.yml").read_text())
    assert set(override) == {"services"}
    assert {name: set(svc) for name, svc in override["services"].items()} == {"postgres": {"image"}, "redis": {"image"}}
    for name, svc in override["services"].items():
        stand_in = svc["image"]
        assert stand_in.startswith("localhost/rnnops-"), stand_in
        # the same major version and Debian release as the image it stands in for
        assert stand_in.rsplit(":", 1)[1] == services[name]["image"].rsplit(":", 1)[1], (
            stand_in,
            services[name]["image"],
        )
        assert name in (REPO / "scripts" / "base_images.sh").read_text()


def test_healthchecks_run_under_podman_compose_too(services):
    """Debian bookworm's podman-compose (1.0.3) turns an exec-form test into a shell string and
    breaks arguments that hold quotes or spaces (the check then always fails): such tests use the
    shell form, which both it and Docker Compose pass on as is."""
    for name, svc in services.items():
        test = (svc.get("healthcheck") or {}).get("test")
        if isinstance(test, list) and test[0] == "CMD":
            assert all(re.fullmatch(r"[\w./:-]+", arg) for arg in test[1:]), f"{name}: use CMD-SHELL for {test}"


def test_published_ports_are_on_loopback_by_default(services):
    for name, svc in services.items():
        for port in svc.get("ports") or []:
            parts = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(port)).split(":")  # variables at their defaults
            assert len(parts) == 3 and parts[0] == "127.0.0.1", f"{name} publishes {port} beyond loopback"


def test_compose_variables_are_documented():
    text = (REPO / "docker-compose.yml").read_text()
    names = set(re.findall(r"\$\{(\w+)(?::?-[^}]*)?\}", text))
    assert {"RNNOPS_PORT", "RNNOPS_BIND", "RNNOPS_MLFLOW_PORT", "POSTGRES_PASSWORD"} <= names
    doc = (REPO / "docs" / "production.md").read_text()
    missing = sorted(n for n in names if f"`{n}`" not in doc)
    assert not missing, f"compose variables not in docs/production.md: {missing}"


def test_ci_builds_the_images_and_runs_the_stack_after_the_unit_suite():
    ci = [
        ln.strip()
        for ln in (REPO / ".ci" / "run").read_text().splitlines()
        if ln.strip() and not ln.lstrip().startswith("#")
    ]
    calls = [ln for ln in ci if ln.startswith(("make ", "time make "))]
    targets = [ln.split("make ", 1)[1].split()[0] for ln in calls]
    # the fast checks first (lint, types, torch-free serving tests: a minute), then the README's test
    # command, then the images and the stack
    assert targets[:2] == ["check", "test"] and "stack-test" in targets, calls
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^images:", makefile, re.M) and re.search(r"^stack-test:.*\bimages\b", makefile, re.M)
    assert "tests/test_stack.py" in (REPO / "scripts" / "stack_test.sh").read_text()


def test_bento_builds_on_the_same_base_as_the_images():
    bento = yaml.safe_load((REPO / "bentofile.yaml").read_text())
    assert bento["docker"] == {"base_image": DEFAULT_BASE}  # python_version/distro would be ignored beside it
