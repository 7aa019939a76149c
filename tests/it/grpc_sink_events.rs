//! Network sinks' connection events reach gRPC `StreamEvents` subscribers: a broker that goes
//! away gives DISCONNECTED, its return gives CONNECTED, both naming the sink and connection.

use iot_sim::control::proto::{self, device_runtime_service_client::DeviceRuntimeServiceClient};
use std::time::Duration;

use crate::common;
use crate::common::Running;

use common::mqtt::Broker;

#[tokio::test(flavor = "current_thread")]
async fn broker_outages_show_as_disconnected_and_connected_events() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut mq = Broker::start(port);
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("fleet.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[sink.mqtt]
url = "mqtt://127.0.0.1:{port}"
pool_size = 1
backoff_initial = "50ms"
backoff_max = "200ms"

[[fleet]]
profile = "p"
count = 5

[profiles.p]
protocol = "mqtt"
interval = "200ms"
[profiles.p.fields.x]
type = "gaussian"
mean = 0
stddev = 1
"#
        ),
    )
    .unwrap();
    let server = Running::with_config("serve", &cfg, None, &["--cores", "1"]);
    let mut client = DeviceRuntimeServiceClient::connect(server.url()).await.unwrap();
    let mut events = client
        .stream_events(proto::StreamEventsRequest { selector: None })
        .await
        .unwrap()
        .into_inner();

    let mut next_of = async |kind: proto::DeviceEventType| -> proto::DeviceEvent {
        loop {
            let e = tokio::time::timeout(Duration::from_secs(30), events.message())
                .await
                .expect("no event within 30 s")
                .unwrap()
                .expect("stream ended");
            if e.event_type == kind as i32 {
                return e;
            }
        }
    };
    // Once the sink delivers (it is connected: at most 30 s), take the broker away.
    let t0 = std::time::Instant::now();
    while client.get_runtime_status(()).await.unwrap().into_inner().messages_sent_total == 0 {
        assert!(t0.elapsed() < Duration::from_secs(30), "nothing sent within 30 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    mq.kill();
    let down = next_of(proto::DeviceEventType::Disconnected).await;
    assert_eq!(down.metadata["sink"], "mqtt");
    assert_eq!(down.metadata["conn"], "0");
    assert_eq!(down.metadata["url"], format!("mqtt://127.0.0.1:{port}"));
    assert!(down.device_id.is_empty(), "a pooled connection is not one device's");
    mq.up();
    let up = next_of(proto::DeviceEventType::Connected).await;
    assert_eq!(up.metadata["sink"], "mqtt");
    drop(mq);
}
