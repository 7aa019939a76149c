//! Test certificates: a private CA, a server certificate for 127.0.0.1 and a client
//! certificate, all signed by the CA, made with `openssl` in a test's folder.

pub fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl is installed");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Writes `ca.pem`, `server.pem`/`server.key` and `client.pem`/`client.key` into `d`, readable
/// by a broker that drops root to its own user.
pub fn make_certs(d: &std::path::Path) {
    // A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA.
    openssl(
        d,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=iot-sim test CA",
        ],
    );
    std::fs::write(d.join("server.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n").unwrap();
    std::fs::write(d.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for name in ["server", "client"] {
        openssl(
            d,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={name}"),
            ],
        );
        let mut args = vec!["x509", "-req", "-in", &format!("{name}.csr")]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>();
        args.extend(
            ["-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2", "-out"]
                .map(String::from),
        );
        args.push(format!("{name}.pem"));
        // Extensions make it an X.509 v3 certificate, which webpki requires.
        args.extend(["-extfile".to_string(), format!("{name}.ext")]);
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        openssl(d, &a);
    }
    // Mosquitto started as root drops to its own user: it must be able to read these files.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    for f in ["ca.pem", "server.pem", "server.key"] {
        std::fs::set_permissions(d.join(f), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
}
