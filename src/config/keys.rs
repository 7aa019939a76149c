//! The key catalogue: every table of the fleet, profile and scenario files, with each key's
//! type, default and one-line doc, in the order the walker lists them in its "accepted keys
//! here" messages.
//!
//! It is the one description of the files' shape: the loader takes its accepted-key lists
//! from it where a table has no list of its own ([`Spec::names`]), `iot-sim schema` renders
//! it as a JSON Schema ([`super::schema`]), and the tests in `schema.rs` load a probe of every
//! table through the real loader and compare the keys the loader accepts with the catalogue,
//! both ways. A key added to the loader but not here (or the other way round) fails them.
//!
//! This module is data only: it imports nothing from the rest of the crate, so that every
//! layer may read it.

/// The JSON shape of one key's value.
#[derive(Clone, Copy, Debug)]
pub enum Ty {
    Str,
    /// A string matching a regular expression.
    Pattern(&'static str),
    Bool,
    /// An integer within `[lo, hi]`.
    Int(i64, i64),
    /// An integer out of a list.
    IntEnum(&'static [i64]),
    /// A finite number.
    Num,
    /// A number within `[lo, hi]`.
    Range(f64, f64),
    /// A duration string such as `"500ms"`, `"5s"` or `"1h30m"`.
    Duration,
    /// An RFC 3339 date-time (a TOML date-time or a string).
    DateTime,
    /// A string out of a list.
    Enum(&'static [&'static str]),
    /// A protocol name (`console`, `file`, `null`, `mqtt`, `amqp`, `http`, `coap`).
    Protocol,
    /// A table of labels: any key, a string (or number or boolean) value.
    Labels,
    /// A table with the keys of a [`Spec`]; any other key is refused.
    Table(&'static Spec),
    /// A table whose keys are names chosen by the user, each value of the given type.
    Map(&'static Ty),
    Array(&'static Ty),
    /// A shared definition of the schema (`field`, `generator`, `profile`).
    Def(&'static str),
    AnyOf(&'static [Ty]),
    /// Any value (a static field's constant).
    Any,
}

/// One key of a table.
#[derive(Clone, Copy, Debug)]
pub struct Key {
    pub name: &'static str,
    pub ty: Ty,
    pub doc: &'static str,
    /// The default as JSON text, where the key has a fixed one.
    pub default: Option<&'static str>,
    pub required: bool,
}

impl Key {
    const fn new(name: &'static str, ty: Ty, doc: &'static str) -> Key {
        Key { name, ty, doc, default: None, required: false }
    }
    const fn req(self) -> Key {
        Key { required: true, ..self }
    }
    const fn def(self, json: &'static str) -> Key {
        Key { default: Some(json), ..self }
    }
}

const fn k(name: &'static str, ty: Ty, doc: &'static str) -> Key {
    Key::new(name, ty, doc)
}

/// One table: its TOML path as the docs write it, and its keys in the walker's order.
#[derive(Debug)]
pub struct Spec {
    pub path: &'static str,
    pub doc: &'static str,
    pub keys: &'static [Key],
}

impl Spec {
    /// The key names, in order: the walker's accepted list for this table.
    pub fn names(&self) -> Vec<&'static str> {
        self.keys.iter().map(|k| k.name).collect()
    }
}

/// One `type = "..."` of a table whose keys depend on its type (generators, fault params).
#[derive(Debug)]
pub struct Variant {
    pub name: &'static str,
    pub doc: &'static str,
    pub keys: &'static [Key],
}

impl Variant {
    pub fn names(&self) -> Vec<&'static str> {
        self.keys.iter().map(|k| k.name).collect()
    }
}

const STRINGS: Ty = Ty::Array(&Ty::Str);
const NUMBERS: Ty = Ty::Array(&Ty::Num);
const MATRIX: Ty = Ty::Array(&NUMBERS);
const NON_NEG: Ty = Ty::Range(0.0, f64::MAX);
const QOS: Ty = Ty::Int(0, 2);
/// A topic template: literal text with `{device_id}`, `{device_type}` and `{labels.KEY}`.
const TEMPLATE: Ty = Ty::Str;

// ---------------------------------------------------------------------------------------------
// The fleet file.

/// The top level of a fleet file.
pub const FLEET_FILE: Spec = Spec {
    path: "",
    doc: "An iot-sim fleet file: who publishes what, where to, and for how long.",
    keys: &[
        k("run", Ty::Table(&RUN), "How the run goes: seed, clock, speed, start time, duration."),
        k("sink", Ty::Table(&SINK), "Where telemetry goes: one table per protocol."),
        k(
            "profiles",
            Ty::Map(&Ty::Def("profile")),
            "Device profiles by name: protocol, interval, topic and fields.",
        ),
        k(
            "fleet",
            Ty::Array(&Ty::Table(&FLEET_ENTRY)),
            "The devices: [[fleet]] entries of a profile and a count (required to run).",
        ),
        k(
            "threshold",
            Ty::Array(&Ty::Table(&THRESHOLD)),
            "Pass/fail bounds judged at the end of the run (exit code 3 when one fails).",
        ),
        k("audit", Ty::Table(&AUDIT), "The delivery audit run next to the fleet."),
    ],
};

pub const RUN: Spec = Spec {
    path: "run",
    doc: "How the run goes.",
    keys: &[
        k(
            "seed",
            Ty::AnyOf(&[Ty::Int(0, i64::MAX), Ty::Pattern("^[0-9]+$")]),
            "Master seed: the same seed, config and start time replay the same bytes.",
        ),
        k("cores", Ty::Int(1, 1024), "Number of shards (one pinned thread each); default: all cores."),
        k(
            "clock",
            Ty::Enum(&["realtime", "virtual"]),
            "realtime: sim time follows the wall clock (scaled by speed); virtual: as fast as possible.",
        )
        .def("\"realtime\""),
        k("speed", Ty::Range(f64::MIN_POSITIVE, 1e6), "Realtime only: sim seconds per wall second.")
            .def("1.0"),
        k("start_time", Ty::DateTime, "Sim time of the start, RFC 3339 (default: now)."),
        k("duration", Ty::Duration, "Sim time to run, such as \"10m\" (default: until stopped)."),
        k("report_dir", Ty::Str, "Where report.json, report.html and the .hgrm files go.")
            .def("\"iot-sim-report\""),
        k(
            "progress_interval",
            Ty::Duration,
            "How often a progress line is written (at least 100ms).",
        )
        .def("\"5s\""),
        k(
            "timer_slack",
            Ty::Duration,
            "Realtime: a shard sleeps at least this long between wake-ups (at most 100ms).",
        )
        .def("\"0s\""),
        k(
            "pin",
            Ty::Bool,
            "Pin each shard's thread to its core; false leaves them to the scheduler.",
        )
        .def("true"),
        k(
            "scenario",
            Ty::Str,
            "A scenario file to run on this fleet (relative to the fleet file's folder).",
        ),
        k(
            "journal_max_bytes",
            Ty::Int(0, 1 << 40),
            "Bound of the session journal (REPORT_DIR/journal.jsonl, gRPC or admin on); 0: none.",
        )
        .def("67108864"),
    ],
};

pub const SINK: Spec = Spec {
    path: "sink",
    doc: "Where telemetry goes.",
    keys: &[
        k("console", Ty::Table(&SINK_EMPTY), "Print to stdout (no settings)."),
        k("file", Ty::Table(&SINK_FILE), "A JSON Lines file."),
        k("null", Ty::Table(&SINK_EMPTY), "Count and discard (no settings)."),
        k("mqtt", Ty::Table(&SINK_MQTT), "An MQTT broker (3.1.1 or 5)."),
        k("amqp", Ty::Table(&SINK_AMQP), "An AMQP 0-9-1 broker (RabbitMQ)."),
        k("http", Ty::Table(&SINK_HTTP), "HTTP POSTs to an endpoint."),
        k("coap", Ty::Table(&SINK_COAP), "A CoAP server (UDP)."),
    ],
};

/// `[sink.console]` and `[sink.null]`.
pub const SINK_EMPTY: Spec = Spec { path: "sink.console", doc: "No settings.", keys: &[] };

pub const SINK_FILE: Spec = Spec {
    path: "sink.file",
    doc: "A JSON Lines file.",
    keys: &[k("path", Ty::Str, "The file to write (relative to the working directory).").req()],
};

const BACKOFF_INITIAL: Key =
    k("backoff_initial", Ty::Duration, "First reconnect/retry delay (doubles up to backoff_max).")
        .def("\"100ms\"");
const BACKOFF_MAX: Key =
    k("backoff_max", Ty::Duration, "Longest reconnect/retry delay.").def("\"10s\"");
const QUEUE_SIZE: Key = k(
    "queue_size",
    Ty::Int(1, 10_000_000),
    "Messages queued per connection before the backpressure policy applies.",
)
.def("10000");

pub const SINK_MQTT: Spec = Spec {
    path: "sink.mqtt",
    doc: "An MQTT broker. Credentials come from IOT_SIM_MQTT_USERNAME / IOT_SIM_MQTT_PASSWORD.",
    keys: &[
        k(
            "url",
            Ty::Str,
            "Broker URL: mqtt://, tcp://, mqtts://, ssl://, ws:// or wss:// (no password).",
        )
        .def("\"mqtt://127.0.0.1:1883\""),
        k("version", Ty::IntEnum(&[3, 4, 5]), "Protocol version: 4 (3.1.1; 3 is read as 4) or 5.")
            .def("4"),
        k("qos", QOS, "QoS of the pooled connections (a profile's qos overrides it).").def("1"),
        k("retain", Ty::Bool, "Publish with the retain flag.").def("false"),
        k("pool_size", Ty::Int(1, 1024), "Pooled connections per shard.").def("4"),
        k("keep_alive", Ty::Duration, "Keep-alive of the pooled connections (at least 1s).")
            .def("\"30s\""),
        k("client_id_prefix", Ty::Str, "Prefix of the pooled connections' client ids.")
            .def("\"iot-sim\""),
        k("inflight", Ty::Int(1, 65_535), "Unacknowledged publishes per connection.").def("100"),
        QUEUE_SIZE,
        BACKOFF_INITIAL,
        BACKOFF_MAX,
        k("ca_file", Ty::Str, "mqtts, wss: CA certificate file (PEM)."),
        k("client_cert", Ty::Str, "mqtts, wss: client certificate file (PEM), with client_key."),
        k("client_key", Ty::Str, "mqtts, wss: client key file (PEM), with client_cert."),
        k(
            "preset",
            Ty::Enum(&["aws_iot", "azure_iot_hub", "thingsboard"]),
            "A platform's defaults (client id, username, topics, ALPN, port, TLS, format); \
             explicit keys win.",
        ),
        k(
            "hub",
            Ty::Str,
            "preset = \"azure_iot_hub\": the IoT hub's NAME (NAME.azure-devices.net).",
        ),
        k(
            "server_name",
            Ty::Str,
            "mqtts, wss: the TLS server name (SNI, and the name the broker's certificate must \
             have); default: the URL's host.",
        ),
        k("alpn", STRINGS, "mqtts, wss: ALPN protocols offered, e.g. [\"x-amzn-mqtt-ca\"]."),
        k(
            "per_device",
            Ty::Table(&MQTT_PER_DEVICE),
            "Sessions of profiles with connection = \"per_device\" (one per device).",
        ),
    ],
};

pub const MQTT_PER_DEVICE: Spec = Spec {
    path: "sink.mqtt.per_device",
    doc: "One MQTT session per device.",
    keys: &[
        k("client_id", TEMPLATE, "Client id template; must contain {device_id}.")
            .def("\"{device_id}\""),
        k("username", TEMPLATE, "Username template."),
        k("password_env", Ty::Str, "Environment variable holding one password for every device."),
        k(
            "password_hmac_secret_env",
            Ty::Str,
            "Environment variable holding a secret; each password is an HMAC of the client id.",
        ),
        k("clean_session", Ty::Bool, "Clean session (3.1.1) / clean start (5).").def("true"),
        k("session_expiry", Ty::Duration, "MQTT 5 session expiry interval."),
        k("keep_alive", Ty::Duration, "Keep-alive: 0s (off) or 1s to 65535s.").def("\"60s\""),
        k("inflight", Ty::Int(1, 65_534), "Unacknowledged publishes per device.").def("8"),
        k("queue_size", Ty::Int(1, 100_000), "Messages queued per device.").def("100"),
        k("connect_rate", Ty::Int(1, 1_000_000), "New connections per second, per run.")
            .def("1000"),
        k("max_connecting", Ty::Int(1, 1_000_000), "Connections being set up at once.").def("100"),
        k("connect_timeout", Ty::Duration, "How long a connection may take to set up.")
            .def("\"10s\""),
        k("source_addresses", STRINGS, "Local IP addresses to spread the connections over."),
        k("will_topic", TEMPLATE, "Last-will topic template (no wildcards)."),
        k("will_payload", TEMPLATE, "Last-will payload template (needs will_topic)."),
        k("will_qos", QOS, "Last-will QoS (needs will_topic).").def("0"),
        k("will_retain", Ty::Bool, "Last-will retain flag (needs will_topic).").def("false"),
        k("subscribe", TEMPLATE, "Topic filter template each device subscribes to (commands)."),
        k("subscribe_qos", QOS, "QoS of the subscription.").def("1"),
        k("respond", TEMPLATE, "Topic template each device answers commands on (needs subscribe)."),
        k(
            "answer_qos",
            QOS,
            "QoS of command answers (needs respond); default: the command's own QoS.",
        ),
        k(
            "token",
            Ty::Table(&MQTT_TOKEN),
            "A password that expires: a JWT or SAS token per device.",
        ),
        k(
            "identity",
            Ty::Table(&MQTT_IDENTITY),
            "A TLS client certificate per device (mqtts:// or wss://).",
        ),
    ],
};

pub const MQTT_TOKEN: Spec = Spec {
    path: "sink.mqtt.per_device.token",
    doc: "Expiring tokens as passwords, renewed before they expire (replaces password_env).",
    keys: &[
        k(
            "kind",
            Ty::Enum(&["jwt", "sas"]),
            "jwt (a signed JSON Web Token) or sas (Azure IoT Hub).",
        )
        .req(),
        k(
            "alg",
            Ty::Enum(&["HS256", "RS256", "ES256"]),
            "jwt: signature algorithm; default: the key's.",
        ),
        k("key_file", Ty::Str, "jwt: PEM private key (RSA for RS256, ECDSA P-256 for ES256)."),
        k("secret_env", Ty::Str, "Variable holding the HS256 secret, or the base64 SAS key."),
        k("claims", Ty::Map(&Ty::Any), "jwt: claims (string values are templates)."),
        k("resource", TEMPLATE, "sas: the resource URI (sr) template."),
        k("policy", Ty::Str, "sas: shared access policy name (skn)."),
        k("ttl", Ty::Duration, "Token lifetime, at least 1m.").def("\"1h\""),
        k("renew_before", Ty::Duration, "Renew this long before expiry; default: ttl / 10."),
    ],
};

pub const MQTT_IDENTITY: Spec = Spec {
    path: "sink.mqtt.per_device.identity",
    doc: "A TLS client certificate per device: generated (ca_cert, ca_key) or pre-provisioned \
          (cert_file, key_file).",
    keys: &[
        k("ca_cert", Ty::Str, "The CA certificate (PEM) that signs generated device certificates."),
        k("ca_key", Ty::Str, "The CA's private key (PEM: ECDSA P-256 or RSA)."),
        k("subject_cn", TEMPLATE, "Subject common name template; must contain {device_id}.")
            .def("\"{device_id}\""),
        k("sans", Ty::Array(&TEMPLATE), "Subject alternative names (DNS name, IP address or URI)."),
        k("key", Ty::Enum(&["ecdsa_p256", "rsa_2048"]), "Device key type.").def("\"ecdsa_p256\""),
        k("validity", Ty::Duration, "How long a generated certificate is valid.").def("\"30d\""),
        k(
            "not_before",
            Ty::DateTime,
            "Start of validity; default: today 00:00 UTC (set it for identical certificates on \
             other days).",
        ),
        k("cert_file", TEMPLATE, "Pre-provisioned certificate file template (PEM), with key_file."),
        k("key_file", TEMPLATE, "Pre-provisioned key file template (PEM), with cert_file."),
        k("workers", Ty::Int(1, 64), "Threads that generate keys or read key files, per run.")
            .def("2"),
    ],
};

pub const SINK_AMQP: Spec = Spec {
    path: "sink.amqp",
    doc: "An AMQP broker. Credentials come from IOT_SIM_AMQP_USERNAME / IOT_SIM_AMQP_PASSWORD.",
    keys: &[
        k("url", Ty::Str, "Broker URL: amqp:// or amqps:// (no password).")
            .def("\"amqp://127.0.0.1:5672/%2f\""),
        k("exchange", Ty::Str, "Exchange to publish to.").def("\"iot.telemetry\""),
        k(
            "routing_separator",
            Ty::Str,
            "Replaces / in topics to make routing keys (empty keeps /).",
        )
        .def("\".\""),
        k("confirms", Ty::Bool, "Publisher confirms.").def("true"),
        k("confirm_window", Ty::Int(1, 1_000_000), "Unconfirmed publishes per channel.")
            .def("1000"),
        QUEUE_SIZE,
        BACKOFF_INITIAL,
        BACKOFF_MAX,
    ],
};

pub const SINK_HTTP: Spec = Spec {
    path: "sink.http",
    doc: "HTTP POSTs. A bearer token comes from IOT_SIM_HTTP_TOKEN.",
    keys: &[
        k(
            "endpoint",
            Ty::Str,
            "URL template (http or https); {topic} and {device_id} are replaced.",
        )
        .req(),
        k("topic_header", Ty::Str, "Header that carries the topic (none if empty).")
            .def("\"X-Topic\""),
        k("batch_size", Ty::Int(1, 100_000), "Messages per request (a JSON array when > 1).")
            .def("1"),
        k("batch_linger", Ty::Duration, "How long a batch waits to fill.").def("\"50ms\""),
        k("max_retries", Ty::Int(0, 100), "Retries of a failed request.").def("3"),
        k("timeout", Ty::Duration, "Request timeout.").def("\"10s\""),
        k("concurrency", Ty::Int(1, 10_000), "Requests in flight per shard.").def("32"),
        QUEUE_SIZE,
        BACKOFF_INITIAL,
        BACKOFF_MAX,
    ],
};

pub const SINK_COAP: Spec = Spec {
    path: "sink.coap",
    doc: "A CoAP server.",
    keys: &[
        k("url", Ty::Str, "Server URL: coap://host:port.").def("\"coap://127.0.0.1:5683\""),
        k("confirmable", Ty::Bool, "Send confirmable (CON) messages.").def("true"),
        k("ack_timeout", Ty::Duration, "ACK_TIMEOUT of RFC 7252.").def("\"2s\""),
        k("ack_random_factor", Ty::Range(1.0, 4.0), "ACK_RANDOM_FACTOR of RFC 7252.").def("1.5"),
        k("max_retransmit", Ty::Int(0, 20), "MAX_RETRANSMIT of RFC 7252.").def("4"),
        k("max_inflight", Ty::Int(1, 60_000), "Confirmable exchanges in flight per shard.")
            .def("256"),
        QUEUE_SIZE,
    ],
};

pub const FLEET_ENTRY: Spec = Spec {
    path: "fleet[]",
    doc: "A group of devices of one profile.",
    keys: &[
        k(
            "profile",
            Ty::Str,
            "A profile name of [profiles], or a profile file (*.toml, relative to this file).",
        )
        .req(),
        k(
            "count",
            Ty::Int(1, 100_000_000),
            "Number of devices (required, except for a replay profile: its trace's number).",
        ),
        k("labels", Ty::Labels, "Labels of these devices (added to the profile's)."),
    ],
};

/// `[profiles.NAME.replay]`: a recorded trace replayed by the profile's devices.
pub const REPLAY: Spec = Spec {
    path: "profiles.NAME.replay",
    doc: "Replay a recorded trace (CSV with a header, or JSON Lines) instead of generating.",
    keys: &[
        k("file", Ty::Str, "The trace, relative to the fleet file.").req(),
        k("time", Ty::Str, "The time column: RFC 3339, epoch seconds or milliseconds.").req(),
        k("device", Ty::Str, "The column naming the recorded device (one device each)."),
        k("devices", Ty::Int(1, 100_000_000), "Deal the recorded rows or series out to N devices."),
        k("fields", STRINGS, "The columns to publish (default: all others)."),
        k("speed", Ty::Range(f64::MIN_POSITIVE, 1e9), "Recorded time is divided by this.")
            .def("1.0"),
        k("loop", Ty::Bool, "Start over after the last row.").def("false"),
        k("scale", Ty::Map(&Ty::Num), "Per field: published = recorded * scale + offset."),
        k("offset", Ty::Map(&Ty::Num), "Per field: added after the scale."),
    ],
};

/// A profile: `[profiles.NAME]`, a profile file, or a spawn request.
pub const PROFILE: Spec = Spec {
    path: "profiles.NAME",
    doc: "A device profile.",
    keys: &[
        k("protocol", Ty::Protocol, "Where its devices publish: a [sink.NAME] of this file.").req(),
        k("topic", TEMPLATE, "Topic template: {device_id}, {device_type}, {labels.KEY}.")
            .def("\"devices/{device_id}/telemetry\""),
        k(
            "interval",
            Ty::Duration,
            "How often each device sends, such as \"5s\" (at most 30d; a replay: how often a paused device looks again, default 1s).",
        ),
        k("seq", Ty::Bool, "Add a per-device sequence number \"seq\" to each message.")
            .def("false"),
        k("device_type", Ty::Str, "The device_type label and payload value (default: the name)."),
        k("labels", Ty::Labels, "Labels of every device of this profile."),
        k(
            "fields",
            Ty::Map(&Ty::Def("field")),
            "The telemetry fields by name, each with its generator (not with replay).",
        ),
        k("replay", Ty::Table(&REPLAY), "Replay a recorded trace instead of generating fields."),
        k("qos", QOS, "mqtt: QoS of this profile's messages (overrides [sink.mqtt] qos)."),
        k("retain", Ty::Bool, "mqtt: retain flag of this profile's messages."),
        k(
            "backpressure",
            Ty::Enum(&["drop_oldest", "slow_down"]),
            "Network protocols: what a full queue does.",
        )
        .def("\"drop_oldest\""),
        k("endpoint", Ty::Str, "http: endpoint template (overrides [sink.http] endpoint)."),
        k("confirmable", Ty::Bool, "coap: send confirmable messages (overrides the sink's)."),
        k(
            "connection",
            Ty::Enum(&["pooled", "per_device"]),
            "mqtt: shared pooled connections, or one session per device ([sink.mqtt.per_device]).",
        )
        .def("\"pooled\""),
        k("report", Ty::Table(&REPORT), "When devices publish: periodic or on_change."),
        k("sparkplug", Ty::Table(&SPARKPLUG), "format = sparkplug_b: group and edge nodes."),
        k(
            "events",
            Ty::Map(&Ty::Table(&EVENT)),
            "Random events by name (Poisson, rate_per_hour per device).",
        ),
        k("availability", Ty::Table(&AVAILABILITY), "Devices drop off and come back."),
        k("sleep", Ty::Table(&SLEEP), "Devices sleep and wake on a cycle."),
        k(
            "format",
            Ty::Enum(&[
                "envelope",
                "flat",
                "template",
                "cbor",
                "senml",
                "senml_cbor",
                "sparkplug_b",
                "protobuf",
            ]),
            "Payload format: the JSON envelope, flat JSON, a template, CBOR, SenML (RFC 8428), \
             Sparkplug B edge nodes (mqtt only) or protobuf.",
        )
        .def("\"envelope\""),
        k(
            "id_key",
            Ty::Str,
            "format = flat / protobuf: the key (proto field) of the device id (\"\": left out).",
        )
        .def("\"device_id\""),
        k(
            "timestamp_key",
            Ty::Str,
            "format = flat / protobuf: the key (proto field) of the timestamp (\"\": left out).",
        )
        .def("\"timestamp\""),
        k(
            "timestamp",
            Ty::Enum(&["rfc3339", "ms", "s"]),
            "format = flat / protobuf: the timestamp as RFC 3339 text, epoch milliseconds or seconds.",
        )
        .def("\"rfc3339\""),
        k(
            "template",
            Ty::Str,
            "format = template: the payload as a Jinja template (device_id, fields.X, ...).",
        ),
        k(
            "template_file",
            Ty::Str,
            "format = template: a file holding the template, relative to the fleet file.",
        ),
        k(
            "proto_file",
            Ty::Str,
            "format = protobuf: the .proto file, relative to the fleet file (compiled at load).",
        ),
        k(
            "message",
            Ty::Str,
            "format = protobuf: the message to send (full name, or its name when unique).",
        ),
        k(
            "content_type",
            Ty::Str,
            "HTTP Content-Type, AMQP content_type, MQTT 5 Content Type (default: from the format).",
        ),
        k(
            "audit",
            Ty::Table(&PROFILE_AUDIT),
            "format = template: where the delivery audit finds the id and seq (JSON pointers).",
        ),
        k(
            "mqtt5",
            Ty::Table(&MQTT5),
            "mqtt: MQTT 5 properties of the messages (ignored by 3.1.1).",
        ),
    ],
};

pub const PROFILE_AUDIT: Spec = Spec {
    path: "profiles.NAME.audit",
    doc: "Where the delivery audit reads a JSON template's device id and seq.",
    keys: &[
        k("device_id", Ty::Str, "JSON pointer to the device id (\"/id\").").req(),
        k("seq", Ty::Str, "JSON pointer to the sequence number (\"/seq\").").req(),
    ],
};

pub const MQTT5: Spec = Spec {
    path: "profiles.NAME.mqtt5",
    doc: "MQTT 5 PUBLISH properties (ignored, with a warning, on MQTT 3.1.1).",
    keys: &[
        k(
            "user_properties",
            Ty::Map(&TEMPLATE),
            "User Property pairs; values are templates ({device_id}, {labels.KEY}) per device.",
        ),
        k("message_expiry", Ty::Duration, "Message Expiry Interval (whole seconds, at least 1s)."),
        k("topic_alias", Ty::Bool, "Send topic aliases up to the broker's Topic Alias Maximum.")
            .def("false"),
        k(
            "payload_format_indicator",
            Ty::Bool,
            "Payload Format Indicator 1 (UTF-8 text); text formats only.",
        )
        .def("false"),
    ],
};

pub const SPARKPLUG: Spec = Spec {
    path: "profiles.NAME.sparkplug",
    doc: "format = sparkplug_b: how devices are grouped under Sparkplug B edge nodes.",
    keys: &[
        k("group_id", Ty::Str, "The Sparkplug group id (no '/', '+' or '#').").req(),
        k(
            "edge_node",
            TEMPLATE,
            "The edge node id of a device: a template over {device_id}, {device_type}, \
             {labels.KEY}; each edge node is one MQTT session.",
        )
        .req(),
    ],
};

pub const REPORT: Spec = Spec {
    path: "profiles.NAME.report",
    doc: "When devices publish.",
    keys: &[
        k(
            "mode",
            Ty::Enum(&["periodic", "on_change"]),
            "periodic: every interval; on_change: when a field moved more than its deadband.",
        )
        .def("\"periodic\""),
        k("max_silence", Ty::Duration, "on_change: publish at least this often (a heartbeat)."),
    ],
};

pub const EVENT: Spec = Spec {
    path: "profiles.NAME.events.NAME",
    doc: "A random event.",
    keys: &[
        k("rate_per_hour", NON_NEG, "Mean events per device and hour.").req(),
        k("fields", Ty::Map(&Ty::Def("generator")), "The event's fields (plain generators)."),
        k("topic", TEMPLATE, "Topic template (default: the profile's topic + /events/NAME)."),
    ],
};

pub const AVAILABILITY: Spec = Spec {
    path: "profiles.NAME.availability",
    doc: "Devices drop off and come back.",
    keys: &[
        k("mtbf", Ty::Duration, "Mean time between failures, such as \"6h\".").req(),
        k("mttr", Ty::Duration, "Mean time to repair, such as \"30m\".").req(),
    ],
};

pub const SLEEP: Spec = Spec {
    path: "profiles.NAME.sleep",
    doc: "Devices sleep and wake on a cycle.",
    keys: &[
        k("period", Ty::Duration, "Length of one sleep/wake cycle, such as \"15m\".").req(),
        k("awake", Ty::Duration, "Time awake per cycle (not longer than the period).").req(),
    ],
};

/// Keys of a profile's field table that every plain generator takes (the caller reads them).
pub const FIELD_EXTRA: &[Key] = &[
    k("decimals", Ty::Int(0, 15), "Round the value to this many decimals."),
    k("battery", Ty::Bool, "A battery level (drains faster under a battery_drain fault).")
        .def("false"),
    k("deadband", NON_NEG, "report = on_change: the change that counts as a change."),
    k("unit", Ty::Str, "The field's unit, written as SenML \"u\" (format = senml, senml_cbor)."),
];

/// The plain generators: a field's, an event field's or a composite part's `type`.
pub const GENERATORS: &[Variant] = &[
    Variant {
        name: "gaussian",
        doc: "Independent normal samples.",
        keys: &[
            k("mean", Ty::Num, "Mean.").req(),
            k("stddev", NON_NEG, "Standard deviation.").req(),
        ],
    },
    Variant {
        name: "brownian",
        doc: "A random walk, optionally mean-reverting and clamped.",
        keys: &[
            k("start", Ty::Num, "First value.").req(),
            k("mean", Ty::Num, "Level it reverts to (default: start)."),
            k("drift", Ty::Num, "Trend per step.").def("0.0"),
            k("volatility", NON_NEG, "Standard deviation of a step.").req(),
            k("mean_reversion", NON_NEG, "Pull toward the mean per step (0 = none).").def("0.0"),
            k("min", Ty::Num, "Lower clamp."),
            k("max", Ty::Num, "Upper clamp."),
        ],
    },
    Variant {
        name: "diurnal",
        doc: "A daily cycle (sine with its peak at peak_hour UTC) plus noise.",
        keys: &[
            k("baseline", Ty::Num, "Daily mean.").req(),
            k("amplitude", Ty::Num, "Half the peak-to-trough swing.").req(),
            k("peak_hour", Ty::Range(0.0, 24.0), "Hour of the peak, in [0, 24).").req(),
            k("noise_stddev", NON_NEG, "Standard deviation of the noise added.").def("0.0"),
            k("stddev", NON_NEG, "Another name of noise_stddev (give one of them)."),
        ],
    },
    Variant {
        name: "markov",
        doc: "A Markov chain over named states.",
        keys: &[
            k("states", STRINGS, "State names.").req(),
            k("transition_matrix", MATRIX, "One row of probabilities per state (rows add to 1).")
                .req(),
            k("initial_state", Ty::Str, "First state (default: the first)."),
        ],
    },
    Variant {
        name: "static",
        doc: "A constant (any TOML value).",
        keys: &[k("value", Ty::Any, "The constant to publish.").req()],
    },
    Variant {
        name: "composite",
        doc: "The sum of numeric generators.",
        keys: &[k("parts", Ty::Array(&Ty::Def("generator")), "The generators to add up.").req()],
    },
];

/// Field types computed from other fields: a profile field's `type` only. Their keys are
/// complete (they take no [`FIELD_EXTRA`] but those listed).
pub const FIELD_KINDS: &[Variant] = &[
    Variant {
        name: "derived",
        doc: "An expression over the other fields.",
        keys: &[
            k("expr", Ty::Str, "The expression, such as \"power * 1000 / 230\".").req(),
            k("decimals", Ty::Int(0, 15), "Round the value to this many decimals."),
            k("deadband", NON_NEG, "report = on_change: the change that counts as a change."),
        ],
    },
    Variant {
        name: "correlated_gaussian",
        doc: "Several fields drawn together from a multivariate normal.",
        keys: &[
            k("fields", STRINGS, "The member fields' names (2 or more).").req(),
            k("means", NUMBERS, "One mean per member.").req(),
            k("stddevs", NUMBERS, "One standard deviation per member.").req(),
            k("correlation", MATRIX, "Correlation matrix, one row per member.").req(),
            k("decimals", Ty::Int(0, 15), "Round every member to this many decimals."),
            k("deadband", NON_NEG, "report = on_change: the deadband of every member."),
        ],
    },
];

/// The plain generator of that type.
pub fn generator(name: &str) -> Option<&'static Variant> {
    GENERATORS.iter().find(|v| v.name == name)
}

/// The field type of that name (plain generator or computed).
pub fn field_kind(name: &str) -> Option<&'static Variant> {
    FIELD_KINDS.iter().find(|v| v.name == name)
}

pub const THRESHOLD: Spec = Spec {
    path: "threshold[]",
    doc: "A pass/fail bound.",
    keys: &[
        k("metric", Ty::Enum(METRICS), "The figure judged.").req(),
        k(
            "max",
            Ty::AnyOf(&[Ty::Str, Ty::Num]),
            "Upper bound: a duration for latencies (\"50ms\"), a fraction or \"1%\" for rates.",
        ),
        k("min", Ty::AnyOf(&[Ty::Str, Ty::Num]), "Lower bound (give max or min)."),
        k("phase", Ty::Str, "Judge only this scenario phase's messages."),
        k("sink", Ty::Protocol, "Judge only this sink's messages."),
        k("device_type", Ty::Str, "Judge only this device type's messages."),
        k("abort", Ty::Bool, "Stop the run as soon as the running figures break it.").def("false"),
    ],
};

/// Threshold metric names (the scenario module's `METRICS`, checked by a test).
pub const METRICS: &[&str] = &[
    "latency_p50",
    "latency_p90",
    "latency_p99",
    "latency_p999",
    "latency_max",
    "error_rate",
    "drop_rate",
    "messages_per_second",
    "tick_lateness_p99",
    "lost",
    "duplicated",
    "reordered",
    "e2e_latency_p99",
];

pub const AUDIT: Spec = Spec {
    path: "audit",
    doc: "The delivery audit: consume what the fleet published and check it.",
    keys: &[
        k(
            "source",
            Ty::Enum(&["mqtt", "amqp", "http"]),
            "Where to consume from (default: amqp for AMQP-only fleets, else mqtt).",
        ),
        k("url", Ty::Str, "Broker URL (default: the sink's)."),
        k(
            "filter",
            Ty::AnyOf(&[Ty::Str, STRINGS]),
            "Topic filter(s) (default: from the profiles' topic templates).",
        ),
        k("qos", QOS, "mqtt: subscription QoS.").def("1"),
        k("queue", Ty::Str, "amqp: queue to consume from."),
        k("declare", Ty::Bool, "amqp: declare and bind a queue.").def("true"),
        k("listen", Ty::Str, "http: address to serve, such as \"127.0.0.1:8088\"."),
        k("grace", Ty::Duration, "How long to keep consuming after the run (at most 60s).")
            .def("\"2s\""),
        k("worst", Ty::Int(0, 1000), "How many worst devices the report lists.").def("10"),
        k(
            "verify",
            Ty::Enum(&["envelope", "values"]),
            "envelope: parse, device, seq, type and timing checks; values: also every value.",
        )
        .def("\"envelope\""),
    ],
};

// ---------------------------------------------------------------------------------------------
// The scenario file.

/// The top level of a scenario file.
pub const SCENARIO_FILE: Spec = Spec {
    path: "",
    doc: "An iot-sim scenario: timed steps, phases and thresholds, on a fleet.",
    keys: &[
        k("name", Ty::Str, "The scenario's name (default: the file name)."),
        k("description", Ty::Str, "One line on what it does."),
        k("duration", Ty::Duration, "Sim time to run (default: the last step's end)."),
        k(
            "step",
            Ty::Array(&Ty::Table(&STEP)),
            "The timed steps: [[step]] with at and one action.",
        )
        .req(),
        k(
            "threshold",
            Ty::Array(&Ty::Table(&THRESHOLD)),
            "Pass/fail bounds; phase names this file's phases.",
        ),
        k("run", Ty::Table(&RUN), "[run] settings (laid over the fleet file's)."),
        k("sink", Ty::Table(&SINK), "[sink.*] tables (laid over the fleet file's)."),
        k("profiles", Ty::Map(&Ty::Def("profile")), "More profiles, for spawn steps."),
        k("fleet", Ty::Array(&Ty::Table(&FLEET_ENTRY)), "The devices at the start."),
    ],
};

/// The actions a step may hold (the scenario module's `ACTIONS`, checked by a test).
pub const ACTIONS: &[&str] =
    &["spawn", "stop", "fault", "clear", "update", "pause", "resume", "log", "phase"];

pub const STEP: Spec = Spec {
    path: "step[]",
    doc: "A timed step: at, and one action.",
    keys: &[
        k("at", Ty::Duration, "When, as a sim-time offset such as \"5m\".").req(),
        k("repeat", Ty::Table(&REPEAT), "Repeat the action; {i} in its strings is 0, 1, ..."),
        k("batches", Ty::Table(&BATCHES), "Apply the action to the selected devices in batches."),
        k("spawn", Ty::Table(&SPAWN), "Action: start devices of a profile."),
        k("stop", Ty::Table(&STOP), "Action: stop devices."),
        k("fault", Ty::Table(&FAULT), "Action: inject a fault."),
        k("clear", Ty::Table(&CLEAR), "Action: clear faults."),
        k(
            "update",
            Ty::Table(&UPDATE),
            "Action: change devices' interval, labels, fields, behaviour.",
        ),
        k("pause", Ty::Table(&PAUSE), "Action: pause devices (no telemetry until resumed)."),
        k("resume", Ty::Table(&RESUME), "Action: resume paused devices."),
        k("log", Ty::Str, "Action: write a message to the log and the report."),
        k("phase", Ty::Str, "Action: start a named phase (until the next one)."),
    ],
};

pub const REPEAT: Spec = Spec {
    path: "step[].repeat",
    doc: "Repetitions of a step's action.",
    keys: &[
        k("times", Ty::Int(1, 1_000_000), "How many times in all.").req(),
        k("every", Ty::Duration, "Time between repetitions (needed when times > 1)."),
    ],
};

const SELECTOR: Key =
    k("selector", Ty::Str, "Label selector, such as \"site=berlin,zone in (a, b)\".");
const ALL: Key = k("all", Ty::Bool, "all = true selects every device.");
const IDS: Key = k("ids", STRINGS, "Device ids.");

pub const BATCHES: Spec = Spec {
    path: "step[].batches",
    doc: "The devices to apply the action to, size at a time.",
    keys: &[
        SELECTOR,
        ALL,
        IDS,
        k("size", Ty::Int(1, 100_000_000), "Devices per batch.").req(),
        k("every", Ty::Duration, "Time between batches.").req(),
    ],
};

pub const SPAWN: Spec = Spec {
    path: "step[].spawn",
    doc: "Start devices.",
    keys: &[
        k("profile", Ty::Str, "A profile name, or a profile file (*.toml).").req(),
        k("count", Ty::Int(1, 100_000_000), "Number of devices (or ids)."),
        k(
            "ids",
            STRINGS,
            "Instead of count: these device ids, with exactly labels (as SpawnDevices).",
        ),
        k("labels", Ty::Labels, "Labels added to the profile's."),
        k("over", Ty::Duration, "Spread the spawns evenly over this long.").def("\"0s\""),
    ],
};

pub const STOP: Spec =
    Spec { path: "step[].stop", doc: "Stop devices.", keys: &[SELECTOR, ALL, IDS] };
pub const PAUSE: Spec =
    Spec { path: "step[].pause", doc: "Pause devices.", keys: &[SELECTOR, ALL, IDS] };
pub const RESUME: Spec =
    Spec { path: "step[].resume", doc: "Resume devices.", keys: &[SELECTOR, ALL, IDS] };

pub const FAULT: Spec = Spec {
    path: "step[].fault",
    doc: "Inject a fault.",
    keys: &[
        SELECTOR,
        ALL,
        IDS,
        k("type", Ty::Enum(FAULT_TYPES), "The fault.").req(),
        k("duration", Ty::Duration, "How long it lasts (0s or none: until cleared)."),
        k("params", Ty::Map(&Ty::Any), "The fault's parameters (see its type)."),
    ],
};

pub const CLEAR: Spec = Spec {
    path: "step[].clear",
    doc: "Clear faults.",
    keys: &[
        SELECTOR,
        ALL,
        IDS,
        k("type", Ty::Enum(FAULT_TYPES), "Only this fault (default: all)."),
    ],
};

pub const UPDATE: Spec = Spec {
    path: "step[].update",
    doc: "Change devices.",
    keys: &[
        SELECTOR,
        ALL,
        IDS,
        k("interval", Ty::Duration, "New interval (1ms to 30d)."),
        k("labels", Ty::Labels, "Labels to set."),
        k("fields", Ty::Map(&Ty::Def("field")), "New fields (replace the devices' fields)."),
        k(
            "replace_fields",
            Ty::Bool,
            "true: fields replace every field (as UpdateDeviceBehavior), not those of their names.",
        )
        .def("false"),
        k("report", Ty::Table(&REPORT), "New report mode."),
        k("events", Ty::Map(&Ty::Table(&EVENT)), "New events."),
        k("availability", Ty::Table(&AVAILABILITY), "New availability ({} turns it off)."),
        k("sleep", Ty::Table(&SLEEP), "New sleep cycle ({} turns it off)."),
        k(
            "format",
            Ty::Enum(&["envelope", "flat", "template", "cbor", "senml", "senml_cbor", "protobuf"]),
            "New payload format (with its keys, as a profile's).",
        ),
        k("id_key", Ty::Str, "format = flat / protobuf: as a profile's."),
        k("timestamp_key", Ty::Str, "format = flat / protobuf: as a profile's."),
        k(
            "timestamp",
            Ty::Enum(&["rfc3339", "ms", "s"]),
            "format = flat / protobuf: as a profile's.",
        ),
        k("template", Ty::Str, "format = template: as a profile's."),
        k("content_type", Ty::Str, "As a profile's."),
        k(
            "proto_file",
            Ty::Str,
            "format = protobuf: relative to the working directory, inside it.",
        ),
        k("message", Ty::Str, "format = protobuf: as a profile's."),
        k("audit", Ty::Table(&PROFILE_AUDIT), "format = template: as a profile's."),
        k(
            "sparkplug",
            Ty::Table(&SPARKPLUG),
            "Refused in an update: an update cannot move devices onto Sparkplug edge nodes \
             (spawn them with format = \"sparkplug_b\").",
        ),
        k("mqtt5", Ty::Table(&MQTT5), "New MQTT 5 properties block (as a profile's [mqtt5])."),
    ],
};

/// Fault type names (the scenario module's `FAULT_TYPES`, checked by a test).
pub const FAULT_TYPES: &[&str] =
    &["disconnect", "latency_spike", "data_corruption", "battery_drain", "clock_drift"];

const REASON: Key = k("reason", Ty::Str, "Why, for the log and the report.");

/// `params` of each fault type.
pub const FAULT_PARAMS: &[Variant] = &[
    Variant {
        name: "disconnect",
        doc: "Devices lose their connection.",
        keys: &[
            k("mode", Ty::Enum(&["abrupt", "graceful", "storm"]), "How they disconnect."),
            REASON,
        ],
    },
    Variant {
        name: "latency_spike",
        doc: "Messages are delayed.",
        keys: &[
            k("latency_ms", Ty::Range(0.0, 3_600_000.0), "Added delay in milliseconds.").def("0"),
            REASON,
        ],
    },
    Variant {
        name: "data_corruption",
        doc: "Payloads are corrupted.",
        keys: &[
            k("corruption_rate", Ty::Range(0.0, 1.0), "Fraction of messages corrupted.").def("1.0"),
            k("mode", Ty::Enum(&["nan", "zero", "spike", "bytes"]), "How they are corrupted.")
                .def("\"bytes\""),
            REASON,
        ],
    },
    Variant {
        name: "battery_drain",
        doc: "Batteries drain faster.",
        keys: &[
            k("drain_multiplier", Ty::Range(f64::MIN_POSITIVE, 1e6), "Drain speed-up.").def("10.0"),
            REASON,
        ],
    },
    Variant {
        name: "clock_drift",
        doc: "Device clocks drift.",
        keys: &[
            k("drift_rate_ms_per_sec", Ty::Range(-1e6, 1e6), "Drift in ms per second.").def("0.0"),
            REASON,
        ],
    },
];

/// Every table of the catalogue (variants aside), for the tests.
#[cfg(test)]
pub const SPECS: &[&Spec] = &[
    &FLEET_FILE,
    &RUN,
    &SINK,
    &SINK_EMPTY,
    &SINK_FILE,
    &SINK_MQTT,
    &MQTT_PER_DEVICE,
    &MQTT_TOKEN,
    &MQTT_IDENTITY,
    &SINK_AMQP,
    &SINK_HTTP,
    &SINK_COAP,
    &FLEET_ENTRY,
    &PROFILE,
    &MQTT5,
    &REPLAY,
    &REPORT,
    &EVENT,
    &AVAILABILITY,
    &SLEEP,
    &PROFILE_AUDIT,
    &THRESHOLD,
    &AUDIT,
    &SCENARIO_FILE,
    &STEP,
    &REPEAT,
    &BATCHES,
    &SPAWN,
    &STOP,
    &PAUSE,
    &RESUME,
    &FAULT,
    &CLEAR,
    &UPDATE,
];
