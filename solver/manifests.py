"""Kubernetes (Deployment + Service per replica group) and docker compose text for a launch.

YAML is written here without a YAML library: mappings and lists of plain keys, every string value
JSON-quoted (a JSON string is a valid YAML double-quoted scalar), so the output parses the same in
any YAML 1.2 reader.
"""

from __future__ import annotations

import json

MODELS_CLAIM = "quantplan-models"  # a PersistentVolumeClaim holding /models (checkpoints made by recipes)
HF_SECRET = "hf-token"  # a Secret with key `token`: gated base models (Llama) download with it
# Hugging Face downloads land on the models volume, so a restarted pod does not fetch them again
ENV = [{"name": "HF_HOME", "value": "/models/huggingface"},
       {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": HF_SECRET, "key": "token", "optional": True}}}]
SHM_GB = 16  # tensor-parallel workers share tensors through /dev/shm (SGLang's docs ask for it)


def to_yaml(value, indent: int = 0) -> str:
    """Block-style YAML for dicts, lists, strings, numbers and booleans."""
    pad = " " * indent
    if isinstance(value, dict):
        if not value:
            return pad + "{}\n"
        lines = []
        for key, item in value.items():
            if isinstance(item, (dict, list)) and item:
                lines.append(f"{pad}{key}:\n{to_yaml(item, indent + 2)}")
            else:
                lines.append(f"{pad}{key}: {_scalar(item)}\n")
        return "".join(lines)
    if isinstance(value, list):
        if not value:
            return pad + "[]\n"
        lines = []
        for item in value:
            if isinstance(item, (dict, list)) and item:
                inner = to_yaml(item, indent + 2)
                lines.append(f"{pad}- {inner[indent + 2:]}")
            else:
                lines.append(f"{pad}- {_scalar(item)}\n")
        return "".join(lines)
    return pad + _scalar(value) + "\n"


def _scalar(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return json.dumps(value)
    if value is None:
        return "null"
    if isinstance(value, (dict, list)):
        return "{}" if isinstance(value, dict) else "[]"
    return json.dumps(str(value))


def _gpu_resources(replica) -> dict:
    if replica.device_kind != "gpu":
        return {}
    count = str(replica.gpus_per_replica)
    return {"limits": {"nvidia.com/gpu": count}, "requests": {"nvidia.com/gpu": count}}


def _probe(replica) -> dict:
    if replica.health_path:
        check = {"httpGet": {"path": replica.health_path, "port": replica.port}}
    else:  # TabbyAPI: no documented health route; the port accepting connections is the readiness signal
        check = {"tcpSocket": {"port": replica.port}}
    return {**check, "initialDelaySeconds": 60, "periodSeconds": 10, "failureThreshold": 60}


def _served(replicas) -> list:
    """Replica groups that run in containers: an Apple laptop runs its engine itself."""
    return [r for r in replicas if r.device_kind != "apple"]


def kubernetes(replicas) -> str:
    """One Deployment and one Service per replica group, as a multi-document YAML stream."""
    documents = []
    for r in _served(replicas):
        labels = {"app": r.name}
        container = {"name": "engine", "image": r.image, **({"command": r.container_command} if r.container_command
                                                             else {}), "args": list(r.args),
                     "env": ENV, "ports": [{"containerPort": r.port, "name": "http"}],
                     "resources": _gpu_resources(r) or {"requests": {"cpu": "4"}},
                     "readinessProbe": _probe(r),
                     "volumeMounts": [{"name": "models", "mountPath": "/models"},
                                      {"name": "shm", "mountPath": "/dev/shm"}]}
        if r.config_file:
            container["volumeMounts"].append({"name": "config", "mountPath": "/app/config.yml",
                                              "subPath": "config.yml"})
        volumes = [{"name": "models", "persistentVolumeClaim": {"claimName": MODELS_CLAIM}},
                   {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": f"{SHM_GB}Gi"}}]
        if r.config_file:
            volumes.append({"name": "config", "configMap": {"name": f"{r.name}-config"}})
            documents.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"{r.name}-config"},
                              "data": {"config.yml": r.config_file}})
        documents.append({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": r.name, "labels": labels},
            "spec": {"replicas": r.count, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"containers": [container], "volumes": volumes}}}})
        documents.append({
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": r.name, "labels": labels},
            "spec": {"selector": labels, "ports": [{"name": "http", "port": r.port, "targetPort": r.port}]}})
    return "---\n".join(to_yaml(d) for d in documents) if documents else "# no replica group runs in a container\n"


def compose(replicas) -> str:
    """A docker compose file: one service per replica group (run `count` of them behind a load balancer)."""
    services = {}
    for index, r in enumerate(_served(replicas)):
        service = {"image": r.image, **({"entrypoint": r.container_command} if r.container_command else {}),
                   "command": list(r.args) if r.args else [],
                   "ports": [f"{8000 + index}:{r.port}"], "volumes": ["./models:/models"], "shm_size": f"{SHM_GB}gb",
                   "environment": ["HF_HOME=/models/huggingface", "HF_TOKEN"]}
        if r.config_file:
            service["volumes"].append(f"./{r.name}.config.yml:/app/config.yml")
        if _gpu_resources(r):
            service["deploy"] = {"resources": {"reservations": {"devices": [
                {"driver": "nvidia", "count": r.gpus_per_replica, "capabilities": ["gpu"]}]}}}
        if r.health_path:
            service["healthcheck"] = {"test": ["CMD", "curl", "-f", f"http://localhost:{r.port}{r.health_path}"],
                                      "interval": "10s", "retries": 60}
        if not service["command"]:
            del service["command"]
        services[r.name] = service
    header = "".join(f"# {r.name}: the plan runs {r.count} of these ({r.gpus_per_replica}x {r.gpu} each)\n"
                     for r in _served(replicas))
    return header + to_yaml({"services": services}) if services else "# no replica group runs in a container\n"
