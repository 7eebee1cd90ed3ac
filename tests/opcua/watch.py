"""OPC UA watching client for tests/it/opcua_follow.rs (Python asyncua 2.1).

Usage: watch.py URL WORKDIR --scope S [--seconds N]

Connects anonymously with Basic256Sha256/SignAndEncrypt (a self-signed
client certificate made in WORKDIR), waits until
Objects/<S>/JobManagement/JobOrderControl exists (a scope may appear after
the server started), loads the server's DataTypeDefinitions, subscribes to
the receiver's variables (data changes) and to ISA95JobOrderStatusEventType
events on the receiver, and prints one JSON line per observation until
stdin closes or N seconds pass:

  {"kind": "ready", "receiver": "..."}
  {"kind": "data", "name": "JobOrderList", "value": [...]}      (JSON form)
  {"kind": "event", "type": "...", "source": "...", "message": "...",
   "job_order": {...}, "job_state": [...], "job_response": {...}|null}
  {"kind": "alive", "server_state": 0}    (a read every 2 s, or "error")
  {"kind": "error", "error": "..."}       (then it exits)
"""

import argparse
import asyncio
import dataclasses
import datetime
import enum
import json
import logging
import sys
from pathlib import Path

from asyncua import Client, ua
from asyncua.common.events import get_filter_from_event_type

JC = "http://opcfoundation.org/UA/ISA95-JOBCONTROL_V2/"
MJ = "http://opcfoundation.org/UA/Machinery/Jobs/"
STATION = "urn:microdcs:jobs"

VARIABLES = [
    (None, "CurrentState"),
    (JC, "JobOrderList"),
    (JC, "EquipmentID"),
    (JC, "MaterialClassID"),
    (JC, "MaterialDefinitionID"),
    (JC, "PersonnelID"),
    (JC, "PhysicalAssetID"),
    (JC, "WorkMaster"),
    (JC, "MaxDownloadableJobOrders"),
]


def emit(obj):
    print(json.dumps(obj), flush=True)


def to_json(v):
    """asyncua values as the project's JSON (OPC UA field names)."""
    if v is None:
        return None
    if isinstance(v, (bool, int, float, str)):
        return v.value if isinstance(v, enum.Enum) else v
    if isinstance(v, enum.Enum):
        return v.value
    if isinstance(v, (list, tuple)):
        return [to_json(x) for x in v]
    if isinstance(v, ua.LocalizedText):
        out = {}
        if v.Locale:
            out["Locale"] = v.Locale
        if v.Text is not None:
            out["Text"] = v.Text
        return out
    if isinstance(v, (ua.NodeId, ua.QualifiedName)):
        return v.to_string()
    if isinstance(v, ua.RelativePath):
        return len(v.Elements)
    if isinstance(v, (datetime.datetime,)):
        return v.isoformat()
    if isinstance(v, bytes):
        return v.hex()
    if isinstance(v, ua.Variant):
        return to_json(v.Value)
    if dataclasses.is_dataclass(v):
        out = {}
        for f in dataclasses.fields(v):
            if f.name in ("Encoding", "TypeId", "data_type"):
                continue
            x = getattr(v, f.name)
            if x is None:
                continue
            out[f.name] = to_json(x)
        return out
    return str(v)


class Handler:
    def __init__(self, names):
        self.names = names

    def datachange_notification(self, node, val, data):
        emit({"kind": "data", "name": self.names.get(node.nodeid, str(node.nodeid)), "value": to_json(val)})

    def event_notification(self, event):
        def get(name):
            return to_json(getattr(event, name, None))

        emit(
            {
                "kind": "event",
                "type": get("EventType"),
                "source": get("SourceNode"),
                "message": (get("Message") or {}).get("Text"),
                "event_id": get("EventId"),
                "job_order": get("JobOrder"),
                "job_state": get("JobState"),
                "job_response": get("JobResponse"),
            }
        )

    def status_change_notification(self, status):
        emit({"kind": "status", "status": str(status)})


async def status_event_filter(client, jc):
    """The select clauses of ISA95JobOrderStatusEventType (as asyncua builds
    them) with an OfType where clause. asyncua's default where clause
    (EventType InList [types]) never matches on async-opcua 0.19: its
    content filter cannot compare NodeIds (nodes/events/evaluate.rs
    compare_op), so the server's own OfType is used instead."""
    evtype = client.get_node(ua.NodeId(1006, jc))
    evfilter = await get_filter_from_event_type([evtype], where_clause_generation=False)
    el = ua.ContentFilterElement()
    el.FilterOperator = ua.FilterOperator.OfType
    el.FilterOperands.append(ua.LiteralOperand(Value=ua.Variant(ua.NodeId(1006, jc))))
    evfilter.WhereClause = ua.ContentFilter(Elements=[el])
    return evfilter


async def find_receiver(client, scope, deadline):
    st = await client.get_namespace_index(STATION)
    mj = await client.get_namespace_index(MJ)
    while True:
        try:
            return await client.nodes.objects.get_child(
                [f"{st}:{scope}", f"{mj}:JobManagement", f"{mj}:JobOrderControl"]
            )
        except ua.UaStatusCodeError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.5)


async def stdin_closed():
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)


async def watch(args):
    client = Client(args.url, timeout=30)
    client.application_uri = "urn:microdcs:test-client"
    work = Path(args.workdir)
    key, cert = work / "watch-key.pem", work / "watch-cert.der"
    await client.setup_self_signed_certificate(key, cert)
    await client.set_security_string(f"Basic256Sha256,SignAndEncrypt,{cert},{key}")
    await client.connect()
    try:
        loop = asyncio.get_running_loop()
        receiver = await find_receiver(client, args.scope, loop.time() + 60)
        await client.load_data_type_definitions()
        names = {}
        nodes = []
        for uri, name in VARIABLES:
            idx = 0 if uri is None else await client.get_namespace_index(uri)
            n = await receiver.get_child(f"{idx}:{name}")
            names[n.nodeid] = name
            nodes.append(n)
        sub = await client.create_subscription(100, Handler(names))
        await sub.subscribe_data_change(nodes)
        jc = await client.get_namespace_index(JC)
        await sub.subscribe_events(receiver, evfilter=await status_event_filter(client, jc))
        emit({"kind": "ready", "receiver": receiver.nodeid.to_string()})
        end = loop.time() + args.seconds
        closed = asyncio.ensure_future(stdin_closed())
        while loop.time() < end and not closed.done():
            await asyncio.sleep(2)
            try:
                state = await client.nodes.server_state.read_value()
                emit({"kind": "alive", "server_state": int(state)})
            except Exception as e:  # reported, the watch goes on
                emit({"kind": "alive", "error": f"{type(e).__name__}: {e}"})
    finally:
        await client.disconnect()


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("workdir")
    p.add_argument("--scope", default="line-1")
    p.add_argument("--seconds", type=float, default=300)
    args = p.parse_args()
    try:
        await watch(args)
    except Exception as e:  # the test reads every failure as data
        emit({"kind": "error", "error": f"{type(e).__name__}: {e}"})


if __name__ == "__main__":
    logging.basicConfig(level=logging.CRITICAL, stream=sys.stderr)
    asyncio.run(main())
