"""Hostile and buggy OPC UA client for tests/it/opcua_attack.rs (Python asyncua 2.1).

Usage: attack.py URL WORKDIR PROBE [--scope S] [--job J] [--count N]

Connects like client.py (Basic256Sha256/SignAndEncrypt, anonymous) and
sends what a hostile or buggy client in a plant could: raw Variants and
hand-made ExtensionObjects the high-level API would refuse. Prints one
JSON line; each probe's outcome is the ReturnStatus (an int) or the name
of the OPC UA status the call failed with (a string). Never raises.

Probes:
  args      wrong, missing and extra arguments, wrong Variant types, null
            and empty structures, bodies that do not decode, structures of
            another type, huge strings and arrays, odd JobOrderIDs
  times     job orders whose StartTime is outside the OPC UA DateTime range
            (raw ticks), then reads each stored job back by Update+query
  objects   methods called on the wrong object (JobManagement, another
            scope's object, a method id of another scope), methods of the
            types, unknown method ids
  walk      browse every node under Objects/<scope>, read every attribute,
            write to every variable, bad monitored-item filters
  framing   a job order whose ExtensionObject body carries bytes after the
            structure (a newer version of it), followed by a Comment
  ids       Store jobs whose ids hold topic characters, control characters,
            U+0000, non-BMP characters, 256 and 257 bytes (wire contract §8)
  nesting   StoreAndStart jobs "n<L>" whose JobOrderParameters nest L levels
            of Subparameters, for each --count level given as --job list
  xml       job orders as XML-encoded ExtensionObject bodies (encoding byte
            2): well-formed, malformed, deeply nested, huge
  race      --count sessions call Start on --job at the same time
  drop      start calls and drop the connection before the answers
"""

import argparse
import asyncio
import json
import logging
import struct
import sys
from pathlib import Path

from asyncua import Client, ua

JC = "http://opcfoundation.org/UA/ISA95-JOBCONTROL_V2/"
MJ = "http://opcfoundation.org/UA/Machinery/Jobs/"
STATION = "urn:microdcs:jobs"


async def connect(args, name="attack"):
    client = Client(args.url, timeout=30)
    client.application_uri = "urn:microdcs:test-client"
    work = Path(args.workdir)
    key, cert = work / "client-key.pem", work / "client-cert.der"
    await client.setup_self_signed_certificate(key, cert)
    await client.set_security_string(f"Basic256Sha256,SignAndEncrypt,{cert},{key}")
    await client.connect()
    return client


class Ids:
    """Namespace indices and the nodes the probes use."""

    async def load(self, client, scope):
        self.st = await client.get_namespace_index(STATION)
        self.mj = await client.get_namespace_index(MJ)
        self.jc = await client.get_namespace_index(JC)
        base = [f"{self.st}:{scope}", f"{self.mj}:JobManagement"]
        self.jm = await client.nodes.objects.get_child(base)
        self.control = await client.nodes.objects.get_child(base + [f"{self.mj}:JobOrderControl"])
        self.results = await client.nodes.objects.get_child(base + [f"{self.mj}:JobOrderResults"])
        self.order_enc = await self.binary_encoding(client, 3008)
        self.state_enc = await self.binary_encoding(client, 3006)
        self.wm_enc = await self.binary_encoding(client, 3007)
        return self

    async def binary_encoding(self, client, jc_type):
        node = client.get_node(ua.NodeId(jc_type, self.jc))
        for ref in await node.get_references(ua.ObjectIds.HasEncoding):
            if ref.BrowseName.Name == "Default Binary":
                return ref.NodeId
        raise RuntimeError(f"no Default Binary of {jc_type}")

    def method(self, parent, name):
        return ua.NodeId(f"{parent}/{name}", self.st)


def outcome(results):
    """The outcome of one CallMethodResult."""
    if not results.StatusCode.is_good():
        return results.StatusCode.name
    out = results.OutputArguments
    return int(out[-1].Value) if out else "no output"


async def raw_call(client, obj, method, variants):
    """Calls with exactly these Variants (no conversion by asyncua)."""
    req = ua.CallMethodRequest()
    req.ObjectId = obj
    req.MethodId = method
    req.InputArguments = variants
    try:
        res = await client.uaclient.call([req])
        return outcome(res[0])
    except ua.UaStatusCodeError as e:
        return type(e).__name__
    except Exception as e:  # a broken connection is a result too
        return f"{type(e).__name__}: {e}"


def ua_string(s):
    if s is None:
        return struct.pack("<i", -1)
    b = s if isinstance(s, bytes) else s.encode()
    return struct.pack("<i", len(b)) + b


def order_body(job, mask=0, rest=b""):
    """An ISA95JobOrderDataType body: mask, JobOrderID, then `rest` (the
    optional fields the mask announces)."""
    return struct.pack("<I", mask) + ua_string(job) + rest


def eo(type_id, body):
    return ua.Variant(ua.ExtensionObject(TypeId=type_id, Body=body), ua.VariantType.ExtensionObject)


def order(ids, job, mask=0, rest=b""):
    return eo(ids.order_enc, order_body(job, mask, rest))


async def probe_args(args):
    client = await connect(args)
    try:
        ids = await Ids().load(client, args.scope)
        c = ids.control.nodeid
        cpath = f"{args.scope}/JobManagement/JobOrderControl"
        rpath = f"{args.scope}/JobManagement/JobOrderResults"
        start = ids.method(cpath, "Start")
        store = ids.method(cpath, "Store")
        update = ids.method(cpath, "Update")
        by_id = ids.method(rpath, "RequestJobResponseByJobOrderID")
        by_state = ids.method(rpath, "RequestJobResponseByJobOrderState")
        r = ids.results.nodeid
        lt = ua.Variant([ua.LocalizedText("c", "en")], ua.VariantType.LocalizedText)
        out = {}
        cases = [
            # Id methods.
            ("start_no_args", c, start, []),
            ("start_int", c, start, [ua.Variant(5, ua.VariantType.Int32)]),
            ("start_null_string", c, start, [ua.Variant(None, ua.VariantType.String)]),
            ("start_string_array", c, start, [ua.Variant(["a", "b"], ua.VariantType.String)]),
            ("start_bytestring", c, start, [ua.Variant(b"j1", ua.VariantType.ByteString)]),
            ("start_comment_int", c, start, [ua.Variant("nope"), ua.Variant(3, ua.VariantType.Int32)]),
            ("start_three_args", c, start, [ua.Variant("nope"), lt, ua.Variant("x")]),
            ("start_empty_variant", c, start, [ua.Variant()]),
            ("start_300_bytes", c, start, [ua.Variant("x" * 300)]),
            ("start_60k", c, start, [ua.Variant("x" * 60000)]),
            ("start_1mb", c, start, [ua.Variant("x" * 1_000_000)]),
            # Order methods.
            ("store_no_args", c, store, []),
            ("store_empty_variant", c, store, [ua.Variant()]),
            ("store_null_eo", c, store, [ua.Variant(ua.ExtensionObject(), ua.VariantType.ExtensionObject)]),
            ("store_eo_array", c, store, [ua.Variant([ua.ExtensionObject(TypeId=ids.order_enc, Body=order_body("arr1"))], ua.VariantType.ExtensionObject)]),
            ("store_state_type", c, store, [eo(ids.state_enc, b"\x00\x00\x00\x00" + ua_string("x") + struct.pack("<I", 1))]),
            ("store_wm_type", c, store, [eo(ids.wm_enc, struct.pack("<I", 0) + ua_string("wm"))]),
            ("store_unknown_type", c, store, [eo(ua.NodeId(999999, ids.jc), b"\x00\x01\x02")]),
            ("store_ns0_type", c, store, [eo(ua.NodeId(ua.ObjectIds.Argument_Encoding_DefaultBinary), b"\x00\x00\x00\x00")]),
            ("store_truncated", c, store, [eo(ids.order_enc, order_body("t1")[:-1])]),
            ("store_body_garbage", c, store, [eo(ids.order_enc, b"\xff" * 64)]),
            ("store_bad_utf8", c, store, [eo(ids.order_enc, order_body(b"\xff\xfe"))]),
            ("store_null_id", c, store, [eo(ids.order_enc, order_body(None))]),
            ("store_empty_id", c, store, [order(ids, "")]),
            ("store_300_id", c, store, [order(ids, "x" * 300)]),
            ("store_all_mask_bits", c, store, [eo(ids.order_enc, order_body("m1", 0xFFFFFFFF))]),
            ("store_extra_trailing", c, store, [eo(ids.order_enc, order_body("tr1") + b"\x00" * 32)]),
            ("store_huge_array_len", c, store, [eo(ids.order_enc, order_body("h1", 0x1, struct.pack("<i", 2_000_000_000)))]),
            ("store_negative_array_len", c, store, [eo(ids.order_enc, order_body("h2", 0x1, struct.pack("<i", -5)))]),
            ("store_comment_int", c, store, [order(ids, "ci1"), ua.Variant(7, ua.VariantType.Int32)]),
            ("store_three_args", c, store, [order(ids, "ta1"), lt, ua.Variant(1, ua.VariantType.Int32)]),
            ("store_string", c, store, [ua.Variant("not-a-structure")]),
            ("update_null_eo", c, update, [ua.Variant(ua.ExtensionObject(), ua.VariantType.ExtensionObject)]),
            # Queries.
            ("by_id_none", r, by_id, []),
            ("by_id_null_string", r, by_id, [ua.Variant(None, ua.VariantType.String)]),
            ("by_id_300", r, by_id, [ua.Variant("y" * 300)]),
            ("by_state_empty_variant", r, by_state, [ua.Variant()]),
            ("by_state_empty_array", r, by_state, [ua.Variant([], ua.VariantType.ExtensionObject)]),
            ("by_state_scalar", r, by_state, [eo(ids.state_enc, struct.pack("<I", 0) + struct.pack("<i", 0) + struct.pack("<B", 0) + struct.pack("<B", 0) + struct.pack("<I", 3))]),
            ("by_state_order_type", r, by_state, [ua.Variant([ua.ExtensionObject(TypeId=ids.order_enc, Body=order_body("x"))], ua.VariantType.ExtensionObject)]),
            ("by_state_null_elements", r, by_state, [ua.Variant([ua.ExtensionObject()], ua.VariantType.ExtensionObject)]),
        ]
        for name, obj, method, variants in cases:
            out[name] = await raw_call(client, obj, method, variants)
            if not isinstance(out[name], int) and not out[name].startswith("Bad"):
                # The server dropped the connection: note it, go on with a new one.
                try:
                    await client.disconnect()
                except Exception:
                    pass
                client = await connect(args)
        # Many calls in one request.
        req = []
        for i in range(200):
            q = ua.CallMethodRequest()
            q.ObjectId, q.MethodId, q.InputArguments = c, start, [ua.Variant(f"none-{i}")]
            req.append(q)
        try:
            res = await client.uaclient.call(req)
            out["many_in_one"] = sorted({str(outcome(x)) for x in res})
        except ua.UaStatusCodeError as e:
            out["many_in_one"] = type(e).__name__
        # Still serving.
        out["alive"] = int(await client.nodes.server_state.read_value())
        return {"ok": True, "out": out}
    finally:
        await client.disconnect()


def ticks(t):
    return struct.pack("<q", t)


async def probe_times(args):
    """StartTime (mask bit 2) as raw ticks."""
    client = await connect(args)
    try:
        ids = await Ids().load(client, args.scope)
        c = ids.control.nodeid
        store = ids.method(f"{args.scope}/JobManagement/JobOrderControl", "Store")
        out = {}
        for name, t in [
            ("zero", 0),
            ("negative", -1),
            ("min", -(2**63)),
            ("max", 2**63 - 1),
            ("max_minus_one", 2**63 - 2),
            ("year_10000", 2650467744000000000 + 10_000_000 * 86400 * 366),
        ]:
            out[name] = await raw_call(client, c, store, [order(ids, f"t-{name}", 0x4, ticks(t))])
        out["alive"] = int(await client.nodes.server_state.read_value())
        return {"ok": True, "out": out}
    finally:
        await client.disconnect()


async def probe_framing(args):
    client = await connect(args)
    try:
        ids = await Ids().load(client, args.scope)
        c = ids.control.nodeid
        sas = ids.method(f"{args.scope}/JobManagement/JobOrderControl", "StoreAndStart")
        comment = ua.Variant([ua.LocalizedText("from a newer client", "en")], ua.VariantType.LocalizedText)
        # Appended: what would be an Int32 Variant if read as the next argument.
        extra = b"\x06" + struct.pack("<i", 7)
        out = {
            "appended_then_comment": await raw_call(
                client, c, sas, [eo(ids.order_enc, order_body("f1") + extra), comment]),
            "appended_alone": await raw_call(
                client, c, sas, [eo(ids.order_enc, order_body("f2") + extra)]),
            "plain_then_comment": await raw_call(client, c, sas, [order(ids, "f3"), comment]),
        }
        out["alive"] = int(await client.nodes.server_state.read_value())
        return {"ok": True, "out": out}
    finally:
        await client.disconnect()


IDS = [
    "a/b", "line#1", "x+y", "tab\there", "nul\u0000in", "del\u007f", "c1\u0085",
    "pct%2F", "emoji\U0001F600", "z" * 256, "z" * 257,
]


async def probe_ids(args):
    client = await connect(args)
    try:
        ids = await Ids().load(client, args.scope)
        c = ids.control.nodeid
        store = ids.method(f"{args.scope}/JobManagement/JobOrderControl", "Store")
        out = [[job, await raw_call(client, c, store, [order(ids, job)])] for job in IDS]
        return {"ok": True, "out": out}
    finally:
        await client.disconnect()


async def probe_nesting(args):
    client = await connect(args)
    try:
        await client.load_data_type_definitions()
        ids = await Ids().load(client, args.scope)
        sas = f"{ids.jc}:StoreAndStart"
        out = []
        for level in [int(x) for x in args.job.split(",")]:
            p = None
            for i in range(level):
                p = ua.ISA95ParameterDataType(
                    ID=f"p{i}", Value=ua.Variant(i, ua.VariantType.Int32),
                    Subparameters=[p] if p is not None else None)
            o = ua.ISA95JobOrderDataType(JobOrderID=f"n{level}", JobOrderParameters=[p])
            try:
                out.append([level, int(await ids.control.call_method(sas, o))])
            except ua.UaStatusCodeError as e:
                out.append([level, type(e).__name__])
        return {"ok": True, "out": out}
    finally:
        await client.disconnect()


class RawEO(ua.ExtensionObject):
    """An ExtensionObject sent as the bytes in `Body` exactly."""


def _patch_raw_eo():
    import asyncua.ua.ua_binary as b
    orig = b.extensionobject_to_binary

    def to_binary(obj):
        if isinstance(obj, RawEO):
            return obj.Body
        return orig(obj)

    b.extensionobject_to_binary = to_binary


def xml_eo(type_id, xml):
    from asyncua.ua.ua_binary import nodeid_to_binary
    raw = nodeid_to_binary(type_id) + b"\x02" + ua_string(xml)
    return ua.Variant(RawEO(Body=raw), ua.VariantType.ExtensionObject)


async def probe_xml(args):
    _patch_raw_eo()
    client = await connect(args)
    try:
        ids = await Ids().load(client, args.scope)
        node = client.get_node(ua.NodeId(3008, ids.jc))
        xml_id = None
        for ref in await node.get_references(ua.ObjectIds.HasEncoding):
            if ref.BrowseName.Name == "Default XML":
                xml_id = ref.NodeId
        c = ids.control.nodeid
        store = ids.method(f"{args.scope}/JobManagement/JobOrderControl", "Store")
        good = "<ISA95JobOrderDataType><JobOrderID>x1</JobOrderID></ISA95JobOrderDataType>"
        deep = "<a>" * 5000 + "</a>" * 5000
        cases = {
            "well_formed": good,
            "malformed": "<ISA95JobOrderDataType><JobOrderID>x2</Job",
            "not_xml": "\u0000\u0001 garbage",
            "deep": deep,
            "entities": '<!DOCTYPE a [<!ENTITY b "bbbbbbbbbb"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;">]><ISA95JobOrderDataType><JobOrderID>&c;</JobOrderID></ISA95JobOrderDataType>',
            "empty": "",
            "big": "<ISA95JobOrderDataType><JobOrderID>" + "y" * 60000 + "</JobOrderID></ISA95JobOrderDataType>",
        }
        out = {"xml_encoding": xml_id is not None}
        for name, xml in cases.items():
            for label, tid in [("xml_id", xml_id), ("binary_id", ids.order_enc)]:
                if tid is None:
                    continue
                out[f"{name}_{label}"] = await raw_call(client, c, store, [xml_eo(tid, xml)])
                if not isinstance(out[f"{name}_{label}"], int) and not out[f"{name}_{label}"].startswith("Bad"):
                    try:
                        await client.disconnect()
                    except Exception:
                        pass
                    client = await connect(args)
        out["alive"] = int(await client.nodes.server_state.read_value())
        return {"ok": True, "out": out}
    finally:
        await client.disconnect()


async def probe_objects(args):
    client = await connect(args)
    try:
        ids = await Ids().load(client, args.scope)
        cpath = f"{args.scope}/JobManagement/JobOrderControl"
        start = ids.method(cpath, "Start")
        v = [ua.Variant(args.job or "j1")]
        out = {}
        out["on_job_management"] = await raw_call(client, ids.jm.nodeid, start, v)
        out["on_results"] = await raw_call(client, ids.results.nodeid, start, v)
        out["on_objects"] = await raw_call(client, ua.NodeId(ua.ObjectIds.ObjectsFolder), start, v)
        other = f"{args.other}/JobManagement/JobOrderControl"
        out["other_scope_method_on_this_object"] = await raw_call(
            client, ids.control.nodeid, ids.method(other, "Start"), v)
        out["this_method_on_other_scope_object"] = await raw_call(
            client, ua.NodeId(other, ids.st), start, v)
        out["unknown_scope_method"] = await raw_call(
            client, ua.NodeId("evil/JobManagement/JobOrderControl", ids.st),
            ids.method("evil/JobManagement/JobOrderControl", "Start"), v)
        out["unknown_method_name"] = await raw_call(
            client, ids.control.nodeid, ids.method(cpath, "Explode"), v)
        out["numeric_method_id"] = await raw_call(client, ids.control.nodeid, ua.NodeId(1, ids.st), v)
        # The methods of the types, on the types.
        for tname, tid in [("receiver_type", 1002), ("provider_type", 1003)]:
            tnode = client.get_node(ua.NodeId(tid, ids.jc))
            for m in await tnode.get_children(refs=ua.ObjectIds.HasComponent, nodeclassmask=ua.NodeClass.Method):
                bn = (await m.read_browse_name()).Name
                if bn in ("Start", "RequestJobResponseByJobOrderID"):
                    out[f"{tname}_{bn}"] = await raw_call(client, tnode.nodeid, m.nodeid, v)
                    out[f"{tname}_{bn}_on_instance"] = await raw_call(client, ids.control.nodeid, m.nodeid, v)
        out["alive"] = int(await client.nodes.server_state.read_value())
        return {"ok": True, "out": out}
    finally:
        await client.disconnect()


async def probe_walk(args):
    client = await connect(args)
    try:
        ids = await Ids().load(client, args.scope)
        root = client.get_node(ua.NodeId(args.scope, ids.st))
        seen, queue, nodes = set(), [root], []
        while queue:
            n = queue.pop()
            if n.nodeid in seen:
                continue
            seen.add(n.nodeid)
            nodes.append(n)
            for ch in await n.get_children(refs=ua.ObjectIds.HierarchicalReferences):
                if ch.nodeid.NamespaceIndex == ids.st:
                    queue.append(ch)
        reads, writes, bad_reads = 0, {}, []
        for n in nodes:
            for attr in range(1, 28):
                rv = ua.ReadValueId()
                rv.NodeId, rv.AttributeId = n.nodeid, attr
                p = ua.ReadParameters()
                p.NodesToRead = [rv]
                res = await client.uaclient.read(p)
                reads += 1
                sc = res[0].StatusCode
                if not sc.is_good() and sc.name not in ("BadAttributeIdInvalid",):
                    bad_reads.append(f"{n.nodeid.to_string()}#{attr}:{sc.name}")
            if await n.read_node_class() == ua.NodeClass.Variable:
                for what, value in [
                    ("value", ua.DataValue(ua.Variant("hacked"))),
                    ("null", ua.DataValue(ua.Variant())),
                ]:
                    try:
                        await n.write_value(value)
                        writes[f"{n.nodeid.Identifier}:{what}"] = "Good"
                    except ua.UaStatusCodeError as e:
                        writes.setdefault(type(e).__name__, 0)
                        writes[type(e).__name__] += 1
                for attr, val in [(ua.AttributeIds.DisplayName, ua.LocalizedText("x")),
                                  (ua.AttributeIds.AccessLevel, ua.Byte(3))]:
                    try:
                        await n.write_attribute(attr, ua.DataValue(ua.Variant(val)))
                        writes[f"{n.nodeid.Identifier}:attr{attr}"] = "Good"
                    except ua.UaStatusCodeError as e:
                        writes.setdefault(type(e).__name__, 0)
                        writes[type(e).__name__] += 1
        # Bad monitored items.
        subs = {}

        class H:
            def datachange_notification(self, *a):
                pass

            def event_notification(self, *a):
                pass

        sub = await client.create_subscription(100, H())
        try:
            ev = ua.EventFilter()
            op = ua.SimpleAttributeOperand()
            op.TypeDefinitionId = ua.NodeId(424242, 77)
            op.BrowsePath = [ua.QualifiedName("NoSuchField", 99)]
            op.AttributeId = ua.AttributeIds.Value
            ev.SelectClauses = [op]
            el = ua.ContentFilterElement()
            el.FilterOperator = ua.FilterOperator.InList
            el.FilterOperands = []
            ev.WhereClause.Elements = [el]
            await sub.subscribe_events(ids.control, evfilter=ev)
            subs["bad_event_filter"] = "accepted"
        except Exception as e:
            subs["bad_event_filter"] = type(e).__name__
        try:
            await sub.subscribe_data_change(ids.control, attr=ua.AttributeIds.EventNotifier)
            subs["data_change_on_object"] = "accepted"
        except Exception as e:
            subs["data_change_on_object"] = type(e).__name__
        try:
            jol = await ids.control.get_child(f"{ids.jc}:JobOrderList")
            dc = ua.DataChangeFilter()
            dc.DeadbandType = 1  # absolute deadband on a structure array
            dc.DeadbandValue = 1.0
            mp = ua.MonitoringParameters()
            mp.Filter = dc
            mp.SamplingInterval = -5
            mp.QueueSize = 4_000_000_000
            req = ua.MonitoredItemCreateRequest()
            req.ItemToMonitor = ua.ReadValueId()
            req.ItemToMonitor.NodeId = jol.nodeid
            req.ItemToMonitor.AttributeId = ua.AttributeIds.Value
            req.ItemToMonitor.IndexRange = "5:2"
            req.MonitoringMode = ua.MonitoringMode.Reporting
            req.RequestedParameters = mp
            res = await sub.create_monitored_items([req])
            subs["deadband_on_structures"] = [str(x) for x in res]
        except Exception as e:
            subs["deadband_on_structures"] = type(e).__name__
        await sub.delete()
        alive = int(await client.nodes.server_state.read_value())
        return {"ok": True, "nodes": len(nodes), "reads": reads, "bad_reads": bad_reads,
                "writes": writes, "subs": subs, "alive": alive}
    finally:
        await client.disconnect()


async def probe_race(args):
    # The first makes the client certificate; the others share it.
    first = await connect(args)
    clients = [first] + list(await asyncio.gather(*[connect(args) for _ in range(args.count - 1)]))
    try:
        ids = await Ids().load(clients[0], args.scope)
        start = ids.method(f"{args.scope}/JobManagement/JobOrderControl", "Start")
        results = await asyncio.gather(*[
            raw_call(c, ids.control.nodeid, start, [ua.Variant(args.job)]) for c in clients
        ])
        return {"ok": True, "statuses": sorted(results)}
    finally:
        await asyncio.gather(*[c.disconnect() for c in clients], return_exceptions=True)


async def probe_drop(args):
    """Sends Start calls and drops the TCP connection without waiting."""
    out = []
    for i in range(args.count):
        client = await connect(args)
        ids = await Ids().load(client, args.scope)
        start = ids.method(f"{args.scope}/JobManagement/JobOrderControl", "Start")
        task = asyncio.ensure_future(
            raw_call(client, ids.control.nodeid, start, [ua.Variant(args.job)]))
        await asyncio.sleep(0)
        # Abort the transport: no CloseSession, no CloseSecureChannel.
        proto = client.uaclient.protocol
        if proto is not None and proto.transport is not None:
            proto.transport.abort()
        try:
            out.append(str(await asyncio.wait_for(task, 10)))
        except Exception as e:
            out.append(type(e).__name__)
    return {"ok": True, "dropped": out}


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("workdir")
    p.add_argument("probe", choices=["args", "times", "framing", "ids", "nesting", "xml", "objects", "walk", "race", "drop"])
    p.add_argument("--scope", default="line-1")
    p.add_argument("--other", default="line-2")
    p.add_argument("--job", default="j1")
    p.add_argument("--count", type=int, default=8)
    args = p.parse_args()
    probes = {
        "args": probe_args,
        "times": probe_times,
        "framing": probe_framing,
        "ids": probe_ids,
        "nesting": probe_nesting,
        "xml": probe_xml,
        "objects": probe_objects,
        "walk": probe_walk,
        "race": probe_race,
        "drop": probe_drop,
    }
    try:
        out = await probes[args.probe](args)
    except Exception as e:  # the test reads every failure as data
        out = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    logging.basicConfig(level=logging.CRITICAL, stream=sys.stderr)
    asyncio.run(main())
