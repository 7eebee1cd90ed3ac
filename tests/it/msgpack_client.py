# An independent MessagePack-RPC client, written from the wire contract §5
# with the Python `msgpack` package over a raw socket. Driven by the test
# through stdin/stdout, one JSON command per line, one JSON answer per line.
#
# In JSON, {"$bin": base64} stands for MessagePack binary and {"$json": v}
# for binary holding v as JSON (a CloudEvent's `data`).
import base64, json, socket, ssl, sys

import msgpack

conns = {}


def to_wire(v):
    if isinstance(v, dict):
        if "$bin" in v:
            return base64.b64decode(v["$bin"])
        if "$json" in v:
            return json.dumps(v["$json"]).encode()
        return {k: to_wire(x) for k, x in v.items()}
    if isinstance(v, list):
        return [to_wire(x) for x in v]
    return v


def to_json(v):
    if isinstance(v, (bytes, bytearray)):
        try:
            return {"$json": json.loads(v)}
        except Exception:
            return {"$bin": base64.b64encode(v).decode()}
    if isinstance(v, dict):
        return {str(k): to_json(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [to_json(x) for x in v]
    return v


class Conn:
    def __init__(self, host, port, tls):
        s = socket.create_connection((host, port), timeout=60)
        if tls:
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=tls["ca"])
            if tls.get("cert"):
                ctx.load_cert_chain(tls["cert"], tls["key"])
            s = ctx.wrap_socket(s, server_hostname=tls.get("name", "localhost"))
        self.s = s
        self.unpacker = msgpack.Unpacker(raw=False)
        self.frames = []

    def send(self, obj):
        self.s.sendall(msgpack.packb(obj, use_bin_type=True))

    def recv(self, timeout):
        if self.frames:
            return self.frames.pop(0)
        self.s.settimeout(timeout)
        while True:
            try:
                return next(self.unpacker)
            except StopIteration:
                pass
            data = self.s.recv(65536)
            if not data:
                return "eof"
            self.unpacker.feed(data)

    def response(self, msgid, timeout):
        # Notifications that arrive meanwhile are kept for `recv`.
        kept = []
        while True:
            f = self.recv(timeout)
            if f == "eof" or (isinstance(f, list) and f[0] == 1 and f[1] == msgid):
                self.frames = kept + self.frames
                return f
            kept.append(f)


def run(cmd):
    op = cmd["op"]
    name = cmd.get("conn", "a")
    timeout = cmd.get("timeout", 60)
    if op == "connect":
        try:
            conns[name] = Conn(cmd["host"], cmd["port"], cmd.get("tls"))
            if cmd.get("tls"):
                # With TLS 1.3 a refused client certificate shows only at
                # the first read: a heartbeat and a call prove the session.
                conns[name].send([0, 0, "heartbeat", [0]])
                f = conns[name].response(0, timeout)
                if f == "eof":
                    return {"error": "closed"}
            return {"ok": True}
        except Exception as e:
            return {"error": repr(e)}
    c = conns[name]
    try:
        if op == "send":
            c.send(to_wire(cmd["frame"]))
            return {"ok": True}
        if op == "send_many":
            c.s.sendall(b"".join(msgpack.packb(to_wire(f), use_bin_type=True) for f in cmd["frames"]))
            return {"ok": True}
        if op == "send_raw":
            c.s.sendall(bytes.fromhex(cmd["hex"]))
            return {"ok": True}
        if op == "recv":
            return {"frame": to_json(c.recv(timeout))}
        if op == "response":
            return {"frame": to_json(c.response(cmd["msgid"], timeout))}
        if op == "call":
            c.send([0, cmd["msgid"], cmd["method"], to_wire(cmd["params"])])
            return {"frame": to_json(c.response(cmd["msgid"], timeout))}
        if op == "half_close":
            c.s.shutdown(socket.SHUT_WR)
            return {"ok": True}
        if op == "close":
            c.s.close()
            return {"ok": True}
    except socket.timeout:
        return {"timeout": True}
    except (ConnectionError, OSError) as e:
        return {"frame": "eof", "error": repr(e)}
    return {"error": "unknown op " + op}


for line in sys.stdin:
    try:
        answer = run(json.loads(line))
    except Exception as e:
        answer = {"error": repr(e)}
    sys.stdout.write(json.dumps(answer) + "\n")
    sys.stdout.flush()
