//! The lab's PKI, made with the openssl command line: a CA, the API server's serving
//! certificate, an admin client certificate (group system:masters) and the
//! service-account signing key. EC P-256 keys keep generation fast.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::LabError;

/// The `kubernetes` Service's addresses: the first of each Service range.
pub const KUBERNETES_SERVICE_IPS: [&str; 2] = ["198.19.240.1", "fd00:10:96::1"];

/// Paths of the generated PKI files.
#[derive(Debug, Clone)]
pub(crate) struct Pki {
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub admin_cert: PathBuf,
    pub admin_key: PathBuf,
    pub sa_key: PathBuf,
    pub sa_pub: PathBuf,
}

fn run(openssl: &Path, args: &[&str]) -> Result<(), LabError> {
    let out = Command::new(openssl)
        .args(args)
        .output()
        .map_err(LabError::io("running", openssl))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(LabError::Command {
            command: format!("openssl {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

fn path_str(p: &Path) -> &str {
    // Paths here are built from a UTF-8 base and fixed names.
    p.to_str().unwrap_or_default()
}

/// Generates the PKI into `dir`; `server_ips` go into the serving certificate's SANs.
pub(crate) fn generate(openssl: &Path, dir: &Path, server_ips: &[IpAddr]) -> Result<Pki, LabError> {
    let p = |name: &str| dir.join(name);
    let pki = Pki {
        ca_cert: p("ca.crt"),
        server_cert: p("apiserver.crt"),
        server_key: p("apiserver.key"),
        admin_cert: p("admin.crt"),
        admin_key: p("admin.key"),
        sa_key: p("sa.key"),
        sa_pub: p("sa.pub"),
    };
    let ca_key = p("ca.key");
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut args = vec![
        "req",
        "-x509",
        "-days",
        "3650",
        "-subj",
        "/CN=podnet-lab-ca",
    ];
    args.extend(ec);
    args.extend(["-keyout", path_str(&ca_key), "-out", path_str(&pki.ca_cert)]);
    args.extend([
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    run(openssl, &args)?;

    let mut san = String::from(
        "subjectAltName=DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local",
    );
    // The `kubernetes` Service's addresses: pods (CoreDNS, the e2e suite's clients)
    // reach the API server through them.
    for ip in KUBERNETES_SERVICE_IPS
        .iter()
        .map(ToString::to_string)
        .chain(server_ips.iter().map(ToString::to_string))
    {
        san.push_str(&format!(",IP:{ip}"));
    }
    let leaf = |subj: &str, key: &Path, cert: &Path, ext: &[&str]| {
        let mut args = vec!["req", "-x509", "-days", "3650", "-subj", subj];
        args.extend(ec);
        args.extend(["-CA", path_str(&pki.ca_cert), "-CAkey", path_str(&ca_key)]);
        args.extend(["-keyout", path_str(key), "-out", path_str(cert)]);
        args.extend(["-addext", "basicConstraints=critical,CA:FALSE"]);
        args.extend(ext);
        run(openssl, &args)
    };
    leaf(
        "/CN=kube-apiserver",
        &pki.server_key,
        &pki.server_cert,
        &["-addext", &san, "-addext", "extendedKeyUsage=serverAuth"],
    )?;
    leaf(
        "/O=system:masters/CN=podnet-lab-admin",
        &pki.admin_key,
        &pki.admin_cert,
        &["-addext", "extendedKeyUsage=clientAuth"],
    )?;
    run(
        openssl,
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            path_str(&pki.sa_key),
        ],
    )?;
    run(
        openssl,
        &[
            "pkey",
            "-in",
            path_str(&pki.sa_key),
            "-pubout",
            "-out",
            path_str(&pki.sa_pub),
        ],
    )?;
    Ok(pki)
}

/// A certificate and its key signed by the lab's CA.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its key (PEM).
    pub key: PathBuf,
}

/// What an issued certificate is for.
pub enum Usage<'a> {
    /// A client: `subject` such as `/O=system:nodes/CN=system:node:node-1`.
    Client,
    /// A server reached at these addresses.
    Server(&'a [IpAddr]),
}

/// Issues `<dir>/<name>.crt` and `.key` for `subject`, signed by the CA in `ca_cert` /
/// `ca_key`.
pub fn issue(
    openssl: &Path,
    ca_cert: &Path,
    ca_key: &Path,
    dir: &Path,
    name: &str,
    subject: &str,
    usage: Usage,
) -> Result<Issued, LabError> {
    let issued = Issued {
        cert: dir.join(format!("{name}.crt")),
        key: dir.join(format!("{name}.key")),
    };
    let mut ext: Vec<String> = vec!["basicConstraints=critical,CA:FALSE".into()];
    match usage {
        Usage::Client => ext.push("extendedKeyUsage=clientAuth".into()),
        Usage::Server(ips) => {
            ext.push("extendedKeyUsage=serverAuth".into());
            let san: Vec<String> = ips.iter().map(|ip| format!("IP:{ip}")).collect();
            ext.push(format!("subjectAltName={}", san.join(",")));
        }
    }
    let mut args = vec![
        "req",
        "-x509",
        "-days",
        "3650",
        "-subj",
        subject,
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-CA",
        path_str(ca_cert),
        "-CAkey",
        path_str(ca_key),
        "-keyout",
        path_str(&issued.key),
        "-out",
        path_str(&issued.cert),
    ];
    for e in &ext {
        args.extend(["-addext", e.as_str()]);
    }
    run(openssl, &args)?;
    Ok(issued)
}
