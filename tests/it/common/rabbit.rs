//! A private RabbitMQ node for the tests that must configure one: its own node name, ports,
//! data and log folders, enabled-plugins file and config file, so the shared broker on 5672
//! (and Mosquitto on 1883) are never touched. Started with the bundled plugins
//! `rabbitmq_mqtt`, `rabbitmq_web_mqtt`, `rabbitmq_auth_backend_http` and
//! `rabbitmq_auth_backend_oauth2`; the authentication backends are chained: `internal` (the
//! `guest` user, for the tests' own subscribers), then `http` (a SAS verifier of the test's:
//! [`SasVerifier`]), then `oauth2` (JWTs signed with the test's RSA key, `signing.pem` in the
//! node's folder).
//!
//! A node takes ~10-20 s to boot on a loaded machine, so the tests of a run share one while
//! any of them holds it ([`Rabbit::shared`]); the last one to let go kills it (the whole
//! process group: the start script, the Erlang VM and its helpers).

use super::free_port;
use base64::Engine;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

pub struct Rabbit {
    child: std::process::Child,
    dir: tempfile::TempDir,
    pub mqtt: u16,
    pub web_mqtt: u16,
    /// The SAS verifier behind `rabbitmq_auth_backend_http`.
    pub sas: Arc<SasVerifier>,
    log: PathBuf,
}

impl Rabbit {
    /// The node of this test run, started if no test holds one now.
    pub fn shared() -> Arc<Rabbit> {
        static NODE: Mutex<Weak<Rabbit>> = Mutex::new(Weak::new());
        let mut slot = NODE.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = slot.upgrade() {
            return r;
        }
        let r = Arc::new(Rabbit::start());
        *slot = Arc::downgrade(&r);
        r
    }

    fn start() -> Rabbit {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (amqp, dist, mqtt, web_mqtt) = (free_port(), free_port(), free_port(), free_port());
        super::tls::openssl(
            d,
            &[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
                "signing.pem",
            ],
        );
        super::tls::openssl(
            d,
            &["pkey", "-in", "signing.pem", "-pubout", "-out", "signing.pub.pem"],
        );
        let sas = SasVerifier::start();
        let conf = format!(
            "listeners.tcp.default = {amqp}
mqtt.listeners.tcp.default = {mqtt}
web_mqtt.tcp.port = {web_mqtt}
loopback_users = none
auth_backends.1 = internal
auth_backends.2 = http
auth_backends.3 = rabbit_auth_backend_oauth2
auth_http.http_method = post
auth_http.user_path = http://127.0.0.1:{v}/auth/user
auth_http.vhost_path = http://127.0.0.1:{v}/auth/vhost
auth_http.resource_path = http://127.0.0.1:{v}/auth/resource
auth_http.topic_path = http://127.0.0.1:{v}/auth/topic
auth_oauth2.resource_server_id = rabbitmq
auth_oauth2.default_key = test
auth_oauth2.signing_keys.test = {pubkey}
",
            v = sas.port,
            pubkey = d.join("signing.pub.pem").display(),
        );
        std::fs::write(d.join("rabbitmq.conf"), conf).unwrap();
        std::fs::write(
            d.join("enabled_plugins"),
            "[rabbitmq_mqtt,rabbitmq_web_mqtt,rabbitmq_auth_backend_http,rabbitmq_auth_backend_oauth2].\n",
        )
        .unwrap();
        let node = format!("iotsim-test-{}-{amqp}@localhost", std::process::id());
        let out = std::fs::File::create(d.join("stdout.log")).unwrap();
        let child = std::process::Command::new("/usr/lib/rabbitmq/bin/rabbitmq-server")
            .env("RABBITMQ_NODENAME", &node)
            .env("RABBITMQ_NODE_PORT", amqp.to_string())
            .env("RABBITMQ_DIST_PORT", dist.to_string())
            .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
            .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq"))
            // Its own Erlang cookie, not the shared node's.
            .env("HOME", d)
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            // A group of its own, killed whole by `Drop`.
            .process_group(0)
            .spawn()
            .expect("rabbitmq-server is installed (scripts/services.sh)");
        let log = d.join("log").join(format!("{node}.log"));
        let r = Rabbit { child, dir, mqtt, web_mqtt, sas, log };
        let end = Instant::now() + Duration::from_secs(90);
        while !(port_open(mqtt) && port_open(web_mqtt)) {
            assert!(
                Instant::now() < end,
                "the private RabbitMQ did not open its MQTT listeners within 90 s:\n{}\n{}",
                std::fs::read_to_string(r.dir.path().join("stdout.log")).unwrap_or_default(),
                r.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        r
    }

    /// The node's folder (its `signing.pem` signs the JWTs it accepts).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    pub fn signing_key(&self) -> PathBuf {
        self.dir.path().join("signing.pem")
    }

    /// Waits (up to 10 s) until the node's log contains `needle`.
    pub fn wait_log(&self, needle: &str) -> bool {
        let end = Instant::now() + Duration::from_secs(10);
        while !self.log().contains(needle) {
            if Instant::now() > end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        true
    }

    /// What the node logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Rabbit {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group this node was started in.
        unsafe {
            libc::kill(-(self.child.id() as i32), libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

/// One login the verifier decided.
#[derive(Clone, Debug)]
pub struct Login {
    pub username: String,
    /// The password it came with (a SAS token: `se` is its expiry).
    pub password: String,
    pub allowed: bool,
    /// Why refused ("" if allowed).
    pub reason: String,
}

/// The HTTP service `rabbitmq_auth_backend_http` asks: it allows a login whose password is an
/// Azure IoT Hub SAS token (`SharedAccessSignature sr=…&sig=…&se=…`) signed with the key of
/// [`SasVerifier::KEY_B64`], not expired, for the device the username names
/// (`HUB.azure-devices.net/DEVICE/?api-version=…`, `sr` = `HUB.azure-devices.net/devices/DEVICE`).
/// Other passwords it refuses (the node then asks the oauth2 backend). Vhosts, resources and
/// topics it allows.
pub struct SasVerifier {
    pub port: u16,
    logins: Mutex<Vec<Login>>,
    /// While set ([`SasVerifier::refuse_renewals`]): the user name prefix it applies to (other
    /// tests of the node log in meanwhile), and each such user's first token seen since, which
    /// is allowed; any other token of that user is refused.
    first_tokens: Mutex<Option<(String, std::collections::HashMap<String, String>)>>,
}

impl SasVerifier {
    /// The device key (base64, as Azure shows it).
    pub const KEY_B64: &str = "aW90LXNpbS10ZXN0LXNoYXJlZC1hY2Nlc3Mta2V5LTAx";

    fn start() -> Arc<SasVerifier> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let v = Arc::new(SasVerifier {
            port: listener.local_addr().unwrap().port(),
            logins: Mutex::new(vec![]),
            first_tokens: Mutex::new(None),
        });
        let me = Arc::downgrade(&v);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Some(v) = me.upgrade() else { return };
                if let Ok(c) = conn {
                    let _ = v.answer(c);
                }
            }
        });
        v
    }

    /// Logins decided so far.
    pub fn logins(&self) -> Vec<Login> {
        self.logins.lock().unwrap().clone()
    }

    /// From now on each user whose name starts with `prefix` logs in with its first token
    /// only: a renewed one is refused.
    pub fn refuse_renewals(&self, prefix: &str) {
        *self.first_tokens.lock().unwrap() = Some((prefix.to_string(), Default::default()));
    }

    /// Allows every valid SAS login again.
    pub fn allow_all(&self) {
        *self.first_tokens.lock().unwrap() = None;
    }

    fn answer(&self, c: std::net::TcpStream) -> std::io::Result<()> {
        c.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut r = BufReader::new(c.try_clone()?);
        let mut line = String::new();
        r.read_line(&mut line)?;
        let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
        let mut len = 0;
        loop {
            let mut h = String::new();
            r.read_line(&mut h)?;
            if h.trim().is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                len = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; len];
        r.read_exact(&mut body)?;
        let form = parse_form(&String::from_utf8_lossy(&body));
        let get =
            |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str()).unwrap_or("");
        let verdict = if path == "/auth/user" {
            let (user, pass) = (get("username"), get("password"));
            if !pass.starts_with("SharedAccessSignature ") {
                "deny".to_string()
            } else {
                let mut reason = check_sas(user, pass, Self::KEY_B64);
                if reason.is_empty()
                    && let Some((prefix, first)) = self.first_tokens.lock().unwrap().as_mut()
                    && user.starts_with(prefix.as_str())
                {
                    let token = first.entry(user.to_string()).or_insert_with(|| pass.to_string());
                    if token != pass {
                        reason = "refused by the test (renewal refused)".into();
                    }
                }
                let allowed = reason.is_empty();
                self.logins.lock().unwrap().push(Login {
                    username: user.to_string(),
                    password: pass.to_string(),
                    allowed,
                    reason,
                });
                if allowed { "allow".to_string() } else { "deny".to_string() }
            }
        } else {
            "allow".to_string()
        };
        let mut w = c;
        write!(
            w,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{verdict}",
            verdict.len()
        )?;
        w.flush()
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = vec![];
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz");
                match u8::from_str_radix(hex, 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_form(body: &str) -> Vec<(String, String)> {
    body.split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (percent_decode(k), percent_decode(v)))
        .collect()
}

/// Why a SAS token does not log `user` in ("" if it does): the signature, the expiry and the
/// device named by both.
pub fn check_sas(user: &str, token: &str, key_b64: &str) -> String {
    let Some(fields) = token.strip_prefix("SharedAccessSignature ") else {
        return "not a SAS token".into();
    };
    let mut sr = None;
    let mut sig = None;
    let mut se = None;
    for kv in fields.split('&') {
        match kv.split_once('=') {
            Some(("sr", v)) => sr = Some(v),
            Some(("sig", v)) => sig = Some(v),
            Some(("se", v)) => se = Some(v),
            _ => {}
        }
    }
    let (Some(sr), Some(sig), Some(se)) = (sr, sig, se) else {
        return format!("sr, sig or se missing: {token:?}");
    };
    let key = base64::engine::general_purpose::STANDARD.decode(key_b64).unwrap();
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key);
    let want = ring::hmac::sign(&key, format!("{sr}\n{se}").as_bytes());
    let Ok(got) = base64::engine::general_purpose::STANDARD.decode(percent_decode(sig)) else {
        return "sig is not base64".into();
    };
    if got != want.as_ref() {
        return "bad signature".into();
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    match se.parse::<u64>() {
        Ok(t) if t > now => {}
        _ => return format!("expired (se {se}, now {now})"),
    }
    // user: HUB.azure-devices.net/DEVICE/?api-version=…; sr: HUB.azure-devices.net/devices/DEVICE
    let resource = percent_decode(sr);
    let mut u = user.split('/');
    let (hub, device) = (u.next().unwrap_or(""), u.next().unwrap_or(""));
    if resource != format!("{hub}/devices/{device}") {
        return format!("sr {resource:?} is not the device of user {user:?}");
    }
    String::new()
}
