"""deploy/: the Dockerfile, docker-compose.yml and Kubernetes manifests agree with relay itself.

No Docker or cluster is needed: each file is parsed, and every setting, path and port it names
is checked against relay's own settings loader and web app.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import json
import re
import shlex
from pathlib import Path, PurePosixPath
from typing import Any, Callable

import fakeredis
import httpx
import pytest
import redis.asyncio as aioredis
import yaml
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from relay import door_config
from relay import settings as relay_settings
from relay.queue import Queue
from relay.routes_file import parse_routes, read_routes_file
from relay.settings import Settings, load, parse_duration
from relay.slack_api import SlackApi
from relay.watch_events import REPLY_DRAIN
from relay.web import create_app
from relay.worker import READ_BLOCK_MS
from tests.support import free_port, unique_prefix

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
ENV_EXAMPLE = DEPLOY / "relay.env.example"
ROUTES_EXAMPLE = DEPLOY / "routes.example.toml"
#: After the grace period the worker cancels what is left, hands it back and closes its
#: clients; the container must be given this much longer than RELAY_SHUTDOWN_GRACE.
HAND_BACK_MARGIN = 10.0
#: On SIGTERM the watcher finishes the card it is posting (one Slack call), then waits
#: REPLY_DRAIN for the answers it is posting; the container must be given longer than both.
WATCH_STOP = inspect.signature(SlackApi).parameters["timeout"].default + REPLY_DRAIN + HAND_BACK_MARGIN
RELAY_SERVICES = ("web", "worker", "watch")
RELAY_DEPLOYMENTS = ("relay-web", "relay-worker", "relay-watch")


# -- reading the files -------------------------------------------------------------------------

def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined, comments dropped."""
    instructions, pending = [], ""
    for line in (DEPLOY / "Dockerfile").read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        keyword, _, rest = (pending + line).strip().partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    return instructions


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile()
    start = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[start:]


def one(stage: list[tuple[str, str]], keyword: str) -> str:
    [value] = [rest for k, rest in stage if k == keyword]
    return value


def image_command() -> list[str]:
    return list(json.loads(one(final_stage(), "CMD")))


def option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines, as docker's --env-file and `kubectl create secret --from-env-file` read them."""
    values = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"{path.name}: {line!r} is not KEY=VALUE"
            values[key.strip()] = value
    return values


def compose() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text()))


def k8s_documents() -> list[dict[str, Any]]:
    files = sorted((DEPLOY / "k8s").glob("*.yaml"))
    assert files, "no manifests in deploy/k8s"
    return [doc for path in files for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def k8s(kind: str, name: str) -> dict[str, Any]:
    [doc] = [d for d in k8s_documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def pod(deployment: str) -> dict[str, Any]:
    return dict(k8s("Deployment", deployment)["spec"]["template"]["spec"])


def container(deployment: str) -> dict[str, Any]:
    [only] = pod(deployment)["containers"]
    return dict(only)


def deployments() -> list[dict[str, Any]]:
    return [d for d in k8s_documents() if d["kind"] == "Deployment"]


# -- relay as these files configure it -----------------------------------------------------------

def read_compose_mount(service: dict[str, Any]) -> Callable[[str], str]:
    """read_text for relay.settings.load: a container path, through the service's bind mounts."""
    def read(path: str) -> str:
        for volume in service.get("volumes", []):
            source, target, *_ = volume.split(":")
            if target == path:
                return (COMPOSE.parent / source).read_text()
        raise FileNotFoundError(path)
    return read


def compose_settings(name: str) -> Settings:
    service = compose()["services"][name]
    assert service["env_file"] == "relay.env", "compose reads the operator's copy of relay.env.example"
    env = {**env_file(ENV_EXAMPLE), **service.get("environment", {})}
    return load(env, read_text=read_compose_mount(service))


def k8s_environment(deployment: str) -> dict[str, str]:
    """What the pod's environment holds: the Secret (made from relay.env) then the ConfigMaps."""
    env: dict[str, str] = {}
    for source in container(deployment).get("envFrom", []):
        if "secretRef" in source:
            assert source["secretRef"]["name"] == "relay-env"
            env.update(env_file(ENV_EXAMPLE))
        else:
            env.update(k8s("ConfigMap", source["configMapRef"]["name"])["data"])
    env.update({item["name"]: item["value"] for item in container(deployment).get("env", [])})
    return env


def read_k8s_mount(deployment: str) -> Callable[[str], str]:
    volumes = {v["name"]: v for v in pod(deployment).get("volumes", [])}

    def read(path: str) -> str:
        for mount in container(deployment).get("volumeMounts", []):
            inside = PurePosixPath(path)
            if inside.parent == PurePosixPath(mount["mountPath"]) and "configMap" in volumes[mount["name"]]:
                data = k8s("ConfigMap", volumes[mount["name"]]["configMap"]["name"])["data"]
                if inside.name in data:
                    return str(data[inside.name])
        raise FileNotFoundError(path)
    return read


def k8s_settings(deployment: str) -> Settings:
    return load(k8s_environment(deployment), read_text=read_k8s_mount(deployment))


def answer(path: str, settings: Settings, *, redis_up: bool = True) -> int:
    """The status relay's web app answers GET `path` with, Redis up or down."""
    async def ask() -> int:
        client = (fakeredis.FakeAsyncRedis(decode_responses=True) if redis_up else
                  aioredis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=1,
                                 retry=Retry(NoBackoff(), 0)))
        try:
            app = create_app(settings, Queue(client, prefix=unique_prefix()))
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://relay") as http:
                return (await http.get(path)).status_code
        finally:
            await client.aclose()
    return asyncio.run(ask())


def names_settings_reads() -> frozenset[str]:
    """Every variable relay.settings.load reads, found in its source rather than listed twice:
    the RELAY_* names it knows, the default destination's, and each `"NAME" in env` / `env["NAME"]`."""
    tree = ast.parse(Path(relay_settings.__file__).read_text())
    found = set(relay_settings.KNOWN_RELAY_NAMES) | set(relay_settings._ENV_DESTINATION)
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and isinstance(node.left, ast.Constant) \
                and isinstance(node.ops[0], ast.In) and isinstance(node.comparators[0], ast.Name) \
                and node.comparators[0].id == "env":
            found.add(node.left.value)
        elif isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id == "env" \
                and isinstance(node.slice, ast.Constant):
            found.add(node.slice.value)
    found |= set(door_config.VARIABLES)  # the Linear, GitLab and Discord doors' (relay/door_config.py)
    return frozenset(name for name in found if isinstance(name, str))


# -- the Dockerfile ----------------------------------------------------------------------------

def test_every_stage_builds_on_a_slim_python_of_at_least_3_11() -> None:
    bases = [rest.split()[0] for keyword, rest in dockerfile() if keyword == "FROM"]
    assert bases
    for base in bases:
        match = re.fullmatch(r"python:3\.(\d+)-slim(-\w+)?", base)
        assert match and int(match.group(1)) >= 11, base


def test_image_runs_as_a_numeric_non_root_user_set_before_its_command() -> None:
    stage = final_stage()
    keywords = [keyword for keyword, _ in stage]
    users = [i for i, keyword in enumerate(keywords) if keyword == "USER"]
    assert users and users[-1] < keywords.index("CMD")
    assert "ENTRYPOINT" not in keywords or users[-1] < keywords.index("ENTRYPOINT")
    user = stage[users[-1]][1].split(":")[0]
    # Numeric, so that Kubernetes' runAsNonRoot can check it.
    assert user.isdigit() and int(user) != 0


def test_image_bakes_in_no_setting_and_copies_in_only_the_package() -> None:
    known = names_settings_reads()
    for keyword, rest in dockerfile():
        if keyword in ("ENV", "ARG"):
            for word in shlex.split(rest):
                name = word.split("=")[0]
                assert name not in known and not re.search(r"SECRET|TOKEN|PASSWORD|KEY", name), word
        if keyword in ("COPY", "ADD") and not rest.startswith("--from="):
            *sources, _target = rest.split()
            assert set(sources) <= {"pyproject.toml", "README.md", "relay"}, rest


def test_image_serves_the_web_on_the_port_it_exposes() -> None:
    command = image_command()
    assert command[:2] == ["relay", "serve"]
    assert option(command, "--host") == "0.0.0.0"
    port = option(command, "--port")
    assert port in one(final_stage(), "EXPOSE").split()


def test_image_healthcheck_asks_the_webs_liveness_route() -> None:
    check = one(final_stage(), "HEALTHCHECK")
    probe = json.loads(check[check.index("CMD") + 3:])
    match = re.search(r"http://127\.0\.0\.1:(\d+)(/[\w/-]*)", " ".join(probe))
    assert match, probe
    port, path = match.groups()
    assert port == option(image_command(), "--port")
    assert answer(path, k8s_settings("relay-web"), redis_up=False) == 200


def dockerignored(path: str) -> bool:
    """Docker's .dockerignore matching (`**` spans directories; a match excludes what is below it)."""
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]

    def regex(pattern: str) -> str:
        parts = re.split(r"(\*\*/|\*\*|\*|\?)", pattern.strip("/"))
        table = {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}
        return "".join(table.get(part, re.escape(part)) for part in parts)

    pieces = path.split("/")
    prefixes = ["/".join(pieces[:n]) for n in range(1, len(pieces) + 1)]
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        if any(re.fullmatch(regex(pattern.lstrip("!")), prefix) for prefix in prefixes):
            ignored = not negated
    return ignored


@pytest.mark.parametrize("path", ["deploy/relay.env", ".env", ".venv/bin/python", ".git/config",
                                  "relay/__pycache__/cli.cpython-311.pyc", "tests/conftest.py"])
def test_build_context_leaves_out_env_files_and_local_state(path: str) -> None:
    assert dockerignored(path)


@pytest.mark.parametrize("path", ["pyproject.toml", "README.md", "relay/cli/__init__.py", "relay/lua/enqueue.lua",
                                  "deploy/Dockerfile"])
def test_build_context_keeps_what_the_image_is_built_from(path: str) -> None:
    assert not dockerignored(path)


# -- docker-compose.yml ------------------------------------------------------------------------

def redis_options(command: list[str]) -> dict[str, str]:
    assert command[0] == "redis-server"
    return {command[i].removeprefix("--"): command[i + 1] for i in range(1, len(command), 2)}


def test_compose_redis_7_keeps_an_append_only_file_on_a_volume_and_never_evicts() -> None:
    data = compose()
    redis = data["services"]["redis"]
    assert re.fullmatch(r"redis:7(\.\d+)*(-[\w.]+)?", redis["image"])
    options = redis_options(redis["command"])
    assert options["appendonly"] == "yes"
    assert options["appendfsync"] in ("everysec", "always")
    assert options["maxmemory-policy"] == "noeviction"
    [volume] = [v for v in redis["volumes"] if v.split(":")[1] == "/data"]
    assert volume.split(":")[0] in data["volumes"]  # a named volume, not the container's layer


def test_compose_web_worker_and_watch_run_one_image_built_from_the_dockerfile() -> None:
    web, worker, watch = (compose()["services"][name] for name in RELAY_SERVICES)
    assert web["image"] == worker["image"] == watch["image"] == container("relay-web")["image"]
    for service in (web, worker, watch):
        build = service["build"]
        assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
    assert web["command"] == image_command()
    assert worker["command"] == ["relay", "worker"]
    assert watch["command"] == ["relay", "watch"]


def test_compose_processes_that_serve_no_web_do_not_run_the_images_web_healthcheck() -> None:
    services = compose()["services"]
    assert "healthcheck" not in services["web"]  # the image's HEALTHCHECK
    for name in ("worker", "watch"):
        assert services[name]["healthcheck"] == {"disable": True}
        assert "ports" not in services[name]


def test_compose_publishes_the_port_the_web_listens_on() -> None:
    web = compose()["services"]["web"]
    assert [p.split(":")[-1] for p in web["ports"]] == [option(web["command"], "--port")]


def test_compose_worker_is_given_longer_to_stop_than_its_shutdown_grace() -> None:
    worker = compose()["services"]["worker"]
    grace = compose_settings("worker").shutdown_grace
    assert parse_duration("stop_grace_period", worker["stop_grace_period"]) >= \
        grace + READ_BLOCK_MS / 1000 + HAND_BACK_MARGIN


def test_compose_watch_is_given_longer_to_stop_than_its_last_card_and_answers() -> None:
    watch = compose()["services"]["watch"]
    assert parse_duration("stop_grace_period", watch["stop_grace_period"]) >= WATCH_STOP


def test_compose_settings_load_with_the_mounted_routes_file() -> None:
    expected = parse_routes(read_routes_file(str(ROUTES_EXAMPLE), lambda p: Path(p).read_text()))
    for name in RELAY_SERVICES:
        settings = compose_settings(name)
        assert {route.name: route for route in settings.routes} == expected
        assert settings.redis_url == "redis://redis:6379/0"


def watch_would_start(settings: Settings, env_names: set[str]) -> None:
    """What `relay watch` refuses to start without: Redis, a route that opts in, and LETTA_API_KEY
    (empty in relay.env.example, so its name must be there for the operator to fill in)."""
    assert settings.redis_url
    assert [route.name for route in settings.routes if route.watched]
    assert "LETTA_API_KEY" in env_names


def test_compose_watch_has_what_relay_watch_refuses_to_start_without() -> None:
    watch = compose()["services"]["watch"]
    watch_would_start(compose_settings("watch"), set(env_file(ENV_EXAMPLE)) | set(watch.get("environment", {})))


def test_compose_relay_containers_are_read_only_without_new_privileges() -> None:
    for name in RELAY_SERVICES:
        service = compose()["services"][name]
        assert "user" not in service  # the image's non-root user
        assert service["read_only"] is True
        assert "no-new-privileges:true" in service["security_opt"]


# -- Kubernetes --------------------------------------------------------------------------------

def test_every_k8s_document_is_a_named_object_of_a_known_kind() -> None:
    seen = set()
    for doc in k8s_documents():
        assert (doc["apiVersion"], doc["kind"]) in {("v1", "ConfigMap"), ("v1", "Service"), ("apps/v1", "Deployment")}
        key = (doc["kind"], doc["metadata"]["name"])
        assert key not in seen
        seen.add(key)
    assert {("Deployment", name) for name in RELAY_DEPLOYMENTS} | {("Service", "relay-web")} <= seen


def test_k8s_deployments_select_their_own_pods() -> None:
    for deployment in deployments():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    selectors = [k8s("Deployment", n)["spec"]["selector"]["matchLabels"] for n in RELAY_DEPLOYMENTS]
    assert len({tuple(sorted(s.items())) for s in selectors}) == len(RELAY_DEPLOYMENTS)


def test_k8s_service_sends_to_the_web_pods_on_the_port_relay_serve_listens_on() -> None:
    service = k8s("Service", "relay-web")
    labels = k8s("Deployment", "relay-web")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    ports = {p["name"]: p["containerPort"] for p in container("relay-web")["ports"]}
    [target] = [p["targetPort"] for p in service["spec"]["ports"]]
    assert str(ports[target]) == option(container("relay-web")["command"], "--port")


def probe_path(kind: str) -> str:
    web = container("relay-web")
    probe = web[kind]["httpGet"]
    assert probe["port"] in {p["name"] for p in web["ports"]}
    return str(probe["path"])


def test_k8s_web_readiness_asks_a_route_that_fails_while_redis_is_down() -> None:
    settings = k8s_settings("relay-web")
    path = probe_path("readinessProbe")
    assert answer(path, settings) == 200
    assert answer(path, settings, redis_up=False) == 503


def test_k8s_web_liveness_asks_a_route_that_answers_while_redis_is_down() -> None:
    path = probe_path("livenessProbe")
    assert answer(path, k8s_settings("relay-web"), redis_up=False) == 200


def test_k8s_web_worker_and_watch_run_their_commands_from_one_image() -> None:
    web, worker, watch = (container(name) for name in RELAY_DEPLOYMENTS)
    assert web["image"] == worker["image"] == watch["image"]
    assert web["command"] == image_command()
    assert worker["command"] == ["relay", "worker"]
    assert watch["command"] == ["relay", "watch"]


def test_k8s_watch_runs_with_the_workers_security_and_settings() -> None:
    worker, watch = pod("relay-worker"), pod("relay-watch")
    assert watch["securityContext"] == worker["securityContext"]
    assert watch["automountServiceAccountToken"] is False
    assert container("relay-watch")["securityContext"] == container("relay-worker")["securityContext"]
    assert container("relay-watch")["envFrom"] == container("relay-worker")["envFrom"]
    assert container("relay-watch")["volumeMounts"] == container("relay-worker")["volumeMounts"]
    assert watch["volumes"] == worker["volumes"]


def test_k8s_watch_is_given_longer_to_stop_than_its_last_card_and_answers() -> None:
    assert pod("relay-watch")["terminationGracePeriodSeconds"] >= WATCH_STOP


def test_k8s_watch_has_what_relay_watch_refuses_to_start_without() -> None:
    watch_would_start(k8s_settings("relay-watch"), set(k8s_environment("relay-watch")))


def test_k8s_pods_run_as_the_images_non_root_user_without_privilege_escalation() -> None:
    uid = int(one(final_stage(), "USER").split(":")[0])
    for deployment in deployments():
        spec = deployment["spec"]["template"]["spec"]
        for c in spec["containers"]:
            context = {**spec.get("securityContext", {}), **c.get("securityContext", {})}
            assert context["runAsNonRoot"] is True
            assert context.get("runAsUser", uid) == uid
            assert context["allowPrivilegeEscalation"] is False


def test_k8s_worker_is_given_longer_to_stop_than_its_shutdown_grace() -> None:
    grace = k8s_settings("relay-worker").shutdown_grace
    assert pod("relay-worker")["terminationGracePeriodSeconds"] >= grace + READ_BLOCK_MS / 1000 + HAND_BACK_MARGIN


def test_k8s_settings_load_with_the_mounted_routes_file_which_matches_the_example() -> None:
    expected = parse_routes(read_routes_file(str(ROUTES_EXAMPLE), lambda p: Path(p).read_text()))
    for deployment in RELAY_DEPLOYMENTS:
        assert {route.name: route for route in k8s_settings(deployment).routes} == expected


def test_every_variable_the_deploy_files_set_is_one_relay_reads() -> None:
    known = names_settings_reads()
    assert {"REDIS_URL", "LETTA_API_KEY", "LETTA_AGENT_ID", "RELAY_HOOK_SECRET"} <= known  # the scan works
    used = set(env_file(ENV_EXAMPLE))
    for name in RELAY_SERVICES:
        used |= set(compose()["services"][name].get("environment", {}))
    for deployment in RELAY_DEPLOYMENTS:
        used |= set(k8s_environment(deployment))
    assert sorted(used - known) == []


def test_k8s_scrape_annotations_name_a_port_the_pod_declares() -> None:
    for deployment in deployments():
        template = deployment["spec"]["template"]
        annotations = template["metadata"].get("annotations", {})
        if annotations.get("prometheus.io/scrape") == "true":
            ports = {p["containerPort"] for c in template["spec"]["containers"] for p in c.get("ports", [])}
            assert int(annotations["prometheus.io/port"]) in ports


def test_k8s_web_scrape_annotation_asks_the_web_port_for_a_route_it_serves() -> None:
    pytest.importorskip("relay.metrics", reason="the web serves /metrics once relay.metrics exists")
    annotations = k8s("Deployment", "relay-web")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == option(container("relay-web")["command"], "--port")
    assert answer(annotations["prometheus.io/path"], k8s_settings("relay-web")) == 200


def test_env_file_reader_matches_the_examples_comment_convention() -> None:
    # relay.env.example keeps comments on their own lines: an inline "# …" would end up in the value.
    assert all("#" not in value for value in env_file(ENV_EXAMPLE).values())

