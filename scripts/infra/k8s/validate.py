"""Validates rendered kustomize output: every object against the Kubernetes API schemas
(kubernetes-validate, strict: an unknown field is an error, as `kubectl apply` with server-side
field validation makes it), then the promises infra/k8s makes in its comments:

- a Deployment scaled by an HPA or a KEDA ScaledObject has no `replicas` of its own;
- terminationGracePeriodSeconds is above SHUTDOWN_GRACE_SECS plus the preStop pause;
- DATABASE_URL never sits in a ConfigMap;
- where the binaries talk to real AWS (AWS_ENDPOINT_URL empty) there are no static AWS keys in
  any env, ConfigMap or Secret, and a KEDA TriggerAuthentication, if any, uses pod identity;
- in the render of a directory named `aws`, AWS_ENDPOINT_URL is empty and every pod's
  ServiceAccount names its IAM role (IRSA);
- the sender's container ports are those of SENDER_ADDR and SENDER_OPS_ADDR; its readiness probe
  asks /readyz on the ops port and every probe goes there; a Service that routes to the ops port is
  a ClusterIP Service routing to nothing else (never the API's Service, never a load balancer or a
  node port), and no NetworkPolicy opens the ops port to every source (it serves /metrics, /readyz
  and /backlog, not the API);
- a KEDA ScaledObject's metrics-api trigger that calls a Service of the render reaches pods that
  some NetworkPolicy opens to KEDA's operator (namespace `keda`) on that port: the namespace
  denies all ingress by default, so without one the trigger fails and KEDA falls back.

KEDA's kinds are left to validate-keda.mjs (KEDA's own models); any other kind without a
Kubernetes schema is an error.

Usage: python validate.py --kubernetes-version 1.30.0 [...] NAME=RENDERED.yaml...
Prints one line per problem (`k8s: NAME: Kind/name: problem`) and exits 1 if there was any.
"""

import argparse
import os
import re
import sys
from urllib.parse import urlsplit

import kubernetes_validate
import yaml

AWS_KEY_NAMES = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}
# Set by kustomize's buildMetadata [originAnnotations] (check-k8s switches it on in its copy).
ORIGIN = "config.kubernetes.io/origin"
CONFIG_MAP = "accrual-config"
# Seconds of margin wanted between the app's own shutdown and the kubelet's SIGKILL.
SHUTDOWN_MARGIN_SECS = 1
# Where KEDA's operator runs (its Helm chart's namespace in docs/deploying.md): the source of a
# metrics-api trigger's requests.
KEDA_NAMESPACE = "keda"


def load(path, render):
    """The rendered objects, each with the source file kustomize recorded (origin annotation,
    then dropped so that what is validated is what `kubectl kustomize` gives)."""
    with open(path, encoding="utf-8") as f:
        objs = [d for d in yaml.safe_load_all(f) if d]
    for obj in objs:
        annotations = obj.get("metadata", {}).get("annotations", {})
        origin = yaml.safe_load(annotations.pop(ORIGIN, "") or "") or {}
        if not annotations and "annotations" in obj.get("metadata", {}):
            del obj["metadata"]["annotations"]
        source = origin.get("path") or origin.get("configuredIn")
        obj["__source"] = os.path.normpath(os.path.join(render, source)) if source else None
    return objs


def name_of(obj):
    source = obj.get("__source")
    name = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
    return f"{name} ({source})" if source else name


def pod_spec(obj):
    spec = obj.get("spec", {})
    if obj.get("kind") in ("Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"):
        return spec.get("template", {}).get("spec", {})
    if obj.get("kind") == "CronJob":
        return spec.get("jobTemplate", {}).get("spec", {}).get("template", {}).get("spec", {})
    if obj.get("kind") == "Pod":
        return spec
    return None


def schema_problems(obj, versions):
    if obj.get("apiVersion", "").startswith("keda.sh/"):
        return []
    obj = {k: v for k, v in obj.items() if k != "__source"}
    out = []
    for version in versions:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError as e:
            out.append(f"{e.message} (a typo in apiVersion or kind?)")
            break
        except kubernetes_validate.ValidationError as e:
            where = "/".join(str(p) for p in e.path) or "(top)"
            out.append(f"Kubernetes {e.version} schema: at {where}: {e.message}")
    return out


def scaled_deployments(objs):
    names = set()
    for o in objs:
        spec = o.get("spec", {})
        if o.get("kind") == "HorizontalPodAutoscaler":
            ref = spec.get("scaleTargetRef", {})
        elif o.get("kind") == "ScaledObject":
            ref = {"kind": "Deployment", **spec.get("scaleTargetRef", {})}
        else:
            continue
        if ref.get("kind") == "Deployment":
            names.add(ref.get("name"))
    return names


def prestop_sleep_secs(container):
    cmd = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    if len(cmd) == 2 and cmd[0] == "sleep" and re.fullmatch(r"\d+", str(cmd[1])):
        return int(cmd[1])
    return container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)


def addr_port(addr):
    """The port of a `host:port` setting, or None."""
    host, _, port = str(addr or "").rpartition(":")
    return int(port) if host and port.isdigit() else None


def sender_port_problems(objs, config):
    """The operations port (SENDER_OPS_ADDR) is for probes and Prometheus, never for clients."""
    out = []
    api, ops = addr_port(config.get("SENDER_ADDR")), addr_port(config.get("SENDER_OPS_ADDR"))
    if api is None or ops is None:
        return [(f"ConfigMap/{CONFIG_MAP}", "SENDER_ADDR and SENDER_OPS_ADDR must both be host:port")]
    if api == ops:
        out.append((f"ConfigMap/{CONFIG_MAP}", "SENDER_OPS_ADDR must have a port of its own"))
    senders = [
        (o, c)
        for o in objs
        for c in (pod_spec(o) or {}).get("containers", [])
        if c.get("command", [None])[0] == "accrual-sender"
    ]
    if not senders:
        return out
    labels = set()
    for o, c in senders:
        name = name_of(o)
        labels.update(o.get("spec", {}).get("template", {}).get("metadata", {}).get("labels", {}).items())
        ports = {p.get("name"): p.get("containerPort") for p in c.get("ports", [])}
        if ports.get("http") != api or ports.get("ops") != ops:
            out.append((name, f"container ports must be http={api} (SENDER_ADDR) and ops={ops} (SENDER_OPS_ADDR): {ports}"))
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            get = c.get(probe, {}).get("httpGet")
            if get is None:
                out.append((name, f"container {c['name']}: no {probe}"))
            elif get.get("port") not in ("ops", ops):
                out.append((name, f"container {c['name']}: {probe} must use the ops port, not {get.get('port')}"))
        if c.get("readinessProbe", {}).get("httpGet", {}).get("path") != "/readyz":
            out.append((name, f"container {c['name']}: readinessProbe must ask /readyz"))
    for o in objs:
        spec, kind = o.get("spec", {}), o.get("kind")
        selects = set((spec.get("selector") or {}).items()) if kind == "Service" else set()
        if kind == "Service" and selects and selects <= labels:
            ports = spec.get("ports", [])
            to_ops = [p for p in ports if p.get("targetPort") in ("ops", ops)]
            if to_ops and len(to_ops) < len(ports):
                out.append((name_of(o), "routes to the sender's ops port (/metrics, /readyz, /backlog) beside other ports: clients of those would reach it; give it a Service of its own"))
            if to_ops and spec.get("type", "ClusterIP") != "ClusterIP":
                out.append((name_of(o), f"exposes the sender's ops port (/metrics, /readyz, /backlog) as a {spec['type']} Service: only ClusterIP keeps it inside the cluster"))
            if to_ops and spec.get("externalIPs"):
                out.append((name_of(o), "exposes the sender's ops port (/metrics, /readyz, /backlog) on external IPs"))
        if kind == "NetworkPolicy":
            selected = set((spec.get("podSelector", {}).get("matchLabels") or {}).items())
            if selected and not selected <= labels:
                continue
            for rule in spec.get("ingress", []):
                opens = not rule.get("ports") or any(p.get("port") in ("ops", ops) for p in rule["ports"])
                if opens and not rule.get("from"):
                    out.append((name_of(o), "opens the sender's ops port (/metrics, /readyz) to every source"))
    return out


def _matches(selector, labels):
    """Whether a label selector (matchLabels and matchExpressions) selects these labels."""
    selector = selector or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for e in selector.get("matchExpressions") or []:
        key, op, values = e.get("key"), e.get("operator"), e.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def keda_reach_problems(objs):
    """A ScaledObject's metrics-api trigger whose url names a Service of this render (host
    `name.namespace[.svc…]`) must reach that Service's pods: some NetworkPolicy selecting them must
    admit namespace `keda` on the target port (the namespace denies all ingress by default)."""
    out = []
    services = {
        (o["metadata"]["name"], o["metadata"].get("namespace")): o for o in objs if o.get("kind") == "Service"
    }
    for so in (o for o in objs if o.get("kind") == "ScaledObject"):
        for i, trigger in enumerate(so.get("spec", {}).get("triggers", [])):
            url = (trigger.get("metadata") or {}).get("url")
            if trigger.get("type") != "metrics-api" or not url:
                continue
            parts = urlsplit(url)
            host = (parts.hostname or "").split(".")
            if len(host) < 2 or (len(host) > 2 and host[2] != "svc"):
                continue  # not a Service's name; validate-keda.mjs says what is wrong with it
            service = services.get((host[0], host[1]))
            port = parts.port or (443 if parts.scheme == "https" else 80)
            sport = next((p for p in (service or {}).get("spec", {}).get("ports", []) if p.get("port") == port), None)
            if service is None or sport is None:
                continue  # validate-keda.mjs reports the dangling reference
            target = sport.get("targetPort", port)
            selector = service["spec"].get("selector") or {}
            pods = []
            for o in objs:
                spec = pod_spec(o)
                template = o.get("spec", {}).get("template", {}).get("metadata", {}).get("labels", {})
                if spec is not None and o["metadata"].get("namespace") == host[1] and selector and all(
                    template.get(k) == v for k, v in selector.items()
                ):
                    names = {p.get("name"): p.get("containerPort") for c in spec.get("containers", []) for p in c.get("ports", [])}
                    number = names.get(target, target)
                    pods.append((o, template, {target, number} | {n for n, num in names.items() if num == number}))
            if not pods:
                out.append((name_of(so), f"triggers[{i}] calls Service/{host[0]}, which selects no pod of this render"))
            for o, template, port_names in pods:
                admitted = False
                for np in objs:
                    if np.get("kind") != "NetworkPolicy" or np["metadata"].get("namespace") != host[1]:
                        continue
                    if not _matches(np.get("spec", {}).get("podSelector"), template):
                        continue
                    for rule in np["spec"].get("ingress", []):
                        ports_ok = not rule.get("ports") or any(p.get("port") in port_names for p in rule["ports"])
                        peers = rule.get("from")
                        from_keda = not peers or any(
                            "namespaceSelector" in peer
                            and _matches(peer["namespaceSelector"], {"kubernetes.io/metadata.name": KEDA_NAMESPACE})
                            and _matches(peer.get("podSelector"), {})
                            and "ipBlock" not in peer
                            for peer in peers
                        )
                        admitted = admitted or (ports_ok and from_keda)
                if not admitted:
                    out.append((
                        name_of(so),
                        f"triggers[{i}] calls {url}, but no NetworkPolicy lets namespace {KEDA_NAMESPACE} reach"
                        f" {name_of(o)} on port {target}",
                    ))
    return out


def policy_problems(render, objs):
    out = []
    config = next(
        (o.get("data", {}) for o in objs if o.get("kind") == "ConfigMap" and o["metadata"]["name"] == CONFIG_MAP),
        None,
    )
    if config is None:
        return [("ConfigMap/" + CONFIG_MAP, "missing: every binary takes its settings from it")]
    grace = int(config.get("SHUTDOWN_GRACE_SECS", "30"))
    real_aws = config.get("AWS_ENDPOINT_URL", None) == ""
    aws = os.path.basename(render) == "aws"
    if aws and not real_aws:
        out.append((f"ConfigMap/{CONFIG_MAP}", "AWS_ENDPOINT_URL must be set empty for real AWS"))
    out.extend(sender_port_problems(objs, config))
    out.extend(keda_reach_problems(objs))
    scaled = scaled_deployments(objs)
    accounts = {o["metadata"]["name"]: o for o in objs if o.get("kind") == "ServiceAccount"}

    for o in objs:
        kind, name = o.get("kind"), name_of(o)
        if kind == "ConfigMap" and "DATABASE_URL" in o.get("data", {}):
            out.append((name, "DATABASE_URL carries a password: it belongs in a Secret"))
        if real_aws and kind in ("ConfigMap", "Secret"):
            keys = set(o.get("data", {})) | set(o.get("stringData", {}))
            for key in sorted(AWS_KEY_NAMES & keys):
                out.append((name, f"static AWS key {key}: use IRSA (pod identity) instead"))
        if real_aws and kind == "TriggerAuthentication" and "podIdentity" not in o.get("spec", {}):
            out.append((name, "KEDA must reach AWS with pod identity, not keys"))
        if kind == "Deployment" and o["metadata"]["name"] in scaled and "replicas" in o.get("spec", {}):
            out.append((name, "has spec.replicas, but an autoscaler owns the count (each apply would reset it)"))

        spec = pod_spec(o)
        if spec is None:
            continue
        containers = spec.get("containers", [])
        uses_config = any(
            ref.get("configMapRef", {}).get("name") == CONFIG_MAP for c in containers for ref in c.get("envFrom", [])
        )
        for c in containers:
            for env in c.get("env", []):
                if real_aws and env.get("name") in AWS_KEY_NAMES:
                    out.append((name, f"container {c['name']}: static AWS key {env['name']}: use IRSA instead"))
                if env.get("name") == "DATABASE_URL" and "value" in env:
                    out.append((name, f"container {c['name']}: DATABASE_URL must come from a Secret"))
        if uses_config and kind != "Job":
            pause = max((prestop_sleep_secs(c) for c in containers), default=0)
            period = spec.get("terminationGracePeriodSeconds", 30)
            if period < pause + grace + SHUTDOWN_MARGIN_SECS:
                out.append((
                    name,
                    f"terminationGracePeriodSeconds {period} leaves no margin over the preStop pause ({pause} s)"
                    f" + SHUTDOWN_GRACE_SECS ({grace} s)",
                ))
        if aws and uses_config:
            account = accounts.get(spec.get("serviceAccountName", "default"))
            arn = (account or {}).get("metadata", {}).get("annotations", {}).get("eks.amazonaws.com/role-arn", "")
            if not arn.startswith("arn:aws:iam::"):
                out.append((name, f"ServiceAccount {spec.get('serviceAccountName', 'default')} names no IAM role (IRSA)"))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubernetes-version", action="append", required=True)
    parser.add_argument("renders", nargs="+", metavar="NAME=FILE")
    args = parser.parse_args()
    problems, count = [], 0
    for arg in args.renders:
        render, _, path = arg.partition("=")
        try:
            objs = load(path, render)
        except yaml.YAMLError as e:
            problems.append(f"{render}: not YAML: {e}")
            continue
        for obj in objs:
            count += 1
            for p in schema_problems(obj, args.kubernetes_version):
                problems.append(f"{render}: {name_of(obj)}: {p}")
        for where, p in policy_problems(render, objs):
            problems.append(f"{render}: {where}: {p}")
    for p in problems:
        print(f"k8s: {p}")
    if problems:
        sys.exit(1)
    versions = " and ".join(args.kubernetes_version)
    print(f"k8s: {count} objects valid against the Kubernetes {versions} schemas (strict), policies hold")


if __name__ == "__main__":
    main()
