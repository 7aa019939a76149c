"""A simulator.v1 client written against the generated Python stubs only (grpcio), as a
third-party orchestrator would: spawn devices, inject a fault by label selector, read a
telemetry stream and check the fault's effect in the points.

Usage: client.py GEN_DIR HOST:PORT. Exits non-zero with a reason on any failure.
"""

import math
import queue
import sys
import threading
import time

sys.path.insert(0, sys.argv[1])
addr = sys.argv[2]

import grpc  # noqa: E402
from google.protobuf import duration_pb2, empty_pb2, struct_pb2  # noqa: E402
from simulator.v1 import device_pb2, orchestrator_pb2 as pb, orchestrator_pb2_grpc  # noqa: E402

MEAN = 50.0


def fail(msg):
    print(f"python client: FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def spec(device_id, zone):
    params = struct_pb2.Struct()
    params.update({"fields": {"level": {"type": "gaussian", "mean": MEAN, "stddev": 1.0}}})
    return device_pb2.DeviceSpec(
        device_id=device_id,
        device_type="py-sensor",
        labels={"zone": zone},
        telemetry_interval=duration_pb2.Duration(nanos=100_000_000),
        behavior_params=params,
        protocol="null",
    )


def by_labels(s):
    return pb.DeviceSelector(label_selector=s)


channel = grpc.insecure_channel(addr)
grpc.channel_ready_future(channel).result(timeout=30)
stub = orchestrator_pb2_grpc.DeviceRuntimeServiceStub(channel)

north = [f"py-north-{i}" for i in range(3)]
south = [f"py-south-{i}" for i in range(3)]
r = stub.SpawnDevices(
    pb.SpawnDevicesRequest(specs=[spec(d, "north") for d in north] + [spec(d, "south") for d in south])
)
if r.spawned != 6 or list(r.failed_device_ids):
    fail(f"spawn: {r}")
st = stub.GetFleetStatus(pb.GetFleetStatusRequest(selector=by_labels("zone in (north,south)")))
if st.total_devices != 6:
    fail(f"fleet status: {st}")

# A bad selector is INVALID_ARGUMENT with a reason, and the server keeps serving.
try:
    stub.GetFleetStatus(pb.GetFleetStatusRequest(selector=by_labels("zone in (north")))
    fail("a bad label selector was accepted")
except grpc.RpcError as e:
    if e.code() != grpc.StatusCode.INVALID_ARGUMENT or not e.details():
        fail(f"bad selector: {e.code()} {e.details()}")

# Event and telemetry streams, read on threads into queues.
events = queue.Queue()
points = queue.Queue()
event_call = stub.StreamEvents(pb.StreamEventsRequest(selector=by_labels("zone=north")))
telemetry_call = stub.StreamTelemetry(
    pb.StreamTelemetryRequest(
        selector=by_labels("zone in (north, south)"),
        batch_size=10,
        flush_interval=duration_pb2.Duration(nanos=100_000_000),
    )
)


def pump(call, q, unpack):
    try:
        for item in call:
            for x in unpack(item):
                q.put(x)
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.CANCELLED:
            q.put(e)


threading.Thread(target=pump, args=(event_call, events, lambda e: [e]), daemon=True).start()
threading.Thread(target=pump, args=(telemetry_call, points, lambda b: b.points), daemon=True).start()


def next_point(deadline):
    try:
        p = points.get(timeout=max(0.1, deadline - time.time()))
    except queue.Empty:
        fail("no telemetry point in time")
    if isinstance(p, Exception):
        fail(f"telemetry stream: {p}")
    return p


def ms(ts):
    return ts.seconds * 1000 + ts.nanos // 1_000_000


# Clean points first.
deadline = time.time() + 60
seen = set()
while len(seen) < 6:
    p = next_point(deadline)
    if p.metric_name != "level" or p.WhichOneof("value") != "double_value":
        fail(f"unexpected point {p}")
    if abs(p.double_value - MEAN) > 10:
        fail(f"clean point out of range: {p}")
    seen.add(p.device_id)

# DATA_CORRUPTION, mode zero, rate 1, on zone=north only, until cleared.
params = struct_pb2.Struct()
params.update({"corruption_rate": 1.0, "mode": "zero"})
stub.InjectFault(
    pb.InjectFaultRequest(
        selector=by_labels("zone=north"),
        fault_type=pb.FAULT_TYPE_DATA_CORRUPTION,
        parameters=params,
    )
)
started = {}
deadline = time.time() + 60
while len(started) < 3:
    try:
        e = events.get(timeout=max(0.1, deadline - time.time()))
    except queue.Empty:
        fail(f"FAULT_INJECTED events: got {sorted(started)}")
    if isinstance(e, Exception):
        fail(f"event stream: {e}")
    if e.event_type == pb.DEVICE_EVENT_TYPE_FAULT_INJECTED:
        if e.device_id not in north:
            fail(f"fault event for a device outside the selector: {e}")
        started[e.device_id] = ms(e.timestamp)

# From each north device's fault start on, its points are 0; south devices are untouched.
zeros = {d: 0 for d in north}
clean_south = {d: 0 for d in south}
deadline = time.time() + 60
while min(zeros.values()) < 10 or min(clean_south.values()) < 10:
    p = next_point(deadline)
    v, t = p.double_value, ms(p.timestamp)
    if p.tags.get("zone") not in ("north", "south"):
        fail(f"point outside the selector: {p}")
    if p.device_id in north and t >= started[p.device_id]:
        if v != 0.0:
            fail(f"{p.device_id}: {v} at {t}, under a zero corruption since {started[p.device_id]}")
        zeros[p.device_id] += 1
    elif p.device_id in south:
        if math.isnan(v) or abs(v - MEAN) > 10:
            fail(f"south device affected: {p}")
        clean_south[p.device_id] += 1

cleared = stub.ClearFaults(pb.ClearFaultsRequest(selector=by_labels("zone=north")))
if cleared.cleared != 3:
    fail(f"clear: {cleared}")
status = stub.GetRuntimeStatus(empty_pb2.Empty())
if status.active_devices != 6 or status.messages_sent_total <= 0:
    fail(f"runtime status: {status}")
stopped = stub.StopDevices(pb.StopDevicesRequest(selector=by_labels("zone")))
if stopped.stopped != 6:
    fail(f"stop: {stopped}")
event_call.cancel()
telemetry_call.cancel()
print(f"python client: ok: zeros={zeros} south={clean_south}")
