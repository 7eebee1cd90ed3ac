#!/usr/bin/env python3
"""Runs the station the way a rendered workload's pod would, against a
Mosquitto and a Redis of its own, and checks that it becomes ready and stops
cleanly on SIGTERM before the pod's terminationGracePeriodSeconds.

Usage: smoke_pod.py MICRODCS_BINARY RENDERED.yaml [WORKLOAD_NAME]
(without a name: every StatefulSet and Deployment in turn)

The pod's container environment (secret references left out, POD_ID = the
first pod's name) and its ConfigMap TOML are used as they are; only the
broker and Redis addresses and the HTTP port are overridden (free loopback
ports). As root the process runs like the container's securityContext says:
in a private mount namespace with the whole file system read-only, as
runAsUser/runAsGroup, with no_new_privs. Without root that part is skipped,
saying so. Exit code 0 on success, 1 with the reason and the station's log.
"""
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import yaml

READY_ATTEMPTS = 120  # polls of /readyz, 0.25 s apart


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fail(msg, log=None):
    print(f"smoke: {msg}", file=sys.stderr)
    if log:
        with open(log) as f:
            sys.stderr.write(f.read()[-4000:])
    sys.exit(1)


def main():
    binary, rendered = os.path.abspath(sys.argv[1]), sys.argv[2]
    wanted = sys.argv[3] if len(sys.argv) > 3 else None
    docs = [d for d in yaml.safe_load_all(open(rendered)) if d]
    workloads = [d for d in docs if d["kind"] in ("StatefulSet", "Deployment")
                 and (wanted is None or d["metadata"]["name"] == wanted)]
    if not workloads:
        fail("no such workload")
    for w in workloads:
        run_one(binary, docs, w)


def run_one(binary, docs, w):
    pod = w["spec"]["template"]["spec"]
    c = next(c for c in pod["containers"] if c["name"] == "microdcs")
    args = c["args"]
    cfg_path = args[args.index("--config") + 1]
    mount = next(m for m in c["volumeMounts"] if os.path.dirname(cfg_path) == m["mountPath"].rstrip("/"))
    vol = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    cm = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == vol["configMap"]["name"])
    grace = pod.get("terminationGracePeriodSeconds", 30)
    sec = {**pod.get("securityContext", {}), **c.get("securityContext", {})}

    work = tempfile.mkdtemp(prefix="microdcs-smoke-")
    os.chmod(work, 0o755)
    procs = []
    try:
        # The binary and config where a non-root user can read them.
        shutil.copy(binary, f"{work}/microdcs")
        with open(f"{work}/{os.path.basename(cfg_path)}", "w") as f:
            f.write(cm["data"][os.path.basename(cfg_path)])
        os.chmod(f"{work}/{os.path.basename(cfg_path)}", 0o644)
        redis_port, mqtt_port, http_port = free_port(), free_port(), free_port()
        redis = shutil.which("redis-server") or "/usr/sbin/redis-server"
        mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        procs.append(subprocess.Popen([redis, "--port", str(redis_port), "--bind", "127.0.0.1",
                                       "--save", "", "--appendonly", "no", "--dir", work],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        with open(f"{work}/mosquitto.conf", "w") as f:
            f.write(f"listener {mqtt_port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        procs.append(subprocess.Popen([mosquitto, "-c", f"{work}/mosquitto.conf"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

        env = {"PATH": "/usr/bin:/bin"}
        for e in c.get("env", []):
            if "value" in e:
                env[e["name"]] = e["value"]
            elif "fieldRef" in e.get("valueFrom", {}):
                env[e["name"]] = f"{w['metadata']['name']}-0"
        env.update(APP_MQTT_HOSTNAME="127.0.0.1", APP_MQTT_PORT=str(mqtt_port),
                   APP_REDIS_HOSTNAME="127.0.0.1", APP_REDIS_PORT=str(redis_port),
                   APP_HTTP_PORT=str(http_port))
        cmd = [f"{work}/microdcs"] + args[:args.index("--config") + 1] + [f"{work}/{os.path.basename(cfg_path)}"]
        if os.geteuid() == 0 and shutil.which("unshare") and shutil.which("setpriv"):
            uid, gid = sec.get("runAsUser", 65534), sec.get("runAsGroup", 65534)
            drop = ["--no-new-privs"] if sec.get("allowPrivilegeEscalation") is False else []
            remount = "mount --make-rprivate / && mount -o remount,bind,ro / && exec \"$@\"" \
                if sec.get("readOnlyRootFilesystem") else "exec \"$@\""
            cmd = ["unshare", "-m", "sh", "-c", remount, "sh", "setpriv", f"--reuid={uid}",
                   f"--regid={gid}", "--clear-groups", *drop, "--inh-caps=-all", "--bounding-set=-all",
                   "env", "-i", *[f"{k}={v}" for k, v in env.items()], *cmd]
            how = f"uid {uid}, read-only root: {bool(sec.get('readOnlyRootFilesystem'))}, no capabilities"
        else:
            how = "not root: without the securityContext"
        log = f"{work}/station.log"
        with open(log, "w") as out:
            station = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        procs.append(station)

        url = f"http://127.0.0.1:{http_port}"
        for _ in range(READY_ATTEMPTS):
            if station.poll() is not None:
                fail(f"station exited with {station.returncode} before it was ready", log)
            try:
                with urllib.request.urlopen(f"{url}/readyz", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.25)
        else:
            fail("/readyz never answered 200", log)
        with urllib.request.urlopen(f"{url}/healthz", timeout=2) as r:
            if r.status != 200:
                fail(f"/healthz answered {r.status}", log)
        with urllib.request.urlopen(f"{url}/metrics", timeout=2) as r:
            if b"# TYPE" not in r.read():
                fail("/metrics has no Prometheus text", log)

        # What the kubelet does: SIGTERM, SIGKILL after the grace period.
        station.send_signal(signal.SIGTERM)
        try:
            code = station.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            fail(f"still running {grace} s (terminationGracePeriodSeconds) after SIGTERM", log)
        if code != 0:
            fail(f"exit code {code} after SIGTERM", log)
        print(f"smoke: {w['kind']}/{w['metadata']['name']} ready, healthy, metrics, clean stop on SIGTERM ({how})")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
