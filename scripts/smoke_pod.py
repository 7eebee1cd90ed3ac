#!/usr/bin/env python3
"""Runs the station the way a rendered workload's pod would, against a
Mosquitto and a Redis of its own, and checks that it becomes ready and stops
cleanly on SIGTERM before the pod's terminationGracePeriodSeconds.

Usage: smoke_pod.py MICRODCS_BINARY RENDERED.yaml [WORKLOAD_NAME]
(without a name: every StatefulSet and Deployment in turn)

The pod's container environment (secret references left out but for the
OPC UA user, POD_ID = the first pod's name, $(VAR) expanded:
scripts/pod_env.py) and its ConfigMap TOML are used as they are; only the
broker and Redis addresses, the HTTP port and the OPC UA port are
overridden (free loopback ports). Each writable emptyDir volume gets a fresh
directory. As root the process runs like the container's securityContext
says: in a private mount namespace with the whole file system read-only but
for the emptyDir directories bind-mounted at their mount paths (missing
mount points are created on the host and removed afterwards), as
runAsUser/runAsGroup, with no_new_privs. Without root that part is skipped,
saying so, and environment paths under an emptyDir mount point into its
directory instead. With the OPC UA face on (APP_OPCUA_PORT or opcua.port
non-zero) the port must answer an OPC UA Hello with Acknowledge. Exit code
0 on success, 1 with the reason and the station's log.
"""
import os
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.request

import yaml

import pod_env

READY_ATTEMPTS = 120  # polls of /readyz, 0.25 s apart
OPCUA_ATTEMPTS = 240  # connection attempts to the OPC UA port, 0.25 s apart


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def secret_value(name, ref):
    """The value of a Secret or ConfigMap reference in the smoke: left out
    (the smoke's Mosquitto and Redis have no users), except the OPC UA user,
    which only the station itself checks and without which a face that
    allows no anonymous session refuses to start."""
    if name in ("APP_OPCUA_USERNAME", "APP_OPCUA_PASSWORD"):
        return f"smoke-{name[len('APP_OPCUA_'):].lower()}"
    return None


def make_dirs(path):
    """Creates path's missing directories; returns them, outermost first."""
    missing = []
    p = path
    while not os.path.exists(p):
        missing.append(p)
        p = os.path.dirname(p)
    missing.reverse()
    for d in missing:
        os.mkdir(d, 0o755)
    return missing


def opcua_hello(port, log):
    """An OPC UA Hello (OPC 10000-6 §7.1.2.3) on port; the server must answer
    with Acknowledge (ACKF)."""
    url = f"opc.tcp://127.0.0.1:{port}/".encode()
    body = struct.pack("<5I", 0, 65536, 65536, 0, 0) + struct.pack("<i", len(url)) + url
    hello = b"HELF" + struct.pack("<I", 8 + len(body)) + body
    # Readiness does not wait for the server (it creates its certificate
    # first on an empty PKI volume): retry a refused connection.
    for attempt in range(OPCUA_ATTEMPTS):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(hello)
                head = b""
                while len(head) < 8:
                    chunk = s.recv(8 - len(head))
                    if not chunk:
                        break
                    head += chunk
            break
        except ConnectionRefusedError as e:
            if attempt + 1 == OPCUA_ATTEMPTS:
                fail(f"OPC UA port {port}: {e}", log)
            time.sleep(0.25)
        except OSError as e:
            fail(f"OPC UA port {port}: {e}", log)
    if head[:4] != b"ACKF":
        fail(f"OPC UA port {port} answered a Hello with {head!r}, not ACKF", log)


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
    made_dirs = []
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
        env.update(pod_env.container_env(w, c, secret_value))
        env.update(APP_MQTT_HOSTNAME="127.0.0.1", APP_MQTT_PORT=str(mqtt_port),
                   APP_REDIS_HOSTNAME="127.0.0.1", APP_REDIS_PORT=str(redis_port),
                   APP_HTTP_PORT=str(http_port))
        toml_cfg = tomllib.loads(cm["data"][os.path.basename(cfg_path)])
        opcua_port = int(env.get("APP_OPCUA_PORT") or toml_cfg.get("opcua", {}).get("port", 0))
        if opcua_port:
            opcua_port = free_port()
            env["APP_OPCUA_PORT"] = str(opcua_port)
        # The pod's writable volumes (emptyDir): a fresh directory each,
        # mode 0777 like the kubelet's emptyDir.
        scratch = []
        for m in c.get("volumeMounts", []):
            v = next((v for v in pod.get("volumes", []) if v["name"] == m["name"]), {})
            if "emptyDir" in v and not m.get("readOnly"):
                d = tempfile.mkdtemp(prefix=f"{m['name']}-", dir=work)
                os.chmod(d, 0o777)
                scratch.append((m["mountPath"].rstrip("/"), d))
        as_root = os.geteuid() == 0 and shutil.which("unshare") and shutil.which("setpriv")
        notes = []
        if not as_root:
            # No mount namespace: paths of the environment (and the TOML's
            # opcua.pki_dir) under a volume's mount path point into its
            # directory instead.
            if scratch and toml_cfg.get("opcua", {}).get("pki_dir") and "APP_OPCUA_PKI_DIR" not in env:
                env["APP_OPCUA_PKI_DIR"] = toml_cfg["opcua"]["pki_dir"]
            for k, val in list(env.items()):
                for mp, d in scratch:
                    if val == mp or val.startswith(mp + "/"):
                        env[k] = d + val[len(mp):]
                        notes.append(f"{k}={val} -> {env[k]}")
        cmd = [f"{work}/microdcs"] + args[:args.index("--config") + 1] + [f"{work}/{os.path.basename(cfg_path)}"]
        if as_root:
            uid, gid = sec.get("runAsUser", 65534), sec.get("runAsGroup", 65534)
            drop = ["--no-new-privs"] if sec.get("allowPrivilegeEscalation") is False else []
            # Mount points that the host lacks are made (and removed after the
            # run); the bind mounts exist only in the station's namespace.
            for mp, _ in scratch:
                made_dirs.extend(make_dirs(mp))
            binds = "".join(f"mount --bind {shlex.quote(d)} {shlex.quote(mp)} && " for mp, d in scratch)
            ro = "mount -o remount,bind,ro / && " if sec.get("readOnlyRootFilesystem") else ""
            setup = f"mount --make-rprivate / && {binds}{ro}exec \"$@\""
            cmd = ["unshare", "-m", "sh", "-c", setup, "sh", "setpriv", f"--reuid={uid}",
                   f"--regid={gid}", "--clear-groups", *drop, "--inh-caps=-all", "--bounding-set=-all",
                   "env", "-i", *[f"{k}={v}" for k, v in env.items()], *cmd]
            how = f"uid {uid}, read-only root: {bool(sec.get('readOnlyRootFilesystem'))}, no capabilities"
            if scratch:
                how += ", writable " + ", ".join(mp for mp, _ in scratch)
        else:
            how = "not root: without the securityContext"
            if notes:
                how += "; writable volumes as temporary directories: " + ", ".join(notes)
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
        if opcua_port:
            opcua_hello(opcua_port, log)
            how += f", OPC UA Hello answered on {opcua_port}"

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
        for d in reversed(made_dirs):
            try:
                os.rmdir(d)
            except OSError:
                pass


if __name__ == "__main__":
    main()
