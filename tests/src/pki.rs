//! A private PKI made with `openssl` for the TLS tests: a CA, a server certificate for 127.0.0.1 /
//! localhost and a client certificate, all signed by it.

use std::path::Path;

/// A private CA, a server certificate for 127.0.0.1 / localhost and a client certificate, all signed by it.
#[derive(Debug)]
pub struct Pki {
    /// The CA certificate (PEM).
    pub ca: Vec<u8>,
    /// The server's certificate and key (PEM).
    pub server: (Vec<u8>, Vec<u8>),
    /// The client's certificate and key (PEM).
    pub client: (Vec<u8>, Vec<u8>),
}

impl Pki {
    /// Makes the files under `dir`, each name starting with `prefix` (so several can share a directory).
    ///
    /// # Panics
    /// If `openssl` is missing or fails.
    pub fn make(dir: &Path, prefix: &str) -> Pki {
        let path = |name: &str| dir.join(format!("{prefix}-{name}")).display().to_string();
        let openssl = |args: &[&str]| {
            let status = std::process::Command::new("openssl")
                .args(args)
                .stderr(std::process::Stdio::null())
                .status()
                .expect("openssl is needed for the TLS test: apt-get install openssl");
            assert!(status.success(), "openssl {args:?} failed");
        };
        let (ca, ca_key) = (path("ca.pem"), path("ca.key"));
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            &format!("/CN=test-ca-{prefix}"),
            "-keyout",
            &ca_key,
            "-out",
            &ca,
        ]);
        let sign = |name: &str, ext: &str| {
            let (key, csr, cert, ext_file) = (
                path(&format!("{name}.key")),
                path(&format!("{name}.csr")),
                path(&format!("{name}.pem")),
                path(&format!("{name}.cnf")),
            );
            std::fs::write(&ext_file, ext).unwrap();
            openssl(&[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                &format!("/CN={name}"),
                "-keyout",
                &key,
                "-out",
                &csr,
            ]);
            openssl(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &ca,
                "-CAkey",
                &ca_key,
                "-CAcreateserial",
                "-days",
                "1",
                "-extfile",
                &ext_file,
                "-out",
                &cert,
            ]);
            (std::fs::read(&cert).unwrap(), std::fs::read(&key).unwrap())
        };
        let server = sign(
            "server",
            "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        );
        let client = sign(
            "client",
            "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
        );
        Pki {
            ca: std::fs::read(&ca).unwrap(),
            server,
            client,
        }
    }
}
