#!/usr/bin/env python3
"""The official Python `kubernetes` client against Switchyard.

Usage: client_smoke.py KUBECONFIG

Loads the kubeconfig (client-certificate auth), creates a Service and a Deployment, lists and
watches services (ADDED, MODIFIED, DELETED in order), patches, scales, deletes, and checks the
errors the client raises for an invalid object (422) and a missing one (404). Prints one line per
check and `PYTHON CLIENT SMOKE: PASS` at the end; any failure raises and exits non-zero.
"""

import json
import sys

from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

NS = "default"


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    print("ok:", what, flush=True)


def service(name, port=80, labels=None):
    return client.V1Service(
        metadata=client.V1ObjectMeta(name=name, labels=labels or {"app": name}),
        spec=client.V1ServiceSpec(
            selector={"app": name},
            ports=[client.V1ServicePort(name="http", port=port, target_port=8080)],
        ),
    )


def expect_api_error(status, fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except ApiException as e:
        check(e.status == status, "%s raises ApiException %d (got %s)" % (fn.__name__, status, e.status))
        return json.loads(e.body)
    raise AssertionError("%s did not fail" % fn.__name__)


def main(kubeconfig):
    config.load_kube_config(config_file=kubeconfig)
    v1 = client.CoreV1Api()
    apps = client.AppsV1Api()

    version = client.VersionApi().get_code()
    check(version.major == "1", "server version %s" % version.git_version)

    created = v1.create_namespaced_service(NS, service("web"))
    check(created.metadata.name == "web", "create service")
    check(bool(created.spec.cluster_ip) and created.spec.cluster_ip != "None", "clusterIP allocated: %s" % created.spec.cluster_ip)
    check(created.spec.ports[0].protocol == "TCP", "port protocol defaulted")

    deployment = client.V1Deployment(
        metadata=client.V1ObjectMeta(name="web"),
        spec=client.V1DeploymentSpec(
            replicas=2,
            selector=client.V1LabelSelector(match_labels={"app": "web"}),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels={"app": "web"}),
                spec=client.V1PodSpec(containers=[client.V1Container(name="web", image="nginx:1.27")]),
            ),
        ),
    )
    d = apps.create_namespaced_deployment(NS, deployment)
    check(d.spec.replicas == 2 and d.metadata.generation == 1, "create deployment")
    check(d.spec.strategy.type == "RollingUpdate", "deployment strategy defaulted")

    listed = v1.list_namespaced_service(NS)
    names = sorted(s.metadata.name for s in listed.items)
    check("web" in names and "kubernetes" in names, "list services: %s" % names)
    rv = listed.metadata.resource_version
    check(bool(rv), "list has a resourceVersion")

    # Changes after the list, then a watch from the list's resourceVersion replays them in order.
    v1.create_namespaced_service(NS, service("watched"))
    v1.patch_namespaced_service(
        "watched", NS, {"metadata": {"labels": {"phase": "two"}}},
        _content_type="application/merge-patch+json",
    )
    v1.delete_namespaced_service("watched", NS)
    seen = []
    w = watch.Watch()
    for ev in w.stream(v1.list_namespaced_service, NS, resource_version=rv, timeout_seconds=30):
        seen.append((ev["type"], ev["object"].metadata.name))
        if len(seen) == 3:
            w.stop()
    check(seen == [("ADDED", "watched"), ("MODIFIED", "watched"), ("DELETED", "watched")], "watch from resourceVersion: %s" % seen)

    # A watch without a resourceVersion starts with the current state.
    initial = set()
    w = watch.Watch()
    for ev in w.stream(v1.list_namespaced_service, NS, timeout_seconds=30):
        check(ev["type"] == "ADDED", "initial watch event %s %s" % (ev["type"], ev["object"].metadata.name))
        initial.add(ev["object"].metadata.name)
        if {"web", "kubernetes"} <= initial:
            w.stop()
    check({"web", "kubernetes"} <= initial, "initial watch events cover the state")

    # Patches: the client's default for a list body is a JSON patch; merge and strategic by name.
    p = v1.patch_namespaced_service("web", NS, [{"op": "add", "path": "/metadata/labels/tier", "value": "front"}])
    check(p.metadata.labels.get("tier") == "front", "json patch")
    p = v1.patch_namespaced_service(
        "web", NS, {"spec": {"ports": [{"name": "metrics", "port": 9090}]}},
        _content_type="application/strategic-merge-patch+json",
    )
    check(sorted(x.port for x in p.spec.ports) == [80, 9090], "strategic merge patch merges ports by port")
    p = v1.patch_namespaced_service(
        "web", NS, {"metadata": {"annotations": {"note": "merged"}}},
        _content_type="application/merge-patch+json",
    )
    check(p.metadata.annotations.get("note") == "merged", "merge patch")
    scale = apps.patch_namespaced_deployment_scale(
        "web", NS, {"spec": {"replicas": 3}}, _content_type="application/merge-patch+json",
    )
    check(scale.spec.replicas == 3, "scale patch")
    check(apps.read_namespaced_deployment("web", NS).spec.replicas == 3, "deployment scaled")

    # Errors: an invalid object is 422 Invalid with causes; a missing one is 404 NotFound.
    body = expect_api_error(422, v1.create_namespaced_service, NS, service("Bad_Name"))
    check(body["reason"] == "Invalid", "422 reason Invalid")
    fields = [c.get("field") for c in body["details"]["causes"]]
    check("metadata.name" in fields, "422 names metadata.name: %s" % fields)
    body = expect_api_error(422, v1.create_namespaced_service, NS, service("zero", port=0))
    check(any(c.get("field") == "spec.ports[0].port" for c in body["details"]["causes"]), "422 names spec.ports[0].port")
    body = expect_api_error(404, v1.read_namespaced_service, "missing", NS)
    check(body["reason"] == "NotFound" and body["details"]["name"] == "missing", "404 NotFound names the object")
    expect_api_error(409, v1.create_namespaced_service, NS, service("web"))

    # Deletes.
    v1.delete_namespaced_service("web", NS)
    apps.delete_namespaced_deployment("web", NS)
    expect_api_error(404, v1.read_namespaced_service, "web", NS)
    expect_api_error(404, apps.read_namespaced_deployment, "web", NS)
    remaining = sorted(s.metadata.name for s in v1.list_namespaced_service(NS).items)
    check(remaining == ["kubernetes"], "only the kubernetes service is left: %s" % remaining)

    print("PYTHON CLIENT SMOKE: PASS", flush=True)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: client_smoke.py KUBECONFIG")
    main(sys.argv[1])
