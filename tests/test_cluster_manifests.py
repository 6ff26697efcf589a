"""The manifests in cluster/ work as shipped: they parse, every gahb-scale command in them is one the
CLI accepts on a spec that exists and loads, and every such command puts its results where every
node reaches them (an object-store URI, or a volume that the head and every worker group mount).

Commands are found in string values of the YAML (a RayJob's entrypoint, launcher commands) and in
shell lines of comments: a comment line indented by at least two spaces after its '#', continued
by a trailing backslash on the next comment line. A command inside a quoted argument
(`bash -c '... gahb-scale run ...'`) is found too. `$VAR` in a command must be defined (with a
value) on the head container of the manifest's Ray cluster.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pytest
import yaml

import gahb_scale
from gahb_scale.cli import build_parser
from gahb_scale.design.spec_file import load_spec
from gahb_scale.errors import UserInputError

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
MANIFESTS = sorted(p for p in CLUSTER.rglob("*") if p.suffix in (".yaml", ".yml"))

SUBCOMMANDS = ("run", "status", "report", "query")
MENTION = re.compile(r"gahb-scale\s+(?:%s)\b" % "|".join(SUBCOMMANDS))
ENV_REF = re.compile(r"\$(?:\{(\w+)\}|(\w+))")
NODE_LOCAL_VOLUMES = ("emptyDir", "hostPath", "ephemeral")  # one node's disk, not shared


@dataclass
class Cluster:
    """What a manifest says about its Ray cluster: the head's env values and each pod's mounts."""
    head_env: dict[str, str] = field(default_factory=dict)
    # per pod (head first): mountPath -> (volume source, read-only)
    mounts: list[dict[str, tuple[dict, bool]]] = field(default_factory=list)
    claims: dict[str, dict] = field(default_factory=dict)  # PersistentVolumeClaims defined in the file


@dataclass
class Command:
    where: str
    argv: list[str]


@dataclass
class Findings:
    commands: list[Command]
    problems: list[str]


def _pod_mounts(pod: dict) -> dict[str, tuple[dict, bool]]:
    container = (pod.get("containers") or [{}])[0]  # KubeRay's Ray container is the first one
    volumes = {v["name"]: {k: x for k, x in v.items() if k != "name"} for v in pod.get("volumes") or []}
    return {m["mountPath"].rstrip("/") or "/": (volumes.get(m["name"], {}), bool(m.get("readOnly")))
            for m in container.get("volumeMounts") or []}


def _cluster(docs: list) -> Cluster:
    cluster = Cluster()
    for doc in docs:
        if isinstance(doc, dict) and doc.get("kind") == "PersistentVolumeClaim":
            cluster.claims[doc["metadata"]["name"]] = doc.get("spec") or {}
    for doc in docs:
        if not isinstance(doc, dict) or doc.get("kind") not in ("RayJob", "RayCluster"):
            continue
        spec = doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]
        head = spec["headGroupSpec"]["template"]["spec"]
        workers = [g["template"]["spec"] for g in spec.get("workerGroupSpecs") or []]
        cluster.head_env = {e["name"]: str(e["value"]) for e in head["containers"][0].get("env") or []
                            if "value" in e}
        cluster.mounts = [_pod_mounts(pod) for pod in [head, *workers]]
        break
    return cluster


def _strings(node):
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)


def _comment_commands(text: str):
    """(line number, shell text) of every command line in comments, continuations joined."""
    pending, start = None, 0
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        body = stripped[1:] if stripped.startswith("#") else None
        if pending is not None:
            if body is None:
                yield start, pending
                pending = None
            else:
                pending += " " + body.strip()
                if not pending.endswith("\\"):
                    yield start, pending
                    pending = None
                else:
                    pending = pending[:-1]
                continue
        if body is not None and body.startswith("  ") and body.strip():
            command = body.strip()
            if command.endswith("\\"):
                pending, start = command[:-1], number
            else:
                yield number, command
    if pending is not None:
        yield start, pending


def _gahb_commands(text: str) -> list[list[str]]:
    """The argument lists (after `gahb-scale`) of every gahb-scale command in a shell text (one
    command line per line; a trailing backslash continues it)."""
    lines = text.replace("\\\n", " ").splitlines()
    if len(lines) != 1:
        return [argv for line in lines for argv in _gahb_commands(line)]
    text = lines[0]
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    tokens = list(lexer)  # ValueError on unbalanced quotes
    found, segment = [], []
    for token in [*tokens, ";"]:
        if token and set(token) <= set("();<>|&"):  # a shell operator ends a simple command
            for i, word in enumerate(segment):
                if (word == "gahb-scale" or word.endswith("/gahb-scale")) and i + 1 < len(segment):
                    found.append(segment[i + 1:])
                    break
            segment = []
        else:
            segment.append(token)
    for token in tokens:  # a command inside a quoted argument, e.g. bash -c '...'
        if MENTION.search(token) and token.strip() != text.strip():
            found.extend(_gahb_commands(token))
    return found


def _resolve(word: str, env: dict[str, str]) -> str:
    def value(match):
        name = match.group(1) or match.group(2)
        if name not in env:
            raise KeyError(name)
        return env[name]
    return ENV_REF.sub(value, word)


def results_problem(location: str | None, cluster: Cluster) -> str | None:
    """Why `location` is not reachable from every node, or None when it is."""
    if not location:
        return "no results location"
    path = location
    if "://" in location:
        scheme = location.split("://", 1)[0].lower()
        if not re.fullmatch(r"[a-z][a-z0-9+.-]*", scheme):
            return f"results location {location!r} has no valid URI scheme"
        if scheme not in ("file", "local"):
            return None  # object storage: every node reaches it
        path = location.split("://", 1)[1]
    if not PurePosixPath(path).is_absolute():
        return f"results location {location!r} is a relative path: node-local (each pod has its own)"
    if not cluster.mounts:
        return f"results location {location!r} is a path, and this manifest mounts no shared volume: node-local"
    for mount_path, (source, _) in cluster.mounts[0].items():
        if not PurePosixPath(path).is_relative_to(mount_path):
            continue
        kinds = [k for k in source if k in NODE_LOCAL_VOLUMES]
        if kinds:
            return f"results location {location!r} is on a {kinds[0]} volume at {mount_path}: node-local"
        claim = (source.get("persistentVolumeClaim") or {}).get("claimName")
        modes = (cluster.claims.get(claim) or {}).get("accessModes")
        if modes is not None and "ReadWriteMany" not in modes:
            return f"results location {location!r}: claim {claim!r} is {modes}, not ReadWriteMany"
        for pod in cluster.mounts:
            mounted = pod.get(mount_path)
            if mounted is None or mounted[0] != source:
                return (f"results location {location!r} is on the volume at {mount_path}, which not every worker "
                        f"group mounts (head and workers must mount the same volume there)")
            if mounted[1]:
                return f"results location {location!r} is on the volume at {mount_path}, mounted read-only"
        return None
    return f"results location {location!r} is under no volume that the head mounts: node-local"


def check_command(argv: list[str], cluster: Cluster) -> list[str]:
    """Problems of one gahb-scale command line (its words after `gahb-scale`)."""
    shown = "gahb-scale " + shlex.join(argv)
    try:
        argv = [_resolve(word, cluster.head_env) for word in argv]
    except KeyError as exc:
        return [f"{shown}: ${exc.args[0]} is not defined (with a value) on the head container"]
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            args = build_parser().parse_args(argv)
    except SystemExit:
        return [f"{shown}: the CLI rejects it: {stderr.getvalue().strip().splitlines()[-1:]}"]
    results = getattr(args, "results", None)
    if args.command in ("run", "status", "report"):
        spec_file = REPO / args.spec
        if PurePosixPath(args.spec).is_absolute() or not spec_file.is_file():
            return [f"{shown}: spec {args.spec} is not a file of the repository (paths are relative to the working "
                    f"directory: the repository, or the image's copy of it)"]
        try:
            spec = load_spec(spec_file, results)
        except UserInputError as exc:
            return [f"{shown}: the spec does not load: {exc}"]
        results = results or spec.storage.results_dir
    problem = results_problem(results, cluster)
    return [f"{shown}: {problem}"] if problem else []


def check_manifest(text: str) -> Findings:
    """Every gahb-scale command of a manifest's text, and every problem with them."""
    docs = [d for d in yaml.safe_load_all(text) if d is not None]
    cluster = _cluster(docs)
    sources = [("a YAML value", s) for d in docs for s in _strings(d)]
    sources += [(f"comment line {n}", s) for n, s in _comment_commands(text)]
    commands, problems = [], []
    for where, source in sources:
        if not MENTION.search(source):
            continue
        try:
            found = _gahb_commands(source)
        except ValueError as exc:
            problems.append(f"{where}: not a shell command line ({exc}): {source}")
            continue
        for argv in found:
            commands.append(Command(where, argv))
            problems += [f"{where}: {p}" for p in check_command(argv, cluster)]
    return Findings(commands, problems)


def _docs(path: Path) -> list:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _defines_a_ray_cluster(docs: list) -> bool:
    return any(d.get("kind") in ("RayJob", "RayCluster") or "head_node_type" in d for d in docs)


# --------------------------------------------------------------------------------------------
# the shipped manifests


def test_cluster_folder_holds_the_manifests():
    names = {p.name for p in MANIFESTS}
    assert {"kuberay-rayjob.yaml", "kuberay-raycluster.yaml", "ray-cluster.yaml"} <= names


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_parses(path):
    docs = _docs(path)
    assert docs and all(isinstance(d, dict) for d in docs)


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_every_command_runs_a_real_spec_with_results_on_shared_storage(path):
    findings = check_manifest(path.read_text())
    assert findings.problems == []
    if _defines_a_ray_cluster(_docs(path)):  # each cluster manifest shows how a study runs on it
        assert any(c.argv[0] == "run" for c in findings.commands), f"{path.name}: no `gahb-scale run` command"


def test_rayjob_entrypoint_is_one_gahb_scale_run_with_remote_results():
    job = next(d for d in _docs(CLUSTER / "kuberay-rayjob.yaml") if d["kind"] == "RayJob")
    commands = _gahb_commands(job["spec"]["entrypoint"])
    assert len(commands) == 1 and commands[0][0] == "run"
    args = build_parser().parse_args(commands[0])
    assert args.address == "auto" and "://" in args.results


def _head_containers():
    for name in ("kuberay-rayjob.yaml", "kuberay-raycluster.yaml"):
        for doc in _docs(CLUSTER / name):
            if doc["kind"] in ("RayJob", "RayCluster"):
                spec = doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]
                yield name, spec["headGroupSpec"]["template"]["spec"]["containers"][0]


HEADS = list(_head_containers())
WORKERS = {name: [group["template"]["spec"]["containers"][0]
                  for doc in _docs(CLUSTER / name) if doc["kind"] in ("RayJob", "RayCluster")
                  for group in (doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"])
                  ["workerGroupSpecs"]]
           for name, _ in HEADS}


@pytest.mark.parametrize("name,head", HEADS, ids=[name for name, _ in HEADS])
def test_kuberay_head_gets_credentials_from_a_secret_and_the_tracking_uri(name, head):
    """Every pod reads the object store: its keys come from a Secret on the head and on every worker
    group. The driver runs on the head: MLFLOW_TRACKING_URI
    from the head's env or a ConfigMap that one of the manifests defines with that key."""
    sources = head.get("envFrom") or []
    assert any("secretRef" in s for s in sources), f"{name}: no Secret for the AWS_* variables on the head"
    assert all(any("secretRef" in s for s in worker.get("envFrom") or []) for worker in WORKERS[name]), \
        f"{name}: a worker group without the Secret (the driver hands no credentials on)"
    if any(e["name"] == "MLFLOW_TRACKING_URI" for e in head.get("env") or []):
        return
    maps = {d["metadata"]["name"]: d.get("data") or {}
            for path in MANIFESTS for d in _docs(path) if d.get("kind") == "ConfigMap"}
    refs = [s["configMapRef"]["name"] for s in sources if "configMapRef" in s]
    assert any("MLFLOW_TRACKING_URI" in maps.get(ref, {}) for ref in refs), \
        f"{name}: MLFLOW_TRACKING_URI reaches the head neither from env nor from a ConfigMap in cluster/"


def test_images_are_tagged_with_the_package_version():
    tags = []
    for path in [*MANIFESTS, CLUSTER / "Dockerfile", CLUSTER.parent / "docs" / "cluster.md"]:
        tags += [(path.name, tag) for tag in re.findall(r"/gahb-scale:([\w.\-]+)", path.read_text())]
    assert tags
    assert [t for t in tags if t[1] != gahb_scale.__version__] == []


def test_documented_cluster_commands_are_checked_the_same_way():
    """The shell blocks of docs/cluster.md: what the manifests show, the docs must not contradict."""
    section = (REPO / "docs" / "cluster.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    commands = [argv for block in blocks for argv in _gahb_commands(block)]
    assert {argv[0] for argv in commands} >= {"run", "status", "query", "report"}
    assert [p for argv in commands for p in check_command(argv, Cluster())] == []


def test_image_holds_the_specs_where_a_rayjob_driver_starts():
    """A RayJob uploads no working directory: its `studies/...` resolves against the image's WORKDIR."""
    text = (CLUSTER / "Dockerfile").read_text()
    assert re.search(r"^WORKDIR\s+/\S+", text, re.M)
    assert re.search(r"^COPY\b.*\sstudies\s+\./studies/?\s*$", text, re.M)


# --------------------------------------------------------------------------------------------
# the check itself catches what it must


def test_check_flags_the_shipped_rayjob_without_its_results():
    text = (CLUSTER / "kuberay-rayjob.yaml").read_text()
    findings = check_manifest(re.sub(r"--results \S+", "", text))
    assert findings.problems and all("relative path" in p for p in findings.problems)


RAYCLUSTER = """\
# Submit:
#   ray job submit --address http://localhost:8265 --working-dir . -- \\
#       {comment}
apiVersion: ray.io/v1
kind: RayCluster
metadata: {{name: t}}
spec:
  headGroupSpec:
    template:
      spec:
        containers:
          - name: ray-head
            image: x
            env: [{{name: GAHB_RESULTS, value: "s3://bucket/prefix"}}]
            volumeMounts: {head_mounts}
        volumes: {volumes}
  workerGroupSpecs:
    - groupName: w
      template:
        spec:
          containers:
            - name: ray-worker
              image: x
              volumeMounts: {worker_mounts}
          volumes: {volumes}
"""
SHARED = "[{name: shared, persistentVolumeClaim: {claimName: results}}]"
SCRATCH = "[{name: shared, emptyDir: {}}]"
MOUNTED = "[{name: shared, mountPath: /shared}]"
RUN = "gahb-scale run studies/smoke.yaml --address auto"


def manifest(comment, head_mounts="[]", worker_mounts="[]", volumes="[]"):
    return RAYCLUSTER.format(comment=comment, head_mounts=head_mounts, worker_mounts=worker_mounts, volumes=volumes)


@pytest.mark.parametrize("text,expected", [
    (manifest(f"{RUN} --results results/smoke"), "relative path"),
    (manifest(RUN), "relative path"),  # the spec's own results_dir, results/smoke
    (manifest(f"{RUN} --results /shared/results"), "under no volume"),
    (manifest(f"{RUN} --results /shared/results", MOUNTED, "[]", SHARED), "not every worker"),
    (manifest(f"{RUN} --results /shared/results", MOUNTED, MOUNTED, SCRATCH), "emptyDir"),
    (manifest(f"{RUN} --results file:///elsewhere", MOUNTED, MOUNTED, SHARED), "under no volume"),
    (manifest(f"{RUN} --results $UNDEFINED"), "$UNDEFINED is not defined"),
    (manifest("gahb-scale run studies/no_such_study.yaml --results s3://b/p"), "not a file of the repository"),
    (manifest(f"{RUN} --resutls s3://b/p"), "the CLI rejects it"),
    (manifest("bash -c 'gahb-scale run studies/smoke.yaml --results results/x'"), "relative path"),
], ids=["relative", "spec-default", "no-volume", "head-only-volume", "emptydir", "outside-volume",
        "undefined-variable", "missing-spec", "bad-option", "inside-bash-c"])
def test_check_flags_results_that_are_not_shared(text, expected):
    findings = check_manifest(text)
    assert len(findings.commands) == 1
    assert len(findings.problems) == 1 and expected in findings.problems[0]


@pytest.mark.parametrize("text", [
    manifest(f"{RUN} --results s3://bucket/prefix"),
    manifest(f"{RUN} --results 's3://bucket/prefix?endpoint_override=minio:9000&scheme=http'"),
    manifest(f"{RUN} --results $GAHB_RESULTS"),
    manifest(f"{RUN} --results ${{GAHB_RESULTS}}/sub"),
    manifest(f"{RUN} --results /shared/results", MOUNTED, MOUNTED, SHARED),
], ids=["s3", "s3-query", "head-variable", "head-variable-braces", "shared-volume"])
def test_check_accepts_results_every_node_reaches(text):
    findings = check_manifest(text)
    assert len(findings.commands) == 1 and findings.problems == []

