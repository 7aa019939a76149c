//! Real MQTT peers for tests: a subscriber that collects what the broker delivers, and a
//! mosquitto of a test's own on a port of its own (for outages and restarts).

use super::unique;
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// (topic, payload) pairs a subscriber received.
type Received = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// Subscribes to `filter` and collects (topic, payload) until dropped.
pub struct Subscriber {
    got: Received,
    client: Client,
}

impl Subscriber {
    pub fn start(port: u16, filter: &str) -> Subscriber {
        let mut opts = MqttOptions::new(unique("sub"), "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut conn) = Client::new(opts, 1000);
        client.subscribe(filter, QoS::ExactlyOnce).unwrap();
        let got = Arc::new(Mutex::new(vec![]));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = got.clone();
        std::thread::spawn(move || {
            for ev in conn.iter() {
                match ev {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = tx.send(());
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        sink.lock().unwrap().push((p.topic.clone(), p.payload.to_vec()));
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(10)).expect("no SUBACK from the broker");
        Subscriber { got, client }
    }

    /// Waits until `n` messages arrived (or a generous while passed), then returns them.
    pub fn wait_for(&self, n: usize) -> Vec<(String, Vec<u8>)> {
        for _ in 0..200 {
            if self.got.lock().unwrap().len() >= n {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // A little longer, to catch duplicates or extras.
        std::thread::sleep(Duration::from_millis(200));
        let _ = self.client.disconnect();
        self.got.lock().unwrap().clone()
    }
}

/// A broker of our own that the test can kill and restart.
pub struct Broker {
    port: u16,
    child: Option<std::process::Child>,
    /// With [`Broker::with_conf`]: its config file and the log it writes (every connection,
    /// with client id and source address).
    conf: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

impl Broker {
    pub fn start(port: u16) -> Broker {
        let mut b = Broker { port, child: None, conf: None };
        b.up();
        b
    }

    /// A broker with a config file of its own in `dir` (`extra` appended: password file, ACL,
    /// limits), listening on 127.0.0.1:`port` and logging everything to `dir/mosquitto.log`.
    pub fn with_conf(port: u16, dir: &std::path::Path, extra: &str) -> Broker {
        let conf = dir.join(format!("mosquitto-{port}.conf"));
        let log = dir.join(format!("mosquitto-{port}.log"));
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nlog_dest stderr\nlog_type all\nconnection_messages true\n{extra}\n"
            ),
        )
        .unwrap();
        let mut b = Broker { port, child: None, conf: Some((conf, log)) };
        b.up();
        b
    }

    /// What the broker logged so far (empty without [`Broker::with_conf`]).
    pub fn log(&self) -> String {
        self.conf.as_ref().and_then(|(_, l)| std::fs::read_to_string(l).ok()).unwrap_or_default()
    }

    /// Waits (up to 20 s) until the log contains `needle` at least `n` times.
    pub fn wait_log(&self, needle: &str, n: usize) -> bool {
        for _ in 0..400 {
            if self.log().matches(needle).count() >= n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    pub fn up(&mut self) {
        let mut cmd = std::process::Command::new("mosquitto");
        cmd.stdout(std::process::Stdio::null());
        match &self.conf {
            Some((conf, log)) => {
                let f = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
                cmd.arg("-c").arg(conf).stderr(f);
            }
            None => {
                cmd.args(["-p", &self.port.to_string()]).stderr(std::process::Stdio::null());
            }
        }
        let child = cmd.spawn().expect("mosquitto must be installed (Debian package mosquitto)");
        self.child = Some(child);
        assert!(super::wait_port(self.port), "mosquitto did not start on port {}", self.port);
    }
    /// Sends a signal (`libc::SIGSTOP`: a hung broker, for instance) to the broker.
    pub fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(c.id() as i32, sig) };
        }
    }
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}
