"""OPC UA test client for tests/it/opcua.rs (Python asyncua 2.1).

Usage: client.py URL WORKDIR SCENARIO [--user U --password P] [--scope S]

Connects with Basic256Sha256/SignAndEncrypt and a self-signed client
certificate made in WORKDIR, runs SCENARIO and prints one JSON line with
what it saw. Never raises: a failure is printed as {"ok": false, "error": ...}.

Scenarios:
  connect  open a session (anonymous unless --user), read the server state
  call     connect, call --method (an id method) once per --job, print the
           ReturnStatus of each
  browse   connect, browse Objects/<scope>/JobManagement/JobOrderControl,
           read the InputArguments of StoreAndStart, list the methods, and
           load the server's DataTypeDefinitions
  order    connect, load the DataTypeDefinitions, call --method (Store,
           StoreAndStart or Update) with a structured ISA95JobOrderDataType
           once per --job (with a Comment if --comment), then once with a
           string instead of the structure; print each ReturnStatus and the
           error of the wrong call
  query    connect, load the DataTypeDefinitions, call
           RequestJobResponseByJobOrderID once per --job and
           RequestJobResponseByJobOrderState once per --state ("5.1" =
           Ended/Completed, "3" = Running), then each once with an
           argument of the wrong type; print statuses, responses and errors
"""

import argparse
import asyncio
import dataclasses
import datetime
import json
import logging
import sys
from pathlib import Path

from asyncua import Client, ua

JC = "http://opcfoundation.org/UA/ISA95-JOBCONTROL_V2/"
MJ = "http://opcfoundation.org/UA/Machinery/Jobs/"
STATION = "urn:microdcs:jobs"


async def connect(args):
    client = Client(args.url, timeout=30)
    client.application_uri = "urn:microdcs:test-client"
    work = Path(args.workdir)
    key, cert = work / "client-key.pem", work / "client-cert.der"
    await client.setup_self_signed_certificate(key, cert)
    await client.set_security_string(f"Basic256Sha256,SignAndEncrypt,{cert},{key}")
    if args.user is not None:
        client.set_user(args.user)
        client.set_password(args.password)
    await client.connect()
    return client


def to_json(o):
    """A decoded OPC UA value as JSON (structures as objects, absent
    optional fields left out, Variants as their value)."""
    if isinstance(o, ua.Variant):
        return to_json(o.Value)
    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        out = {}
        for f in dataclasses.fields(o):
            v = getattr(o, f.name)
            if f.name == "Encoding" or v is None:
                continue
            out[f.name] = to_json(v)
        return out
    if isinstance(o, (list, tuple)):
        return [to_json(x) for x in o]
    if isinstance(o, datetime.datetime):
        return o.isoformat()
    if isinstance(o, (bool, int, float, str)) or o is None:
        return o
    return str(o)


async def receiver_of(client, args):
    st = await client.get_namespace_index(STATION)
    mj = await client.get_namespace_index(MJ)
    control = await client.nodes.objects.get_child(
        [f"{st}:{args.scope}", f"{mj}:JobManagement", f"{mj}:JobOrderControl"]
    )
    results = await client.nodes.objects.get_child(
        [f"{st}:{args.scope}", f"{mj}:JobManagement", f"{mj}:JobOrderResults"]
    )
    return control, results


async def scenario_order(args):
    client = await connect(args)
    try:
        await client.load_data_type_definitions()
        jc = await client.get_namespace_index(JC)
        control, _ = await receiver_of(client, args)
        method = f"{jc}:{args.method}"
        out = []
        for job in args.job:
            order = ua.ISA95JobOrderDataType(
                JobOrderID=job,
                Description=[ua.LocalizedText(Text="rear axle", Locale="en")],
                WorkMasterID=[ua.ISA95WorkMasterDataType(ID="wm-axle")],
                Priority=3,
            )
            call_args = [order]
            if args.comment is not None:
                call_args.append(
                    ua.Variant(
                        [ua.LocalizedText(Text=args.comment, Locale="en")],
                        ua.VariantType.LocalizedText,
                    )
                )
            try:
                status = await control.call_method(method, *call_args)
                out.append({"job": job, "status": int(status)})
            except ua.UaStatusCodeError as e:
                out.append({"job": job, "error": type(e).__name__})
        try:
            await control.call_method(method, "not-a-structure")
            wrong = "accepted"
        except ua.UaStatusCodeError as e:
            wrong = type(e).__name__
        return {"ok": True, "calls": out, "wrong_type": wrong}
    finally:
        await client.disconnect()


async def scenario_query(args):
    client = await connect(args)
    try:
        await client.load_data_type_definitions()
        jc = await client.get_namespace_index(JC)
        _, results = await receiver_of(client, args)
        by_id = []
        for job in args.job:
            response, status = await results.call_method(
                f"{jc}:RequestJobResponseByJobOrderID", job
            )
            by_id.append({"job": job, "status": int(status), "response": to_json(response)})
        by_state = []
        for state in args.state:
            entries = [
                ua.ISA95StateDataType(
                    BrowsePath=ua.RelativePath(),
                    StateText=ua.LocalizedText(),
                    StateNumber=ua.UInt32(int(n)),
                )
                for n in state.split(".")
            ]
            responses, status = await results.call_method(
                f"{jc}:RequestJobResponseByJobOrderState",
                ua.Variant(entries, ua.VariantType.ExtensionObject),
            )
            by_state.append(
                {"state": state, "status": int(status), "responses": to_json(responses or [])}
            )
        wrong = []
        for name, arg in [
            ("RequestJobResponseByJobOrderID", ua.Variant(5, ua.VariantType.Int32)),
            ("RequestJobResponseByJobOrderState", ua.Variant("Running")),
        ]:
            try:
                await results.call_method(f"{jc}:{name}", arg)
                wrong.append("accepted")
            except ua.UaStatusCodeError as e:
                wrong.append(type(e).__name__)
        return {"ok": True, "by_id": by_id, "by_state": by_state, "wrong_type": wrong}
    finally:
        await client.disconnect()


async def scenario_connect(args):
    client = await connect(args)
    try:
        state = await client.nodes.server_state.read_value()
        return {"ok": True, "server_state": int(state)}
    finally:
        await client.disconnect()


async def scenario_browse(args):
    client = await connect(args)
    try:
        st = await client.get_namespace_index(STATION)
        mj = await client.get_namespace_index(MJ)
        jc = await client.get_namespace_index(JC)
        receiver = await client.nodes.objects.get_child(
            [f"{st}:{args.scope}", f"{mj}:JobManagement", f"{mj}:JobOrderControl"]
        )
        children = await receiver.get_children()
        names = []
        for c in children:
            names.append((await c.read_browse_name()).Name)
        method = await receiver.get_child(f"{jc}:StoreAndStart")
        inputs = await (await method.get_child("0:InputArguments")).read_value()
        outputs = await (await method.get_child("0:OutputArguments")).read_value()
        results = await client.nodes.objects.get_child(
            [f"{st}:{args.scope}", f"{mj}:JobManagement", f"{mj}:JobOrderResults"]
        )
        result_names = [(await c.read_browse_name()).Name for c in await results.get_children()]
        types = await client.load_data_type_definitions()
        return {
            "ok": True,
            "receiver": receiver.nodeid.to_string(),
            "children": sorted(names),
            "results_children": sorted(result_names),
            "inputs": [
                {"name": a.Name, "type": a.DataType.to_string(), "rank": a.ValueRank}
                for a in inputs
            ],
            "outputs": [
                {"name": a.Name, "type": a.DataType.to_string(), "rank": a.ValueRank}
                for a in outputs
            ],
            "jc_type_id": ua.NodeId(3008, jc).to_string(),
            "types": sorted(types.keys()),
            "has_job_order_type": hasattr(ua, "ISA95JobOrderDataType"),
        }
    finally:
        await client.disconnect()


async def scenario_call(args):
    client = await connect(args)
    try:
        st = await client.get_namespace_index(STATION)
        mj = await client.get_namespace_index(MJ)
        jc = await client.get_namespace_index(JC)
        receiver = await client.nodes.objects.get_child(
            [f"{st}:{args.scope}", f"{mj}:JobManagement", f"{mj}:JobOrderControl"]
        )
        out = []
        for job in args.job:
            try:
                status = await receiver.call_method(f"{jc}:{args.method}", job)
                out.append({"job": job, "status": int(status)})
            except ua.UaStatusCodeError as e:
                out.append({"job": job, "error": type(e).__name__})
        return {"ok": True, "calls": out}
    finally:
        await client.disconnect()


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("workdir")
    p.add_argument("scenario", choices=["connect", "browse", "call", "order", "query"])
    p.add_argument("--method", default="Start")
    p.add_argument("--job", action="append", default=[])
    p.add_argument("--state", action="append", default=[])
    p.add_argument("--comment")
    p.add_argument("--user")
    p.add_argument("--password")
    p.add_argument("--scope", default="line-1")
    args = p.parse_args()
    try:
        scenarios = {
            "connect": scenario_connect,
            "browse": scenario_browse,
            "call": scenario_call,
            "order": scenario_order,
            "query": scenario_query,
        }
        out = await scenarios[args.scenario](args)
    except Exception as e:  # the test reads every failure as data
        out = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    logging.basicConfig(level=logging.CRITICAL, stream=sys.stderr)
    asyncio.run(main())
