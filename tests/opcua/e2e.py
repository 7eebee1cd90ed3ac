"""End-to-end OPC UA job client for tests/it/opcua.rs (Python asyncua 2.1).

Usage: e2e.py URL WORKDIR --scope S --job J --work-master W
              [--user U --password P] [--timeout SECONDS]

What an operator's OPC UA client does with a station: connect with
Basic256Sha256/SignAndEncrypt (a self-signed certificate made in WORKDIR),
build the ISA95 structures from the server's DataTypeDefinitions, subscribe
to ISA95JobOrderStatusEventType events on the job order receiver, call
StoreAndStart with a structured job order, wait until the job ended or
aborted, then read its job response with RequestJobResponseByJobOrderID and
the receiver's JobOrderList.

Prints one JSON line; never raises (a failure is {"ok": false, "error": ...}).
"""

import argparse
import asyncio
import json
import logging
import sys

from asyncua import ua

from client import JC, MJ, STATION, connect


def texts(states):
    """The StateText texts of an ISA95StateDataType list."""
    return [s.StateText.Text for s in (states or [])]


class Events:
    """Collects the job order status events of one subscription."""

    def __init__(self):
        self.queue = asyncio.Queue()

    def event_notification(self, event):
        self.queue.put_nowait(event)

    def datachange_notification(self, node, val, data):
        pass


async def main_scenario(args):
    client = await connect(args)
    try:
        await client.load_data_type_definitions()
        st = await client.get_namespace_index(STATION)
        mj = await client.get_namespace_index(MJ)
        jc = await client.get_namespace_index(JC)
        management = [f"{st}:{args.scope}", f"{mj}:JobManagement"]
        receiver = await client.nodes.objects.get_child(management + [f"{mj}:JobOrderControl"])
        results = await client.nodes.objects.get_child(management + [f"{mj}:JobOrderResults"])

        events = Events()
        sub = await client.create_subscription(100, events)
        # No where clause: asyncua's default one (EventType InList [...])
        # matches nothing on async-opcua 0.19 (README "OPC UA face"); the
        # receiver raises job order status events only. A queue: async-opcua
        # 0.19 gives an event item that asks for none (0) a queue of one, and
        # a recipe's transitions come faster than the publishing interval.
        await sub.subscribe_events(
            receiver,
            client.get_node(ua.NodeId(1006, jc)),
            queuesize=1000,
            where_clause_generation=False,
        )

        order = ua.ISA95JobOrderDataType(
            JobOrderID=args.job,
            Description=[ua.LocalizedText("rear axle", "en")],
            WorkMasterID=[ua.ISA95WorkMasterDataType(ID=args.work_master)],
            Priority=3,
        )
        status = await receiver.call_method(
            f"{jc}:StoreAndStart", order, ua.Variant([], ua.VariantType.LocalizedText)
        )

        seen = []
        final = None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + args.timeout
        while final is None and loop.time() < deadline:
            try:
                ev = await asyncio.wait_for(events.queue.get(), deadline - loop.time())
            except asyncio.TimeoutError:
                break
            job_order = getattr(ev, "JobOrder", None)
            if job_order is None or job_order.JobOrderID != args.job:
                continue
            states = texts(getattr(ev, "JobState", None))
            seen.append(states)
            if states and states[0] in ("Ended", "Aborted"):
                final = states

        response, response_status = await results.call_method(
            f"{jc}:RequestJobResponseByJobOrderID", args.job
        )
        job_list = await (await receiver.get_child(f"{jc}:JobOrderList")).read_value()
        await sub.delete()
        return {
            "ok": True,
            "store_and_start": int(status),
            "event_states": seen,
            "final": final,
            "response_status": int(response_status),
            "response": None
            if response is None
            else {
                "JobOrderID": response.JobOrderID,
                "JobResponseID": response.JobResponseID,
                "JobState": texts(response.JobState),
                "has_data": bool(response.JobResponseData),
            },
            "job_order_list": [
                {"JobOrderID": j.JobOrder.JobOrderID, "State": texts(j.State)}
                for j in (job_list or [])
            ],
        }
    finally:
        await client.disconnect()


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("workdir")
    p.add_argument("--scope", required=True)
    p.add_argument("--job", required=True)
    p.add_argument("--work-master", required=True)
    p.add_argument("--user")
    p.add_argument("--password")
    p.add_argument("--timeout", type=float, default=60.0)
    args = p.parse_args()
    try:
        out = await main_scenario(args)
    except Exception as e:  # the test reads every failure as data
        out = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    logging.basicConfig(level=logging.CRITICAL, stream=sys.stderr)
    asyncio.run(main())
