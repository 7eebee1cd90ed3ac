#!/usr/bin/env python3
"""Checks microdcs's own invariants on rendered Kubernetes manifests.

Usage: check_manifests.py MICRODCS_BINARY RENDERED.yaml [NAME]

For every workload (StatefulSet, Deployment) running the station container:
  - POD_ID comes from the pod name (downward API, metadata.name);
  - the liveness probe GETs /healthz and the readiness probe /readyz on the
    port the station listens on (APP_HTTP_PORT, else http.port of the
    mounted TOML; 0 = off is an error);
  - terminationGracePeriodSeconds is above the shutdown grace period
    (APP_PROCESSING_SHUTDOWN_GRACE_PERIOD, else the TOML, else 10 s);
  - the container runs `run --config FILE` with FILE in a mounted ConfigMap;
  - `microdcs config check` accepts the mounted TOML together with the
    manifest's environment and reports no unrecognised APP_ variable;
  - the StatefulSet's serviceName is a headless Service of the rendering;
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
            for var, e in env.items():
                if "value" in e:
                    run_env[var] = e["value"]
                elif "fieldRef" in e.get("valueFrom", {}):
                    run_env[var] = f"{w['metadata']['name']}-0"
                else:
                    # Secret or ConfigMap reference: any non-empty value.
                    run_env[var] = "from-secret"
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
                check_security_mounts(where, pod, c, tomllib.loads(r.stdout), bad)

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
