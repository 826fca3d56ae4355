"""deploy/k8s, the production deployment: the files derived from the code are current, the whole
renders with `kubectl kustomize`, and every object it renders is valid against its schema,
offline: Kubernetes' own (kubernetes-validate bundles them) and Strimzi's custom resources
(their CRDs' openAPIV3Schema, in strimzi/, with their provenance). What the manifests say is
checked against the code too: topics and ACLs as the local platform makes them."""

import copy
import importlib.util
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import jsonschema
import kubernetes_validate
import pytest
import yaml

from deploy import kubernetes
from deploy.acl import OPERATOR, bindings
from deploy.topology import platform_topics
from services.common.messaging.consumer import FLUSH_SECONDS
from services.common.messaging.outbox import ANSWER_WAIT_SECONDS, ROUND_WAIT_SECONDS
from services.common.runtime.app import build_app
from services.common.runtime.settings import ServiceSettings, check_environment
from services.passerelle.settings import PasserelleSettings
from services.specs import specs

K8S_VERSION = "1.33.0"
ROOT = Path(__file__).resolve().parents[3]
PEAK_MEMORY_MIB = {"ressources": 300, "passerelle": 390}
"""A service's measured peak memory, where above ANY_PEAK_MEMORY_MIB: ressources (170 MB) with its
simulation workers (13 + 66 + 66 MB, `./dev bench simulations --distinct`); the passerelle judging
eight 16 MiB batches at once (README, Known limits)."""
ANY_PEAK_MEMORY_MIB = 170
"""The others' peak RSS at national scale (`./dev bench national`): 150–170 MB each."""


def _strict(schema: dict) -> dict:
    """The schema refusing unknown fields, as the API server's strict field validation does (a
    CRD's structural schema prunes them silently otherwise): every object that lists its
    properties, unless it keeps unknown fields."""
    out = {k: _strict(v) if isinstance(v, dict) else v for k, v in schema.items()}
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            out[key] = _strict(schema[key])
    if "properties" in schema:
        out["properties"] = {k: _strict(v) for k, v in schema["properties"].items()}
        if "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    for key in ("oneOf", "anyOf", "allOf"):
        if key in schema:
            out[key] = [_strict(s) for s in schema[key]]
    return out


STRIMZI = {p.stem: _strict(json.loads(p.read_text())) for p in (Path(__file__).parent / "strimzi").glob("*.json")}
PROMETHEUS = {p.stem: _strict(json.loads(p.read_text())) for p in (Path(__file__).parent / "prometheus").glob("*.json")}


@pytest.fixture(scope="module")
def rendered() -> list[dict]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl renders the Kustomize tree (installed on the development machines)"
    out = subprocess.run([kubectl, "kustomize", str(kubernetes.K8S)], capture_output=True, text=True, check=True)
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


@pytest.fixture(scope="module")
def monitoring() -> list[dict]:
    out = subprocess.run(
        [shutil.which("kubectl") or "kubectl", "kustomize", str(kubernetes.K8S / "monitoring")],
        capture_output=True,
        text=True,
        check=True,
    )
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def test_the_monitoring_is_valid_against_the_prometheus_operator_s_schemas(monitoring):
    assert {doc["kind"] for doc in monitoring} == {"ServiceMonitor", "PrometheusRule"}
    for doc in monitoring:
        jsonschema.validate(doc, PROMETHEUS[doc["kind"]], cls=jsonschema.Draft4Validator)
    broken = json.loads(json.dumps(next(doc for doc in monitoring if doc["kind"] == "ServiceMonitor")))
    broken["spec"]["endpoint"] = broken["spec"].pop("endpoints")  # misspelt: refused
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, PROMETHEUS[broken["kind"]], cls=jsonschema.Draft4Validator)


def test_the_service_monitor_scrapes_each_service_s_metrics_port(monitoring, rendered):
    """Its selector takes each service's Service and nothing else, on a port the Service has."""
    [monitor] = [doc for doc in monitoring if doc["kind"] == "ServiceMonitor"]
    [expression] = monitor["spec"]["selector"]["matchExpressions"]
    services = [doc for doc in rendered if doc["kind"] == "Service"]
    selected = [s for s in services if s["metadata"]["labels"].get(expression["key"]) in expression["values"]]
    assert {s["metadata"]["name"] for s in selected} == {spec.name for spec in specs()}
    [endpoint] = monitor["spec"]["endpoints"]
    for service in selected:
        assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"


def test_every_alert_names_metrics_the_services_export(monitoring):
    """A misspelt metric in a rule never fires, silently: each `feo_` name is one the services
    define (a counter's with its `_total`), each service of `up{job=…}` one of the platform's."""
    [rule_set] = [doc for doc in monitoring if doc["kind"] == "PrometheusRule"]
    rules = [rule for group in rule_set["spec"]["groups"] for rule in group["rules"]]
    source = "\n".join(p.read_text() for p in Path(kubernetes.K8S.parent.parent, "services").rglob("*.py"))
    defined = set(re.findall(r'"(feo_[a-z_]+)"', source))
    counters = set(re.findall(r'Counter\(\s*"(feo_[a-z_]+)"', source))
    exported = (defined - counters) | {f"{name}_total" for name in counters}  # a counter only so
    for rule in rules:
        for name in re.findall(r"\bfeo_[a-z_]+", rule["expr"]):
            assert name in exported, f"{rule['alert']}: {name}"
        for job in re.findall(r'(?<![a-z_])job="([^"]+)"', rule["expr"]):
            assert job in {spec.name for spec in specs()}, rule["alert"]
    assert {rule["alert"] for rule in rules} >= {"FeoServiceDown", "FeoDatabaseUnreachable", "FeoBatchesFailing"}
    # Alertmanager knows an alert by its labels: rules of one name told apart by theirs (absent()
    # keeps none of its selector's: the four FeoServiceDown were one alert, flapping).
    named = [(rule["alert"], tuple(sorted(rule["labels"].items()))) for rule in rules]
    assert len(set(named)) == len(named)


def test_the_generated_files_are_current():
    for path, text in kubernetes.generated().items():
        assert path.read_text() == text, f"{path} is out of date: run python -m deploy.kubernetes"


def test_every_rendered_object_is_valid_against_its_schema(rendered):
    kinds = {doc["kind"] for doc in rendered}
    assert {
        *("Kafka", "KafkaNodePool", "KafkaTopic", "KafkaUser"),
        *("Deployment", "Service", "PodDisruptionBudget", "ConfigMap", "PersistentVolumeClaim"),
    } <= kinds
    for doc in rendered:
        try:
            if doc["apiVersion"].startswith("kafka.strimzi.io/"):
                jsonschema.validate(doc, STRIMZI[doc["kind"]], cls=jsonschema.Draft4Validator)
            else:
                kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except (jsonschema.ValidationError, kubernetes_validate.ValidationError) as e:
            pytest.fail(f"{doc['kind']} {doc['metadata']['name']}: {e}")


def test_a_wrong_field_is_refused_by_the_validation(rendered):
    """The schemas refuse what they should: a misspelt Strimzi field, a replica count that is no
    number. (What no schema checks, a probe on no port, a Service selecting no pod, a command
    that runs nothing: `test_every_reference_inside_a_pod_and_to_it_names_what_exists`.)"""
    user = next(doc for doc in rendered if doc["kind"] == "KafkaUser")
    broken = {**user, "spec": {**user["spec"], "authentification": {"type": "scram-sha-512"}}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, STRIMZI["KafkaUser"], cls=jsonschema.Draft4Validator)
    deployment = next(doc for doc in rendered if doc["kind"] == "Deployment")
    bad = json.loads(json.dumps(deployment))
    bad["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def test_topics_and_users_mirror_the_platform(rendered):
    topics = {doc["spec"]["topicName"]: doc["spec"] for doc in rendered if doc["kind"] == "KafkaTopic"}
    assert set(topics) == {t.name for t in platform_topics()}
    assert {spec["replicas"] for spec in topics.values()} == {3}
    for topic in platform_topics(retention=kubernetes.RETENTION):  # as topic_admin makes them locally
        spec = topics[topic.name]
        assert spec["partitions"] == topic.partitions, topic.name
        assert {k: str(v) for k, v in spec["config"].items()} == topic.configs() | {"min.insync.replicas": "2"}
    users = {doc["metadata"]["name"]: doc["spec"] for doc in rendered if doc["kind"] == "KafkaUser"}
    granted = {
        (name, acl["resource"]["type"], acl["resource"]["name"], acl["resource"]["patternType"], op)
        for name, spec in users.items()
        if name != OPERATOR
        for acl in spec["authorization"]["acls"]
        for op in acl["operations"]
        if op != "Describe"
    }
    expected = {
        (b.principal, b.resource, b.name, "prefix" if b.prefixed else "literal", b.operation.capitalize())
        for b in bindings(dashboard_names=kubernetes.DASHBOARDS)  # not the shell's KAFKA_DASHBOARDS
    }
    assert granted == expected


def test_the_operators_principal_is_a_super_user_of_the_cluster(rendered):
    """The rebuild, the restore and the dead letters' replay read what no service may read (its
    own outputs, the DLQs): locally as `admin`, here as a super user with its own certificate
    (Strimzi names a certificate's principal `CN=<its KafkaUser>`)."""
    [cluster] = [doc for doc in rendered if doc["kind"] == "Kafka"]
    assert cluster["spec"]["kafka"]["authorization"]["superUsers"] == [f"CN={OPERATOR}"]
    [user] = [doc for doc in rendered if doc["kind"] == "KafkaUser" and doc["metadata"]["name"] == OPERATOR]
    assert user["spec"] == {"authentication": {"type": "tls"}}
    assert OPERATOR not in {b.principal for b in bindings()}, "a service never runs as the operator"


def test_no_password_of_the_platform_s_own_principals_opens_kafka_from_outside(rendered):
    """The external listener takes SCRAM, which the partners and dashboards use (CONTRACTS.md,
    Identity); the services and the operator have no SCRAM credentials at all (the User
    Operator makes a password only for a scram-sha-512 KafkaUser) and connect by certificate on
    the internal listener only: a leaked secret of theirs is no use from outside the cluster."""
    [cluster] = [doc for doc in rendered if doc["kind"] == "Kafka"]
    listeners = {lsn["type"]: lsn["authentication"]["type"] for lsn in cluster["spec"]["kafka"]["listeners"]}
    assert listeners == {"internal": "tls", "loadbalancer": "scram-sha-512"}
    users = {
        doc["metadata"]["name"]: doc["spec"]["authentication"]["type"] for doc in rendered if doc["kind"] == "KafkaUser"
    }
    platform = {spec.name for spec in specs()} | {OPERATOR}
    assert {name for name, kind in users.items() if kind == "tls"} == platform
    partners = {"ministere", "gar", *kubernetes.DASHBOARDS}
    assert {name for name, kind in users.items() if kind == "scram-sha-512"} == partners


def test_every_service_runs_with_probes_resources_replicas_and_its_own_principal(rendered):
    deployments = _deployments(rendered)
    assert set(deployments) == {spec.name for spec in specs()}
    for name, doc in deployments.items():
        [container] = doc["spec"]["template"]["spec"]["containers"]
        assert doc["spec"]["replicas"] >= 2
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["startupProbe"]["httpGet"]["path"] == "/health"
        startup = container["startupProbe"]
        # Kubernetes lets the start-up guard end a service that cannot reach Kafka or PostgreSQL
        # (and say why) rather than kill it first, and a long migration end (the guard does not
        # count it; 300 s killed a start that rewrote a large table, every time).
        assert (
            startup["periodSeconds"] * startup["failureThreshold"] >= 3600 > ServiceSettings().startup_timeout_seconds
        )
        assert container["resources"]["limits"]["memory"]
        assert _principal_secret(doc) == name, "its certificate: the User Operator's secret of its KafkaUser"
        [database] = [e for e in container["env"] if e["name"] == "DATABASE_URL"]
        # its own PostgreSQL role's, which owns its schema alone (deploy/roles.py)
        assert database["valueFrom"]["secretKeyRef"] == {"name": f"feo-database-{name}", "key": "url"}
    config = next(doc for doc in rendered if doc["kind"] == "ConfigMap")
    assert config["data"]["KAFKA_BOOTSTRAP_SERVERS"] == "feo-kafka-bootstrap:9093"


def _config_maps_read(rendered: list[dict]) -> dict[str, set[str]]:
    """Each pod template's (Deployment, Job, CronJob) ConfigMaps, by the object's name."""
    read = {}
    for doc in rendered:
        if doc["kind"] in ("Deployment", "Job", "CronJob"):
            spec = doc["spec"].get("jobTemplate", {}).get("spec", doc["spec"])
            sources = (s for c in spec["template"]["spec"]["containers"] for s in c.get("envFrom", []))
            read[doc["metadata"]["name"]] = {s["configMapRef"]["name"] for s in sources}
    return read


def test_an_edited_shared_setting_rolls_out_to_every_pod_that_reads_it(rendered, tmp_path):
    """The shared ConfigMap's name holds a hash of its content, and every pod template names
    it: a value changed makes new pod templates, which `kubectl apply` rolls out (a plain
    ConfigMap edited changed no pod template, its pods kept the former values until restarted)."""
    before = _config_maps_read(rendered)
    assert all(names == {before["ressources"].copy().pop()} for names in before.values() if names)
    tree = tmp_path / "k8s"
    shutil.copytree(kubernetes.K8S, tree)
    config = tree / "services" / "config.env"
    config.write_text(config.read_text().replace("LOG_LEVEL=INFO", "LOG_LEVEL=DEBUG"))
    out = subprocess.run(["kubectl", "kustomize", str(tree)], capture_output=True, text=True, check=True)
    edited = [doc for doc in yaml.safe_load_all(out.stdout) if doc]

    after = _config_maps_read(edited)
    [config_map] = [doc for doc in edited if doc["kind"] == "ConfigMap"]
    assert config_map["data"]["LOG_LEVEL"] == "DEBUG"
    assert {name for name, names in after.items() if names} == {name for name, names in before.items() if names}
    assert all(names == {config_map["metadata"]["name"]} for names in after.values() if names)
    assert {spec.name for spec in specs()} <= {name for name, names in before.items() if names}
    assert config_map["metadata"]["name"] not in before["ressources"]


def test_every_pod_runs_the_image_the_kustomization_names(rendered):
    """A container whose image the kustomization's `images` does not rename would be pulled as
    the bare local name, which no registry holds."""
    [image] = yaml.safe_load((kubernetes.K8S / "kustomization.yaml").read_text())["images"]
    expected = f"{image['newName']}:{image['newTag']}"
    pods = _pods(rendered)
    assert len(pods) == len(specs()) + 2  # the services', the operators' tools', the nightly backup's
    for name, pod in pods.items():
        for container in pod["containers"]:
            assert container["image"] == expected, name


RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_wmem",
}
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}


def _pods(rendered: list[dict]) -> dict[str, dict]:
    """Every pod template, by its Deployment's or CronJob's name."""
    pods = {doc["metadata"]["name"]: doc["spec"]["template"]["spec"] for doc in rendered if doc["kind"] == "Deployment"}
    for doc in (doc for doc in rendered if doc["kind"] == "CronJob"):
        pods[doc["metadata"]["name"]] = doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return pods


def _restricted_violations(pod: dict) -> list[str]:
    """What the Pod Security Standards' `restricted` profile (with `baseline`'s, which it
    includes) refuses in a pod spec, as kubernetes.io's "Pod Security Standards" lists its
    controls (Kubernetes 1.34), written out here rather than read from deploy/kubernetes.py."""
    found = []
    context = pod.get("securityContext", {})
    for host in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(host):
            found.append(host)
    for volume in pod.get("volumes", []):
        if not set(volume) - {"name"} <= RESTRICTED_VOLUMES:
            found.append(f"volume {volume['name']}")
    if any(s["name"] not in SAFE_SYSCTLS for s in context.get("sysctls", [])):
        found.append("sysctls")
    containers = [c for kind in ("initContainers", "containers", "ephemeralContainers") for c in pod.get(kind, [])]
    for c in containers:
        security = c.get("securityContext", {})
        merged = context | security  # a container's own setting wins over the pod's
        name = c["name"]
        if merged.get("windowsOptions", {}).get("hostProcess"):
            found.append(f"{name}: hostProcess")
        if security.get("privileged"):
            found.append(f"{name}: privileged")
        if security.get("allowPrivilegeEscalation") is not False:
            found.append(f"{name}: allowPrivilegeEscalation")
        if merged.get("runAsNonRoot") is not True:
            found.append(f"{name}: runAsNonRoot")
        if merged.get("runAsUser") == 0:
            found.append(f"{name}: runAsUser 0")
        if merged.get("seccompProfile", {}).get("type") not in ("RuntimeDefault", "Localhost"):
            found.append(f"{name}: seccompProfile")
        if merged.get("appArmorProfile", {}).get("type", "RuntimeDefault") not in ("RuntimeDefault", "Localhost"):
            found.append(f"{name}: appArmorProfile")
        selinux = merged.get("seLinuxOptions", {})
        if selinux.get("type", "") not in SELINUX_TYPES or selinux.get("user") or selinux.get("role"):
            found.append(f"{name}: seLinuxOptions")
        if security.get("procMount", "Default") != "Default":
            found.append(f"{name}: procMount")
        capabilities = security.get("capabilities", {})
        if "ALL" not in capabilities.get("drop", []) or not set(capabilities.get("add", [])) <= {"NET_BIND_SERVICE"}:
            found.append(f"{name}: capabilities")
        if any(port.get("hostPort") for port in c.get("ports", [])):
            found.append(f"{name}: hostPort")
        for handler in [c.get(p, {}) for p in ("startupProbe", "readinessProbe", "livenessProbe")] + [
            h for h in c.get("lifecycle", {}).values()
        ]:
            if any(handler.get(kind, {}).get("host") for kind in ("httpGet", "tcpSocket")):
                found.append(f"{name}: a probe's or hook's host")
    return found


def test_every_pod_is_admitted_by_the_restricted_pod_security_standard(rendered):
    """A namespace labelled `pod-security.kubernetes.io/enforce: restricted` admits every pod of
    the platform (Strimzi's pods need its Cluster Operator's restricted provider: README)."""
    pods = _pods(rendered)
    assert set(pods) >= {spec.name for spec in specs()} | {kubernetes.TOOLBOX, kubernetes.BACKUP_JOB}
    for name, pod in pods.items():
        assert _restricted_violations(pod) == [], name
        for container in pod["containers"]:  # ours, not the standard's: not root, no port below 1024
            assert all(port["containerPort"] >= 1024 for port in container.get("ports", [])), name


@pytest.mark.parametrize(
    "change, violation",
    [
        (lambda p: p["securityContext"].pop("runAsNonRoot"), "runAsNonRoot"),
        (lambda p: p["containers"][0]["securityContext"].update(runAsNonRoot=False), "runAsNonRoot"),
        (lambda p: p["securityContext"].update(runAsUser=0), "runAsUser 0"),
        (lambda p: p["containers"][0]["securityContext"].update(seccompProfile={"type": "Unconfined"}), "seccomp"),
        (lambda p: p["containers"][0]["securityContext"].pop("allowPrivilegeEscalation"), "allowPrivilegeEscalation"),
        (lambda p: p["containers"][0]["securityContext"]["capabilities"].update(add=["NET_ADMIN"]), "capabilities"),
        (lambda p: p["containers"][0]["ports"][0].update(hostPort=8000), "hostPort"),
        (lambda p: p["volumes"].append({"name": "h", "hostPath": {"path": "/"}}), "volume h"),
        (lambda p: p.update(hostNetwork=True), "hostNetwork"),
        (lambda p: p["containers"][0]["livenessProbe"]["httpGet"].update(host="10.0.0.1"), "host"),
        (lambda p: p.update(hostPID=True), "hostPID"),
        (lambda p: p.update(hostIPC=True), "hostIPC"),
        (lambda p: p["containers"][0]["securityContext"].update(privileged=True), "privileged"),
        (lambda p: p["securityContext"].update(sysctls=[{"name": "kernel.msgmax", "value": "1"}]), "sysctls"),
        (lambda p: p["securityContext"].update(seLinuxOptions={"type": "spc_t"}), "seLinuxOptions"),
        (lambda p: p["containers"][0]["securityContext"].update(seLinuxOptions={"user": "u"}), "seLinuxOptions"),
        (lambda p: p["containers"][0]["securityContext"].update(procMount="Unmasked"), "procMount"),
        (lambda p: p["securityContext"].update(appArmorProfile={"type": "Unconfined"}), "appArmorProfile"),
        (lambda p: p["securityContext"].update(windowsOptions={"hostProcess": True}), "hostProcess"),
        (lambda p: p.setdefault("initContainers", []).append({"name": "i"}), "i: allowPrivilegeEscalation"),
    ],
)
def test_the_restricted_profile_s_checks_refuse_what_it_refuses(rendered, change, violation):
    pod = copy.deepcopy(_pods(rendered)["formation"])
    change(pod)
    assert any(violation in found for found in _restricted_violations(pod)), violation


def test_a_pod_writes_only_to_its_volumes_and_its_secrets_are_readable_by_its_group_alone(rendered):
    """The root file system read-only, the temporary files (a restore's: deploy/sauvegarde.py)
    and the backups on volumes; the Kafka key and certificate not readable by other users of the
    container (Kubernetes' default mode is 0644), their group the pod's (`fsGroup`)."""
    for name, pod in _pods(rendered).items():
        volumes = {v["name"]: v for v in pod["volumes"]}
        for container in pod["containers"]:
            assert container["securityContext"]["readOnlyRootFilesystem"] is True, name
            mounted = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
            assert "emptyDir" in mounted["/tmp"], name
        for volume in volumes.values():
            if "secret" in volume:
                assert volume["secret"]["defaultMode"] & 0o007 == 0, (name, volume["name"])
                assert volume["secret"]["defaultMode"] & 0o040, (name, volume["name"])
        assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"], name


def _claims(pod: dict) -> set[str]:
    return {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}


def _mounted_at(container: dict, volume: str) -> str:
    return {m["name"]: m["mountPath"] for m in container["volumeMounts"]}[volume]


def test_the_database_is_backed_up_nightly_into_the_toolbox_s_volume_on_its_node(rendered):
    """`backup --keep` into the volume the toolbox's restores read (ReadWriteOnce: on the node
    that has it mounted), one run at a time, as the toolbox's environment says (PostgreSQL's)."""
    [job] = [doc for doc in rendered if doc["kind"] == "CronJob"]
    [toolbox] = [
        doc for doc in rendered if doc["kind"] == "Deployment" and doc["metadata"]["name"] == kubernetes.TOOLBOX
    ]
    assert job["spec"]["concurrencyPolicy"] == "Forbid"
    assert job["spec"]["suspend"] is False, "set: applied again after a restore, it resumes the backups"
    pod = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    command = container["command"]
    assert command[:5] == ["python", "-m", "deploy.sauvegarde", "backup", "--keep"] and int(command[5]) >= 2
    [tools] = toolbox["spec"]["template"]["spec"]["containers"]
    assert _claims(pod) == _claims(toolbox["spec"]["template"]["spec"]) == {kubernetes.BACKUP_CLAIM}
    assert command[6] == _mounted_at(container, "sauvegardes") == _mounted_at(tools, "sauvegardes")
    [term] = pod["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["labelSelector"]["matchLabels"] == toolbox["spec"]["template"]["metadata"]["labels"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    [config] = [doc for doc in rendered if doc["kind"] == "ConfigMap"]
    assert container["envFrom"] == tools["envFrom"] == [{"configMapRef": {"name": config["metadata"]["name"]}}]
    [database] = container["env"]  # no Kafka access: it reads PostgreSQL alone
    assert database in tools["env"], "the toolbox's database, from the same secret"
    environ = dict(config["data"]) | {"DATABASE_URL": "postgresql://feo:s3cret@feo-db:5432/feo"}
    assert check_environment(environ, [spec.settings for spec in specs()], kafka="none") == []
    assert job["spec"]["jobTemplate"]["spec"]["podFailurePolicy"]["rules"][0]["onExitCodes"]["values"] == [2]


def test_the_passerelle_checks_tokens_against_the_provider_it_fetches_keys_from(rendered):
    """JWKS_URL alone left JWT_ISSUER at its local default: every token of the provider refused."""
    [passerelle] = [d for d in rendered if d["kind"] == "Deployment" and d["metadata"]["name"] == "passerelle"]
    env = {e["name"]: e.get("value") for e in passerelle["spec"]["template"]["spec"]["containers"][0]["env"]}
    local = PasserelleSettings.model_fields["jwt_issuer"].default
    assert env["JWKS_URL"].startswith(env["JWT_ISSUER"]) and env["JWT_ISSUER"] != local


def _deployments(rendered: list[dict]) -> dict[str, dict]:
    """The services' Deployments (not the operators' tools')."""
    return {
        doc["metadata"]["name"]: doc
        for doc in rendered
        if doc["kind"] == "Deployment" and doc["metadata"]["name"] != kubernetes.TOOLBOX
    }


def test_a_drained_node_evicts_one_replica_of_a_service_at_a_time(rendered):
    """Each service's PodDisruptionBudget selects its pods, lets one go, and keeps one serving."""
    budgets = {doc["metadata"]["name"]: doc["spec"] for doc in rendered if doc["kind"] == "PodDisruptionBudget"}
    deployments = _deployments(rendered)
    assert set(budgets) == set(deployments)
    for name, doc in deployments.items():
        budget, replicas = budgets[name], doc["spec"]["replicas"]
        assert budget["selector"] == doc["spec"]["selector"]
        assert budget["selector"]["matchLabels"].items() <= doc["spec"]["template"]["metadata"]["labels"].items()
        evictable = budget["maxUnavailable"] if "maxUnavailable" in budget else replicas - budget["minAvailable"]
        assert evictable == 1 and replicas - evictable >= 1, name


def test_replicas_and_brokers_are_spread_over_the_nodes_but_a_single_node_still_runs_them(rendered):
    for name, doc in _deployments(rendered).items():
        template = doc["spec"]["template"]
        [spread] = template["spec"]["topologySpreadConstraints"]
        assert spread["topologyKey"] == "kubernetes.io/hostname", name
        assert spread["whenUnsatisfiable"] == "ScheduleAnyway", name
        assert spread["labelSelector"] == doc["spec"]["selector"], name
        assert spread["labelSelector"]["matchLabels"].items() <= template["metadata"]["labels"].items(), name
    # The brokers: Strimzi labels its pods with their cluster and their node pool.
    [pool] = [doc for doc in rendered if doc["kind"] == "KafkaNodePool"]
    [spread] = pool["spec"]["template"]["pod"]["topologySpreadConstraints"]
    assert spread["topologyKey"] == "kubernetes.io/hostname"
    assert spread["whenUnsatisfiable"] == "ScheduleAnyway"
    assert spread["labelSelector"]["matchLabels"] == {
        "strimzi.io/cluster": pool["metadata"]["labels"]["strimzi.io/cluster"],
        "strimzi.io/pool-name": pool["metadata"]["name"],
    }


def _setting(field: str, env: dict[str, str], fields: dict) -> float:
    """A setting as a pod gets it: its environment's, else its default."""
    return float(env.get(field.upper(), fields[field].default))


def test_a_stopping_pod_leaves_the_endpoints_then_has_the_time_to_drain(rendered):
    """A pause before SIGTERM, the kubelet's own (the image need have no `sleep`), then the whole
    drain within the grace, which counts from the pause's start. The drain: the HTTP requests in
    flight (within SHUTDOWN_GRACE_SECONDS, the passerelle's with its lookup, then its write to
    Kafka more), then the relay's round in flight (its wait, then its wait for Kafka's answers),
    then the batch in flight commits and its offsets' commit ends (FLUSH_SECONDS at most), then
    the outbox is published, each within SHUTDOWN_GRACE_SECONDS (the last one's round cut at its
    end waiting for Kafka's answers too): the settings as the pods get them (their env, the
    shared ConfigMap, else their defaults)."""
    by_name = {spec.name: spec for spec in specs()}
    for name, doc in _deployments(rendered).items():
        pod = doc["spec"]["template"]["spec"]
        [container] = pod["containers"]
        env = _environment(rendered, container)
        fields = by_name[name].settings.model_fields
        assert container["lifecycle"]["preStop"].keys() == {"sleep"}, name
        pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        assert 3 <= pause <= 15, name
        requests = ("passerelle_lookup_timeout_seconds", "passerelle_write_timeout_seconds")
        drain = sum(_setting(f, env, fields) for f in requests if f in fields)
        drain += ROUND_WAIT_SECONDS + 2 * ANSWER_WAIT_SECONDS + 3 * _setting("shutdown_grace_seconds", env, fields)
        drain += FLUSH_SECONDS  # the offsets' commit, Kafka away
        assert pod["terminationGracePeriodSeconds"] > pause + drain, name
    assert set(requests) <= PasserelleSettings.model_fields.keys(), "the passerelle's requests are bounded"
    assert set(PasserelleSettings.REQUEST_TIMEOUTS) == set(requests), "and a stop waits for them"


def _mib(quantity: str) -> float:
    units = {"Mi": 1, "Gi": 1024}
    assert quantity[-2:] in units, f"{quantity}: a quantity in Mi or Gi"
    return float(quantity[:-2]) * units[quantity[-2:]]


def test_each_service_requests_the_memory_it_was_measured_to_use_under_its_limit(rendered):
    deployments = _deployments(rendered)
    assert set(kubernetes.MEMORY) <= set(deployments), "a service's memory, by its name"
    for name, doc in deployments.items():
        [container] = doc["spec"]["template"]["spec"]["containers"]
        request = _mib(container["resources"]["requests"]["memory"])
        limit = _mib(container["resources"]["limits"]["memory"])
        assert request >= PEAK_MEMORY_MIB.get(name, ANY_PEAK_MEMORY_MIB), name
        assert limit >= request, name


async def test_each_pod_is_alive_while_its_app_answers_whatever_its_dependencies(rendered):
    """The liveness probe was TCP: the kernel accepts a connection for a process whose event loop
    is frozen, and such a pod was never restarted. It asks the app itself now, which answers
    without reading anything (a database away is the readiness probe's to say, not a reason to
    restart): here, nothing listens at the broker's or the database's address."""
    nowhere = ServiceSettings(kafka_bootstrap_servers="127.0.0.1:1", database_url="postgresql://feo@127.0.0.1:1/feo")
    for spec in specs():
        probe = _deployments(rendered)[spec.name]["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]
        assert probe["httpGet"]["port"] == "http" and probe["timeoutSeconds"] <= probe["periodSeconds"], spec.name
        settings = spec.settings.of(nowhere)
        app = build_app(spec, settings)
        served = spec.http_api(app, settings) if spec.http_api is not None else app
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=served), base_url="http://pod") as client:
            response = await client.get(probe["httpGet"]["path"])
        assert response.status_code == 200, (spec.name, response.text)


async def test_each_pod_s_readiness_is_asked_of_its_app_and_not_ready_before_its_database(rendered):
    """The readiness path is one the app serves (a 404 would keep every pod out of its Service):
    here the app has not started, no database yet, so not ready, whether it needs Kafka or not."""
    nowhere = ServiceSettings(kafka_bootstrap_servers="127.0.0.1:1", database_url="postgresql://feo@127.0.0.1:1/feo")
    for spec in specs():
        probe = _deployments(rendered)[spec.name]["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
        settings = spec.settings.of(nowhere)
        app = build_app(spec, settings)
        served = spec.http_api(app, settings) if spec.http_api is not None else app
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=served), base_url="http://pod") as client:
            response = await client.get(probe["httpGet"]["path"])
        assert response.status_code == 503 and response.json()["ready"] is False, (spec.name, response.text)


def test_each_pod_s_environment_is_one_its_service_accepts_and_points_at_what_the_pod_has(rendered):
    """The settings as a pod gets them (the shared ConfigMap, its own env, the secrets' values
    stood in for): its service's settings check passes them, its HTTP port is the container's,
    its Kafka CA file is in the mounted cluster CA secret, its bootstrap port the TLS listener's."""
    [config] = [doc for doc in rendered if doc["kind"] == "ConfigMap"]
    [cluster] = [doc for doc in rendered if doc["kind"] == "Kafka"]
    by_name = {spec.name: spec for spec in specs()}
    for name, doc in _deployments(rendered).items():
        pod = doc["spec"]["template"]["spec"]
        [container] = pod["containers"]
        env = _environment(rendered, container, f"{name}-7d4b9c-x2x9z")
        assert check_environment(env, [by_name[name].settings], kafka="elsewhere") == [], name  # not here: the pod's
        [port] = [p for p in container["ports"] if p["name"] == "http"]
        assert int(env["HTTP_PORT"]) == port["containerPort"], name
        assert _mounted(pod, container, env["KAFKA_CA_FILE"]) == (
            f"{cluster['metadata']['name']}-cluster-ca-cert",
            "ca.crt",
        ), "Strimzi's cluster CA"
        assert _mounted(pod, container, env["KAFKA_CERT_FILE"]) == (name, "user.crt"), name
        assert _mounted(pod, container, env["KAFKA_KEY_FILE"]) == (name, "user.key"), name
    host, port = config["data"]["KAFKA_BOOTSTRAP_SERVERS"].rsplit(":", 1)
    assert host == f"{cluster['metadata']['name']}-kafka-bootstrap", "Strimzi's bootstrap Service"
    [listener] = [lsn for lsn in cluster["spec"]["kafka"]["listeners"] if lsn["port"] == int(port)]
    assert listener["type"] == "internal" and listener["tls"], "inside the cluster, over TLS"
    assert (listener["authentication"]["type"], config["data"]["KAFKA_SECURITY_PROTOCOL"]) == ("tls", "SSL")


SECRET_VALUES = {"password": "s3cret", "url": "postgresql://feo:s3cret@feo-db:5432/feo"}
"""What the secrets' keys hold, stood in for (their values are the deployment's)."""


def _environment(rendered: list[dict], container: dict, pod_name: str = "pod-7d4b9c-x2x9z") -> dict[str, str]:
    """A container's environment as the kubelet gives it: each `envFrom` ConfigMap's data (one
    the tree does not hold fails here: the pod would not start, or start without the settings),
    then its own `env`, the secrets' values stood in for (SECRET_VALUES) and a field its pod's."""
    maps = {doc["metadata"]["name"]: doc["data"] for doc in rendered if doc["kind"] == "ConfigMap"}
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        assert set(source) == {"configMapRef"}, source
        name = source["configMapRef"]["name"]
        assert name in maps, f"{container['name']}: its settings from ConfigMap {name}, which the tree lacks"
        env |= maps[name]
    for e in container.get("env", []):
        if "value" in e:  # `$(NAME)`: a variable given before it, as the kubelet expands it
            env[e["name"]] = EXPANDED.sub(lambda m: env.get(m[1], m[0]), e["value"])
        elif "secretKeyRef" in e["valueFrom"]:
            env[e["name"]] = SECRET_VALUES[e["valueFrom"]["secretKeyRef"]["key"]]
        else:
            field = e["valueFrom"]["fieldRef"]["fieldPath"]
            assert field in ("metadata.name", "metadata.namespace"), e
            env[e["name"]] = pod_name if field == "metadata.name" else NAMESPACE
    return env


EXPANDED = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")
NAMESPACE = "feo"
"""The namespace a pod is given (`metadata.namespace`), stood in for."""


def _referenced(container: dict) -> set[str]:
    """The variables a container's other variables name (`$(NAME)`): the kubelet's, not a setting."""
    return {name for e in container.get("env", []) if "value" in e for name in EXPANDED.findall(e["value"])}


def test_every_setting_whose_default_is_local_is_given_to_every_pod(rendered):
    """A setting left at its default points at this machine (the broker, PostgreSQL, the HTTP
    server on the loopback only, which no probe reaches) or at the local identity provider's
    audience: each is given to every pod that runs a service or a tool, as the kubelet gives them."""
    by_name = {spec.name: spec for spec in specs()}
    local = lambda value: isinstance(value, str) and ("127.0.0.1" in value or "localhost" in value)  # noqa: E731
    for name, pod in _pods(rendered).items():
        [container] = pod["containers"]
        env = _environment(rendered, container)
        fields = by_name[name].settings.model_fields if name in by_name else ServiceSettings.model_fields
        for field, info in fields.items():
            if local(info.default) and (field != "http_host" or name in by_name):  # the tools serve nothing
                assert field.upper() in env and not local(env[field.upper()]), (name, field)
        if name in by_name:
            assert env["HTTP_HOST"] in ("0.0.0.0", "::"), f"{name}: its probes come from outside the pod"
    passerelle = _environment(
        rendered, _deployments(rendered)["passerelle"]["spec"]["template"]["spec"]["containers"][0]
    )
    for field in ("jwt_issuer", "jwt_audience"):
        assert passerelle[field.upper()] != PasserelleSettings.model_fields[field].default, field


def test_every_variable_a_pod_is_given_is_a_setting_its_process_reads(rendered):
    """The settings ignore a variable they do not know: one misspelled in config.env or a pod's
    `env` (SHUTDOWN_GRACE_SECOND) left its setting at the default, and every check above passed
    (audit helper-175 #1). A service's pod is given its service's settings alone; the tools' pods
    (the backup, the toolbox) any service's, since their commands run each service's."""
    by_name = {spec.name: spec for spec in specs()}
    every = {field for spec in specs() for field in spec.settings.model_fields}
    for name, pod in _pods(rendered).items():
        for container in pod["containers"]:
            known = set(by_name[name].settings.model_fields) if name in by_name else every
            given = set(_environment(rendered, container)) - _referenced(container)
            unknown = sorted(v for v in given if v.lower() not in known)
            assert unknown == [], f"{name}: given {unknown}, which no setting of its process reads"


def test_no_pod_holds_a_token_of_the_kubernetes_api(rendered):
    """None of them calls the API server: a token mounted would let a process that took over the
    pod act as its namespace's default service account."""
    for name, pod in _pods(rendered).items():
        assert pod.get("automountServiceAccountToken") is False, name


def test_every_reference_inside_a_pod_and_to_it_names_what_exists(rendered):
    """What no schema checks: each probe's port is one of its container's, each Service selects
    the pods of a Deployment and sends to one of their ports, and each command runs a module the
    image holds."""
    deployments = {doc["metadata"]["name"]: doc for doc in rendered if doc["kind"] == "Deployment"}
    for name, pod in _pods(rendered).items():
        for container in pod["containers"]:
            ports = {p.get("name") for p in container.get("ports", [])} | {
                p["containerPort"] for p in container.get("ports", [])
            }
            for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                if kind in container:
                    assert container[kind]["httpGet"]["port"] in ports, (name, kind)
            command = container["command"]
            assert command[0] == "python", name
            if command[1] == "-m":
                assert importlib.util.find_spec(command[2]) is not None, (name, command[2])
    services = [doc for doc in rendered if doc["kind"] == "Service"]
    assert {doc["metadata"]["name"] for doc in services} == {spec.name for spec in specs()}
    for service in services:
        selector = service["spec"]["selector"]
        [target] = [
            d for d in deployments.values() if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        [container] = target["spec"]["template"]["spec"]["containers"]
        names = {p.get("name") for p in container["ports"]} | {p["containerPort"] for p in container["ports"]}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in names, (service["metadata"]["name"], port)


@pytest.mark.parametrize(
    "breaks",
    [
        lambda docs, pod: pod["containers"][0].pop("envFrom"),
        lambda docs, pod: pod["containers"][0]["envFrom"][0]["configMapRef"].update(name="absente"),
        lambda docs, pod: pod["containers"][0].update(
            env=[e for e in pod["containers"][0]["env"] if e["name"] != "DATABASE_URL"]
        ),
        lambda docs, pod: next(d for d in docs if d["kind"] == "ConfigMap")["data"].update(HTTP_HOST="127.0.0.1"),
        lambda docs, pod: pod["containers"][0]["readinessProbe"]["httpGet"].update(port="htpp"),
        lambda docs, pod: pod["containers"][0].update(command=["python", "-m", "services.nope"]),
        lambda docs, pod: next(d for d in docs if d["kind"] == "Service")["spec"].update(selector={"app": "nope"}),
        lambda docs, pod: pod.pop("automountServiceAccountToken"),
    ],
)
def test_those_checks_refuse_a_pod_broken_as_no_schema_sees(rendered, breaks):
    docs = copy.deepcopy(rendered)
    breaks(docs, _pods(docs)["formation"])
    failed = 0
    for check in (
        test_every_setting_whose_default_is_local_is_given_to_every_pod,
        test_no_pod_holds_a_token_of_the_kubernetes_api,
        test_every_reference_inside_a_pod_and_to_it_names_what_exists,
    ):
        try:
            check(docs)
        except (AssertionError, StopIteration, KeyError, ValueError):
            failed += 1
    assert failed, "the break went unnoticed"


def _selects(selector: dict, labels: dict[str, str]) -> bool:
    """Whether a label selector (matchLabels, matchExpressions In/NotIn/Exists) selects `labels`."""
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for e in selector.get("matchExpressions", []):
        present, value = e["key"] in labels, labels.get(e["key"])
        if not {
            "In": present and value in e.get("values", []),
            "NotIn": not present or value not in e.get("values", []),
            "Exists": present,
            "DoesNotExist": not present,
        }[e["operator"]]:
            return False
    return True


def _ingress_to(rendered: list[dict], labels: dict[str, str]) -> list[dict] | None:
    """The ingress rules the NetworkPolicies give a pod of these labels (None: no policy selects
    it, so anything may reach it)."""
    policies = [
        d["spec"] for d in rendered if d["kind"] == "NetworkPolicy" and _selects(d["spec"]["podSelector"], labels)
    ]
    if not policies:
        return None
    assert all("Ingress" in p["policyTypes"] for p in policies)
    return [rule for p in policies for rule in p.get("ingress", [])]


ACCESS = {  # the access labels each service's HTTP port is reached from, beside HTTP_ACCESS (Prometheus')
    "passerelle": [kubernetes.PASSERELLE_ACCESS],
    "ressources": [kubernetes.READ_ACCESS],
}


def test_only_what_carries_the_access_label_reaches_a_service_s_http_port_and_nothing_the_tools(rendered):
    """The read API is not authenticated: any pod of the cluster reached it (and every /metrics)
    past the authenticating proxy; the ingress controller, there for the passerelle, reached it
    too (security audit s69 F4). Each service's pods take only their HTTP port, only from a
    namespace or a pod labelled HTTP_ACCESS or the label of their own clients (the ingress
    controller's, the proxy's); the operators' pods serve nothing and take nothing."""
    for name, doc in _deployments(rendered).items():
        template = doc["spec"]["template"]
        rules = _ingress_to(rendered, template["metadata"]["labels"])
        assert rules is not None, f"{name}: no NetworkPolicy selects its pods"
        [container] = template["spec"]["containers"]
        assert "http" in {p["name"] for p in container["ports"]}
        labels = []
        for rule in rules:
            assert [(p["protocol"], p["port"]) for p in rule["ports"]] == [("TCP", "http")], name
            [label] = {k for peer in rule["from"] for selector in peer.values() for k in selector["matchLabels"]}
            assert rule["from"] == [
                {"namespaceSelector": {"matchLabels": {label: "oui"}}},
                {"podSelector": {"matchLabels": {label: "oui"}}},
            ], name
            labels.append(label)
        assert sorted(labels) == sorted([kubernetes.HTTP_ACCESS, *ACCESS.get(name, [])]), name
    pods = {d["metadata"]["name"]: d for d in rendered if d["kind"] in ("Deployment", "CronJob")}
    for name in (kubernetes.TOOLBOX, kubernetes.BACKUP_JOB):
        doc = pods[name]
        template = (
            doc["spec"]["template"] if doc["kind"] == "Deployment" else doc["spec"]["jobTemplate"]["spec"]["template"]
        )
        assert _ingress_to(rendered, template["metadata"]["labels"]) == [], name


def test_a_pod_no_policy_selects_is_found_out(rendered):
    assert _ingress_to(rendered, {"app.kubernetes.io/name": "autre"}) is None
    docs = [d for d in rendered if d["kind"] != "NetworkPolicy"]
    with pytest.raises(AssertionError, match="no NetworkPolicy selects"):
        test_only_what_carries_the_access_label_reaches_a_service_s_http_port_and_nothing_the_tools(docs)


TEST_ONLY = ("yaml", "pytest", "jsonschema", "kubernetes_validate", "psutil", "hypothesis", "playwright")
"""Packages installed by the `test` extra only: an image built with `pip install .` lacks them."""


def test_what_the_manifests_and_the_operators_run_imports_without_the_test_extra():
    """The image holds the runtime's dependencies, not the test extra's: `deploy.kafka_client`
    imported deploy.kubernetes for a constant, and with it PyYAML, which the image lacks."""
    modules = [f"services.{spec.name}" for spec in specs()] + [
        "deploy.sauvegarde",
        "deploy.reconstruire",
        "deploy.rattrapage",
        "deploy.kafka_client",
        "deploy.identite",
        "deploy.referentiel",
        "deploy.partenaires.glpi",
        "services.common.messaging.dead_letters",
        "services.common.messaging.outbox_failed",
    ]
    script = (
        "import importlib, sys\n"
        f"for blocked in {TEST_ONLY!r}: sys.modules[blocked] = None\n"
        f"for module in {modules!r}: importlib.import_module(module)\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-2000:]
    blocked = subprocess.run(
        [sys.executable, "-c", "import sys; sys.modules['yaml'] = None; import deploy.kubernetes"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert "ModuleNotFoundError" in blocked.stderr, "the blocking works: deploy.kubernetes needs PyYAML"


def _mounted(pod: dict, container: dict, path: str) -> tuple[str, str]:
    """The secret and its key that a file of the container is: (secret name, key)."""
    directory, file = path.rsplit("/", 1)
    [volume] = [m["name"] for m in container["volumeMounts"] if m["mountPath"] == directory]
    [secret] = [v["secret"] for v in pod["volumes"] if v["name"] == volume]
    items = {i["path"]: i["key"] for i in secret.get("items", [])}
    key = items.get(file) if items else file  # without items, each key of the secret is a file
    return secret["secretName"], key or "(not mounted)"


def _principal_secret(deployment: dict) -> str:
    """The secret a pod's Kafka certificate comes from."""
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    secret, key = _mounted(pod, container, env["KAFKA_CERT_FILE"] or "")
    assert key == "user.crt"
    return secret


def test_the_operators_tools_run_in_a_pod_as_the_operator_with_the_services_settings(rendered):
    """The README has the rebuild, the restore and the dead letters' replay run as `operateur`:
    nothing in the tree ran them (no pod with its password, the database, the CA, the backups'
    volume; a service's pod, which restore refuses while it is connected, was all there was)."""
    [config] = [doc for doc in rendered if doc["kind"] == "ConfigMap"]
    [deployment] = [d for d in rendered if d["kind"] == "Deployment" and d["metadata"]["name"] == kubernetes.TOOLBOX]
    assert "replicas" not in deployment["spec"], "one, not reset by an apply that would end a tool under way"
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["envFrom"] == [{"configMapRef": {"name": config["metadata"]["name"]}}], "the services' settings"
    env = {e["name"]: e for e in container["env"]}
    assert _principal_secret(deployment) == OPERATOR
    assert _mounted(pod, container, env["KAFKA_KEY_FILE"]["value"]) == (OPERATOR, "user.key")
    assert env["DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "feo-database", "key": "url"}
    environ = config["data"] | {
        "KAFKA_CERT_FILE": env["KAFKA_CERT_FILE"]["value"],
        "KAFKA_KEY_FILE": env["KAFKA_KEY_FILE"]["value"],
        "DATABASE_URL": "postgresql://feo@db/feo",  # a pod's user has no name to lend
    }
    for spec in specs():  # a rebuild runs with the service's own settings
        assert check_environment(environ, [spec.settings], kafka="elsewhere") == [], spec.name
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert config["data"]["KAFKA_CA_FILE"].rsplit("/", 1)[0] in mounts
    volumes = {v["name"]: v for v in pod["volumes"]}
    claim = volumes[mounts[kubernetes.BACKUPS]]["persistentVolumeClaim"]["claimName"]
    assert [d for d in rendered if d["kind"] == "PersistentVolumeClaim" and d["metadata"]["name"] == claim]
    waiting = subprocess.Popen(container["command"])  # it waits; SIGTERM, once it catches it, ends it with 0
    try:
        deadline = time.monotonic() + 30
        while not _catches_sigterm(waiting.pid):
            assert waiting.poll() is None and time.monotonic() < deadline, "waiting, SIGTERM caught"
            time.sleep(0.05)
    finally:
        waiting.terminate()
    assert waiting.wait(10) == 0


def _catches_sigterm(pid: int) -> bool:
    """Whether the process has a handler for SIGTERM (/proc: its caught signals' mask)."""
    [mask] = [
        line.split()[1] for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("SigCgt:")
    ]
    return bool(int(mask, 16) & 1 << (signal.SIGTERM - 1))


def test_the_read_api_answers_to_each_name_of_its_service_and_no_other_s(rendered):
    """A proxy in another namespace names it `ressources.<namespace>` (its pod's search
    domains): refused, it gave the dashboards 400 (review s69); `*.svc` took any Service's name,
    which anyone allowed to make one could point at a site of theirs."""
    from services.ressources.hotes import AllowedHosts

    [container] = _deployments(rendered)["ressources"]["spec"]["template"]["spec"]["containers"]
    names = _environment(rendered, container)["HTTP_ALLOWED_HOSTS"].split(",")
    allowed = AllowedHosts(None, names)
    for name in ("ressources", f"ressources.{NAMESPACE}", f"ressources.{NAMESPACE}.svc"):
        assert allowed.allows(name) and allowed.allows(f"{name}.cluster.local" if name.endswith("svc") else name)
    for name in ("ressources.autre", "autre.feo.svc", "autre.autre.svc.cluster.local", "localhost"):
        assert not allowed.allows(name), name
