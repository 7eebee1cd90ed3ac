#!/usr/bin/env python3
"""Checks microdcs's own invariants on rendered Kubernetes manifests.

Usage: check_manifests.py MICRODCS_BINARY RENDERED.yaml [NAME]

For every workload (StatefulSet, Deployment) running the station container:
  - POD_ID comes from the pod name (downward API, metadata.name);
    ($(VAR) in env values is expanded as the kubelet does, scripts/pod_env.py;
    a reference to a variable not defined before it is an error)
  - the liveness probe GETs /healthz and the readiness probe /readyz on the
    port the station listens on (APP_HTTP_PORT, else http.port of the
    mounted TOML; 0 = off is an error);
  - terminationGracePeriodSeconds is above the shutdown grace period
    (APP_PROCESSING_SHUTDOWN_GRACE_PERIOD, else the TOML, else 10 s);
  - the container runs `run --config FILE` with FILE in a mounted ConfigMap;
  - `microdcs config check` accepts the mounted TOML together with the
    manifest's environment and reports no unrecognised APP_ variable;
  - the StatefulSet's serviceName is a headless Service of the rendering;
  - with the OPC UA face on (effective opcua.port non-zero): the container
    declares that TCP port and a Service selecting the pods targets it; the
    PKI directory (opcua.pki_dir, absolute) and its rejected/ lie on a
    writable volume (emptyDir, PVC, ...), not on the read-only root nor in a
    Secret; an own/ or private/ mounted over it comes from a required
    Secret holding cert.der / private.pem (an optional one that is missing
    is an empty read-only directory); the advertised opcua.hostname is set
    and, like the application URI (configured, or from mqtt.identifier),
    does not come from a per-pod value;
  - where the station looks for its certificates and its broker token (the
    effective configuration `config check` prints: mqtt.tls_cert_path,
    mqtt.sat_token_path, the client certificate and Redis TLS files when
    set) is mounted: the CA's and the other files' directories from a
    Secret, the token's directory from a projected serviceAccountToken of
    that file name with an audience and an expiry of at least 10 minutes.
Across the rendering: a workload that is neither processor nor publisher,
a publisher-only workload with more than one replica, and any Service or
PodDisruptionBudget that selects no pod fail.
Exit code 0 when everything holds, 1 with one line per problem otherwise.
"""
import os
import subprocess
import sys
import tempfile
import tomllib

import yaml

import pod_env

CONTAINER = "microdcs"
DEFAULT_GRACE = 10


def truthy(v):
    return str(v).strip().lower() in ("1", "true", "yes", "on")


def mounted_volume(pod, container, file_path):
    """The volume mounted at the directory of file_path, or None."""
    d = os.path.dirname(file_path).rstrip("/")
    mount = next((m for m in container.get("volumeMounts", [])
                  if m["mountPath"].rstrip("/") == d), None)
    if not mount:
        return None
    return next((v for v in pod.get("volumes", []) if v["name"] == mount["name"]), None)


def check_security_mounts(where, pod, container, effective, bad):
    """The certificate and token paths of the effective configuration are
    where the manifest mounts a Secret and the projected token."""
    mqtt, redis = effective.get("mqtt", {}), effective.get("redis", {})
    files = [("mqtt.tls_cert_path", mqtt.get("tls_cert_path"))]
    for key in ("tls_client_cert_path", "tls_client_key_path"):
        files.append((f"mqtt.{key}", mqtt.get(key)))
    if redis.get("ssl"):
        for key in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
            files.append((f"redis.{key}", redis.get(key)))
    for key, path in files:
        if not path:
            continue
        vol = mounted_volume(pod, container, path)
        secret = vol and (vol.get("secret") or any(
            "secret" in s for s in vol.get("projected", {}).get("sources", [])))
        if not secret:
            bad(where, f"{key} is {path}, but no Secret is mounted at {os.path.dirname(path)}")
    token = mqtt.get("sat_token_path")
    if not token:
        bad(where, "the effective configuration has no mqtt.sat_token_path")
        return
    vol = mounted_volume(pod, container, token)
    sources = (vol or {}).get("projected", {}).get("sources", [])
    sat = next((s["serviceAccountToken"] for s in sources
                if s.get("serviceAccountToken", {}).get("path") == os.path.basename(token)), None)
    if not sat:
        bad(where, f"mqtt.sat_token_path is {token}, but no projected serviceAccountToken "
                   f"'{os.path.basename(token)}' is mounted at {os.path.dirname(token)}")
        return
    if not sat.get("audience"):
        bad(where, "the broker's serviceAccountToken has no audience (it would be valid "
                   "for the API server)")
    if int(sat.get("expirationSeconds", 3600)) < 600:
        bad(where, "the broker's serviceAccountToken expires in under 600 s (Kubernetes' minimum)")


WRITABLE_VOLUMES = ("emptyDir", "persistentVolumeClaim", "ephemeral", "hostPath")


def covering_mount(container, path):
    """The volume mount with the longest mountPath that is path or one of its
    ancestors, or None."""
    best = None
    for m in container.get("volumeMounts", []):
        mp = m["mountPath"].rstrip("/") or "/"
        if (path == mp or path.startswith(mp + "/") or mp == "/") and \
                (best is None or len(mp) > len(best["mountPath"].rstrip("/"))):
            best = m
    return best


def volume_of(pod, mount):
    return next((v for v in pod.get("volumes", []) if v["name"] == mount["name"]), {})


def check_opcua_face(where, pod, container, labels, effective, services, bad):
    """With the OPC UA face on (effective opcua.port non-zero): the port is
    declared and a Service targets it, the PKI directory and its rejected/
    are writable volumes, a mounted own/ or private/ is a required Secret
    with the certificate or key, and the application URI is the same on
    every replica."""
    opcua = effective.get("opcua", {})
    port = int(opcua.get("port", 0))
    if port == 0:
        return
    declared = [p for p in container.get("ports", [])
                if p["containerPort"] == port and p.get("protocol", "TCP") == "TCP"]
    if not declared:
        bad(where, f"the OPC UA server listens on {port} (opcua.port), but the container "
                   f"declares no TCP containerPort {port}")
    names = {p.get("name") for p in declared} - {None}

    def targets(svc_port):
        t = svc_port.get("targetPort", svc_port["port"])
        return t == port or t in names

    if not any(s["spec"].get("selector")
               and all(labels.get(k) == v for k, v in s["spec"]["selector"].items())
               and any(targets(sp) for sp in s["spec"].get("ports", []))
               for s in services):
        bad(where, f"no Service selects these pods with a targetPort of the OPC UA port {port}")

    sec = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
    read_only_root = bool(sec.get("readOnlyRootFilesystem"))
    pki = str(opcua.get("pki_dir", ""))
    if not os.path.isabs(pki):
        bad(where, f"opcua.pki_dir {pki!r} is relative (to the image's working directory); "
                   "give an absolute path on a volume")
        return
    pki = os.path.normpath(pki)

    def writable(path, what):
        m = covering_mount(container, path)
        if m is None:
            if read_only_root:
                bad(where, f"{what} {path} is on the read-only root file system; mount a "
                           "writable volume (emptyDir) there")
            return
        vol = volume_of(pod, m)
        kind = next((k for k in vol if k != "name"), "?")
        if m.get("readOnly") or kind not in WRITABLE_VOLUMES:
            bad(where, f"{what} {path} is on the volume {m['name']} ({kind}"
                       f"{', readOnly' if m.get('readOnly') else ''}), which the station "
                       "cannot write")

    varying = pod_env.per_pod_vars(container)
    writable(pki, "opcua.pki_dir")
    writable(f"{pki}/rejected", "the rejected client certificates in")
    for sub, key in (("own", "cert.der"), ("private", "private.pem")):
        m = covering_mount(container, f"{pki}/{sub}/{key}")
        if m is None or m["mountPath"].rstrip("/") in (pki,) or \
                len(m["mountPath"].rstrip("/")) < len(f"{pki}/{sub}"):
            # Created by the station on its PKI volume (checked above).
            continue
        vol = volume_of(pod, m)
        secret = vol.get("secret")
        if not secret:
            bad(where, f"{pki}/{sub} is mounted from {m['name']}, not from a Secret")
            continue
        if secret.get("optional"):
            bad(where, f"{pki}/{sub} comes from the optional Secret {secret.get('secretName')}: "
                       "when it is missing the kubelet mounts an empty read-only directory "
                       f"where the station can neither find nor create {sub}/{key}")
        rel = os.path.relpath(f"{pki}/{sub}/{key}", m["mountPath"])
        items = secret.get("items")
        if items is not None and not any(i.get("path") == rel for i in items):
            bad(where, f"the Secret {secret.get('secretName')} mounted at {m['mountPath']} "
                       f"has no item with the path {rel}")

    # The advertised host name (and the one in a created certificate) is the
    # name clients use for the Service, not each pod's own.
    if not opcua.get("hostname"):
        bad(where, "APP_OPCUA_HOSTNAME / opcua.hostname is unset: the server would advertise "
                   "the pod's host name instead of the name clients connect to")
    elif "APP_OPCUA_HOSTNAME" in varying:
        bad(where, "APP_OPCUA_HOSTNAME differs between replicas; advertise the Service's name")

    # The same application URI on every replica: the configured one or
    # urn:microdcs:{mqtt.identifier} must not come from a per-pod value.
    env_names = {e["name"] for e in container.get("env", [])}
    uri_var = "APP_OPCUA_APPLICATION_URI" if "APP_OPCUA_APPLICATION_URI" in env_names \
        else (None if opcua.get("application_uri") else "APP_MQTT_IDENTIFIER")
    if uri_var in varying:
        bad(where, f"{uri_var} differs between replicas, and with it the OPC UA application "
                   "URI: clients and the certificate expect one URI for the station")


def main():
    binary, rendered = sys.argv[1], sys.argv[2]
    name = sys.argv[3] if len(sys.argv) > 3 else rendered
    with open(rendered) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    problems = []

    def bad(where, msg):
        problems.append(f"{name}: {where}: {msg}")

    configmaps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    services = [d for d in docs if d["kind"] == "Service"]
    workloads = [d for d in docs if d["kind"] in ("StatefulSet", "Deployment")]
    pod_labels = []
    if not workloads:
        bad("rendering", "no StatefulSet or Deployment")

    for w in workloads:
        where = f"{w['kind']}/{w['metadata']['name']}"
        spec = w["spec"]
        pod = spec["template"]["spec"]
        labels = spec["template"]["metadata"].get("labels", {})
        pod_labels.append((where, labels, w))
        sel = spec["selector"].get("matchLabels", {})
        if any(labels.get(k) != v for k, v in sel.items()):
            bad(where, "selector does not match the pod template labels")
        conts = [c for c in pod.get("containers", []) if c["name"] == CONTAINER]
        if len(conts) != 1:
            bad(where, f"no container named {CONTAINER}")
            continue
        c = conts[0]
        env = {}
        for e in c.get("env", []):
            env[e["name"]] = e
        # POD_ID from the pod name.
        pod_id = env.get("POD_ID", {}).get("valueFrom", {}).get("fieldRef", {})
        if pod_id.get("fieldPath") != "metadata.name":
            bad(where, "POD_ID must come from the pod name (fieldRef metadata.name)")

        for var, ref in pod_env.unresolved_refs(c):
            bad(where, f"{var} refers to $({ref}), which is not defined before it: the "
                       "kubelet passes the text $(...) unchanged")

        # The mounted configuration file.
        args = c.get("args", [])
        toml_text, cfg = None, {}
        if args[:1] != ["run"] or "--config" not in args:
            bad(where, f"args must be run --config FILE, got {args}")
        else:
            cfg_path = args[args.index("--config") + 1]
            mount = next((m for m in c.get("volumeMounts", [])
                          if os.path.dirname(cfg_path) == m["mountPath"].rstrip("/")), None)
            vol = mount and next((v for v in pod.get("volumes", []) if v["name"] == mount["name"]), None)
            cm = vol and configmaps.get(vol.get("configMap", {}).get("name"))
            key = os.path.basename(cfg_path)
            if not cm or key not in cm.get("data", {}):
                bad(where, f"{cfg_path} is not a key of a ConfigMap mounted in the pod")
            else:
                toml_text = cm["data"][key]
                cfg = tomllib.loads(toml_text)

        def setting(var, section, key, default):
            e = env.get(var)
            if e is not None and "value" in e and e["value"] != "":
                return e["value"]
            return cfg.get(section, {}).get(key, default)

        # Probes on the station's HTTP port.
        port = int(setting("APP_HTTP_PORT", "http", "port", 0))
        if port == 0:
            bad(where, "APP_HTTP_PORT / http.port is 0: no health endpoints")
        named = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            get = c.get(probe, {}).get("httpGet")
            if not get:
                bad(where, f"{probe} must be an httpGet on {path}")
                continue
            if get.get("path") != path:
                bad(where, f"{probe} path is {get.get('path')}, expected {path}")
            p = get.get("port")
            p = named.get(p) if isinstance(p, str) else p
            if p != port:
                bad(where, f"{probe} port is {get.get('port')} ({p}), the station listens on {port}")

        # Grace period.
        grace = int(setting("APP_PROCESSING_SHUTDOWN_GRACE_PERIOD", "processing",
                            "shutdown_grace_period", DEFAULT_GRACE))
        tgps = pod.get("terminationGracePeriodSeconds", 30)
        if not tgps > grace:
            bad(where, f"terminationGracePeriodSeconds {tgps} must be above the shutdown grace period {grace}")

        # Roles.
        inst = cfg.get("instance", {})
        proc = truthy(setting("APP_IS_PROCESSOR_INSTANCE", "instance", "is_processor_instance",
                              inst.get("is_processor_instance", True)))
        publ = truthy(setting("APP_IS_PUBLISHER_INSTANCE", "instance", "is_publisher_instance",
                              inst.get("is_publisher_instance", True)))
        if not (proc or publ):
            bad(where, "neither processor nor publisher instance")
        if publ and not proc and spec.get("replicas", 1) != 1:
            bad(where, "a publisher-only workload runs exactly one replica")

        # The binary accepts the file and every APP_ variable.
        if toml_text is not None:
            run_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
            # Secret or ConfigMap references: any non-empty value.
            run_env.update(pod_env.container_env(w, c, lambda _name, _ref: "from-secret"))
            with tempfile.NamedTemporaryFile("w", suffix=".toml") as t:
                t.write(toml_text)
                t.flush()
                r = subprocess.run([binary, "config", "check", "--config", t.name],
                                   env=run_env, capture_output=True, text=True)
            for line in r.stderr.splitlines():
                if line.startswith("warning: environment variable"):
                    bad(where, f"config check: {line}")
            if r.returncode != 0:
                bad(where, f"config check failed (exit {r.returncode}): {r.stderr.strip()}")
            else:
                effective = tomllib.loads(r.stdout)
                check_security_mounts(where, pod, c, effective, bad)
                check_opcua_face(where, pod, c, labels, effective, services, bad)

        if w["kind"] == "StatefulSet":
            svc = next((s for s in services if s["metadata"]["name"] == spec.get("serviceName")), None)
            if not svc or svc["spec"].get("clusterIP") != "None":
                bad(where, f"serviceName {spec.get('serviceName')} is not a headless Service here")

    def selects(sel):
        return [where for where, labels, _ in pod_labels
                if sel and all(labels.get(k) == v for k, v in sel.items())]

    for s in services:
        if not selects(s["spec"].get("selector", {})):
            bad(f"Service/{s['metadata']['name']}", "selects no pod")
    for d in docs:
        if d["kind"] == "PodDisruptionBudget":
            if not selects(d["spec"]["selector"].get("matchLabels", {})):
                bad(f"PodDisruptionBudget/{d['metadata']['name']}", "selects no pod")

    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        return 1
    print(f"{name}: {len(workloads)} workload(s) OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
