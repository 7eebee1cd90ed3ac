"""The environment a container of a rendered pod gets, for the offline
checks (check_manifests.py, smoke_pod.py).

Downward-API values are stand-ins: metadata.name is the first pod's name
(`{workload}-0`), metadata.namespace the workload's namespace or `default`.
`$(VAR)` in a value is expanded as the kubelet does: VAR defined earlier in
the list is substituted, an unknown one is left as written, `$$` is `$`.
"""
import re

_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(value, known):
    """`value` with `$(VAR)` references to `known` substituted."""
    def one(m):
        if m.group(0) == "$$":
            return "$"
        return known.get(m.group(1), m.group(0))
    return _REF.sub(one, value)


def field_value(workload, field_path):
    """A stand-in for a downward-API field of the workload's first pod."""
    meta = workload["metadata"]
    if field_path == "metadata.name":
        return f"{meta['name']}-0"
    if field_path == "metadata.namespace":
        return meta.get("namespace", "default")
    return f"{field_path}-of-{meta['name']}-0"


def per_pod_fields():
    """Downward-API fields whose value differs between replicas."""
    return {"metadata.name", "metadata.uid", "status.podIP", "status.podIPs", "spec.nodeName"}


def container_env(workload, container, secret_value=None):
    """{name: value} in the order of the manifest, expanded.

    `secret_value(name, ref)` gives the value of a Secret or ConfigMap
    reference (None: the variable is left out)."""
    env = {}
    for e in container.get("env", []):
        src = e.get("valueFrom", {})
        if "value" in e:
            env[e["name"]] = expand(e["value"], env)
        elif "fieldRef" in src:
            env[e["name"]] = field_value(workload, src["fieldRef"]["fieldPath"])
        elif secret_value is not None:
            v = secret_value(e["name"], src)
            if v is not None:
                env[e["name"]] = v
    return env


def per_pod_vars(container):
    """Names of variables whose value differs between replicas: from a
    per-pod downward-API field, or referring to one with $(VAR)."""
    out = set()
    for e in container.get("env", []):
        ref = e.get("valueFrom", {}).get("fieldRef", {})
        if ref.get("fieldPath") in per_pod_fields():
            out.add(e["name"])
        elif "value" in e and any(m.group(1) in out for m in _REF.finditer(e["value"])
                                  if m.group(1)):
            out.add(e["name"])
    return out


def unresolved_refs(container):
    """(variable, VAR) for each $(VAR) in a value that the kubelet leaves as
    written: VAR is not defined earlier in the list."""
    seen, out = set(), []
    for e in container.get("env", []):
        if "value" in e:
            out.extend((e["name"], m.group(1)) for m in _REF.finditer(e["value"])
                       if m.group(1) and m.group(1) not in seen)
        seen.add(e["name"])
    return out
