"""An independent Sparkplug B host for tests/it/sparkplug.rs: pysparkplug (Eclipse Tahu's
sparkplug_b.proto, compiled by the protobuf runtime) over paho-mqtt, subscribed to
spBv1.0/GROUP/# on a broker.

Usage: sparkplug_host.py HOST PORT GROUP NODES DEVICES_PER_NODE [REBIRTH_NODE]
       sparkplug_host.py --check FILE   (lines "TOPIC HEX" as `mosquitto_sub -F '%t %x'` prints
                                         them: the same checks offline, then the summary)

Prints `subscribed` once subscribed. When every node and device is born and has sent data,
sends NCMD `Node Control/Rebirth` to REBIRTH_NODE (if given) and waits for its new NBIRTH and
the DBIRTHs after it; then prints `kill` and waits for every node's NDEATH (its will, published
by the broker when the simulator's sessions drop). Prints one JSON summary line at the end:
what it saw and every violation of the Sparkplug B rules it checks (births before data, `seq`
continuity per edge node, aliases resolving through the device's DBIRTH, NDEATH `bdSeq` equal
to the node's NBIRTH `bdSeq`).
"""

import json
import os
import sys
import threading
import time

import paho.mqtt.client as mqtt
import pysparkplug as sp

offline = sys.argv[1] == "--check"
if not offline:
    host, port, group = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    n_nodes, per_node = int(sys.argv[4]), int(sys.argv[5])
    rebirth_node = sys.argv[6] if len(sys.argv) > 6 else None
else:
    rebirth_node = None

lock = threading.Lock()
violations = []
nodes = {}  # node -> {"bd_seq", "next_seq", "births", "ndeath_bd_seq"}
devices = {}  # (node, device) -> DBirth payload (None after DDEATH)
counts = {"NBIRTH": 0, "DBIRTH": 0, "DDATA": 0, "DDEATH": 0, "NDEATH": 0, "metrics": 0, "events": 0}
# Events the test expects (SPB_WANT_EVENTS): DDATA whose `event` metric names the event, with
# its fields `EVENT/FIELD` declared by the device's DBIRTH.
want_events = int(os.environ.get("SPB_WANT_EVENTS", "0"))
data_seen = set()
rebirth = {"sent": False, "nbirth": False, "dbirths": set(), "data_after": 0, "first": []}
dcmd = {"device": None, "reflected": False}
DCMD_VALUE = 999.5
done = threading.Event()
phase = {"killed": False}


def bad(msg):
    if len(violations) < 50:
        violations.append(msg)


def check_seq(node, seq, what):
    st = nodes.get(node)
    if st is None:
        bad(f"{what} on {node} before its NBIRTH")
        return
    if seq != st["next_seq"]:
        bad(f"{what} on {node}: seq {seq}, expected {st['next_seq']}")
    st["next_seq"] = (seq + 1) % 256


def on_message(client, userdata, m):
    with lock:
        try:
            handle(client, m)
        except Exception as e:  # a payload pysparkplug cannot decode is a violation too
            bad(f"{m.topic}: {type(e).__name__}: {e}")


def handle(client, m):
    topic = sp.Topic.from_str(m.topic)
    kind = topic.message_type.name
    node, dev = topic.edge_node_id, topic.device_id
    if kind in ("NCMD", "DCMD", "STATE"):
        return
    counts[kind] = counts.get(kind, 0) + 1
    # What the rebirth's node sends right after its new NBIRTH: every device's DBIRTH first.
    if rebirth["nbirth"] and node == rebirth_node and kind != "NBIRTH" and len(rebirth["first"]) < per_node:
        rebirth["first"].append(kind)
    if kind == "NBIRTH":
        p = sp.Message.from_mqtt_message(m).payload
        names = {x.name: x for x in p.metrics}
        if "bdSeq" not in names or "Node Control/Rebirth" not in names:
            bad(f"NBIRTH {node} lacks bdSeq or Node Control/Rebirth: {sorted(names)}")
        if p.seq != 0:
            bad(f"NBIRTH {node}: seq {p.seq}, expected 0")
        st = nodes.setdefault(node, {"births": 0, "ndeath_bd_seq": None})
        st["bd_seq"] = names["bdSeq"].value if "bdSeq" in names else None
        st["next_seq"] = 1
        st["births"] += 1
        for key in list(devices):
            if key[0] == node:
                devices[key] = None
        if rebirth["sent"] and node == rebirth_node and not rebirth["nbirth"]:
            rebirth["nbirth"] = True
    elif kind == "DBIRTH":
        p = sp.Message.from_mqtt_message(m).payload
        check_seq(node, p.seq, f"DBIRTH {dev}")
        for x in p.metrics:
            if x.name is None or x.alias is None or x.datatype == sp.DataType.UNKNOWN:
                bad(f"DBIRTH {node}/{dev}: metric without name, alias or datatype: {x}")
        devices[(node, dev)] = p
        if rebirth["nbirth"] and node == rebirth_node:
            rebirth["dbirths"].add(dev)
    elif kind == "DDATA":
        birth = devices.get((node, dev))
        if birth is None:
            bad(f"DDATA {node}/{dev} before its DBIRTH")
            return
        p = sp.Message.from_mqtt_message(m, birth=birth).payload
        check_seq(node, p.seq, f"DDATA {dev}")
        known = {x.alias for x in birth.metrics}
        for x in p.metrics:
            counts["metrics"] += 1
            if x.alias not in known:
                bad(f"DDATA {node}/{dev}: alias {x.alias} not in its DBIRTH")
            if x.name is None:
                bad(f"DDATA {node}/{dev}: alias {x.alias} does not resolve to a name")
        names = {x.name: x.value for x in p.metrics}
        if "event" in names:
            counts["events"] += 1
            ev = names["event"]
            if not isinstance(ev, str) or not ev:
                bad(f"DDATA {node}/{dev}: event metric without a name: {ev!r}")
            elif not any(n.startswith(ev + "/") for n in names):
                bad(f"DDATA {node}/{dev}: event {ev} without its fields: {sorted(names)}")
        data_seen.add((node, dev))
        if dcmd["device"] == (node, dev) and any(
            x.name == "temperature" and x.value == DCMD_VALUE for x in p.metrics
        ):
            dcmd["reflected"] = True
        if rebirth["nbirth"] and node == rebirth_node:
            rebirth["data_after"] += 1
    elif kind == "DDEATH":
        p = sp.Message.from_mqtt_message(m).payload
        check_seq(node, p.seq, f"DDEATH {dev}")
        devices[(node, dev)] = None
    elif kind == "NDEATH":
        p = sp.Message.from_mqtt_message(m).payload
        st = nodes.get(node)
        bd = p.bd_seq_metric.value
        if st is None:
            bad(f"NDEATH {node} without NBIRTH")
        else:
            st["ndeath_bd_seq"] = bd
            if bd != st["bd_seq"]:
                bad(f"NDEATH {node}: bdSeq {bd}, NBIRTH had {st['bd_seq']}")
        if phase["killed"] and all(s["ndeath_bd_seq"] is not None for s in nodes.values()):
            done.set()


def summary():
    return {
        "violations": violations,
        "counts": counts,
        "nodes": {
            n: {"bd_seq": s.get("bd_seq"), "births": s["births"], "ndeath_bd_seq": s["ndeath_bd_seq"]}
            for n, s in nodes.items()
        },
        "devices_with_data": len(data_seen),
        "rebirth": {
            "sent": rebirth["sent"],
            "nbirth": rebirth["nbirth"],
            "dbirths": len(rebirth["dbirths"]),
            "first": rebirth["first"],
        },
        "dcmd_reflected": dcmd["reflected"],
    }


if offline:
    class Captured:
        def __init__(self, topic, payload):
            self.topic, self.payload, self.qos, self.retain = topic, payload, 0, False

    with open(sys.argv[2]) as f:
        for line in f:
            topic, _, hexed = line.strip().partition(" ")
            on_message(None, None, Captured(topic, bytes.fromhex(hexed)))
    print(json.dumps(summary()), flush=True)
    sys.exit(0)

client = mqtt.Client(client_id=f"spb-host-{group}", clean_session=True)
client.on_message = on_message
subscribed = threading.Event()
client.on_subscribe = lambda *a: subscribed.set()
client.connect(host, port)
client.subscribe(f"spBv1.0/{group}/#", qos=1)
client.loop_start()
subscribed.wait(30)
print("subscribed", flush=True)


def wait_for(cond, limit):
    end = time.time() + limit
    while time.time() < end:
        with lock:
            if cond():
                return True
        time.sleep(0.05)
    return False


everyone = n_nodes * per_node
ok = wait_for(
    lambda: len(nodes) >= n_nodes and len(data_seen) >= everyone and counts["events"] >= want_events,
    60,
)
if not ok:
    bad(f"not every device sent data: {len(nodes)} nodes, {len(data_seen)} devices")
if rebirth_node is not None and ok:
    cmd = sp.NCmd(
        timestamp=sp.get_current_timestamp(),
        metrics=(
            sp.Metric(
                timestamp=None,
                name="Node Control/Rebirth",
                datatype=sp.DataType.BOOLEAN,
                value=True,
            ),
        ),
    )
    with lock:
        rebirth["sent"] = True
    client.publish(f"spBv1.0/{group}/NCMD/{rebirth_node}", cmd.encode(include_dtypes=True), qos=1)
    if not wait_for(
        lambda: rebirth["nbirth"]
        and len(rebirth["dbirths"]) >= per_node
        and rebirth["data_after"] >= per_node,
        60,
    ):
        bad(f"no rebirth of {rebirth_node} after NCMD: {rebirth}")
if rebirth_node is not None and ok:
    # A DCMD write, by name: the device's next DDATA carries the written value.
    with lock:
        target = sorted(d for (n, d) in data_seen if n == rebirth_node)[0]
        dcmd["device"] = (rebirth_node, target)
    cmd = sp.DCmd(
        timestamp=sp.get_current_timestamp(),
        metrics=(
            sp.Metric(timestamp=None, name="temperature", datatype=sp.DataType.DOUBLE, value=DCMD_VALUE),
        ),
    )
    client.publish(
        f"spBv1.0/{group}/DCMD/{rebirth_node}/{target}", cmd.encode(include_dtypes=True), qos=1
    )
    if not wait_for(lambda: dcmd["reflected"], 60):
        bad(f"the DCMD write to {target} did not show in its DDATA")
with lock:
    phase["killed"] = True
print("kill", flush=True)
if not done.wait(60):
    bad("not every node's NDEATH arrived: " + json.dumps({n: s["ndeath_bd_seq"] for n, s in nodes.items()}))
client.loop_stop()
with lock:
    print(json.dumps(summary()), flush=True)
