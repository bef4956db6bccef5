//! Helpers for the TLS tests: a CA and leaves made per test, a certificate handle, rustls
//! client configurations, and a relay-style echo over [`TlsConn`] (readiness, `read_some`,
//! `try_write`, `poll_write_ready`: the calls the relay makes).
#![allow(dead_code)]

use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use wsingress::tls::generate::{Authority, Generated, Validity};
use wsingress::tls::{self, CertEntry, CertHandle, CertSource, CertTable, TlsConn, material};

pub const TIMEOUT: Duration = Duration::from_secs(10);

/// A CA, its PEM, and a way to issue leaves.
pub struct Pki {
    pub ca: Authority,
    pub ca_pem: String,
}

impl Pki {
    pub fn new(name: &str) -> Self {
        let ca = Authority::new(name, Validity::around(tls::unix_now(), 2)).unwrap();
        let ca_pem = ca.cert_pem();
        Self { ca, ca_pem }
    }

    pub fn leaf(&self, cn: &str, hosts: &[&str]) -> Generated {
        self.ca.issue(cn, hosts, Validity::around(tls::unix_now(), 1)).unwrap()
    }

    /// A loaded certificate from `source` for `hosts`.
    pub fn entry(&self, source: CertSource, cn: &str, hosts: &[&str]) -> Arc<CertEntry> {
        let g = self.leaf(cn, hosts);
        Arc::new(
            material::load(g.cert_pem.as_bytes(), g.key_pem.as_bytes(), source, tls::unix_now(), &tls::provider())
                .unwrap(),
        )
    }

    pub fn roots(&self) -> rustls::RootCertStore {
        material::ca_roots(self.ca_pem.as_bytes()).unwrap()
    }

    /// A client trusting this CA, offering `alpn`, limited to `versions` (all when empty).
    pub fn client(
        &self,
        alpn: &[&str],
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Arc<rustls::ClientConfig> {
        let b = rustls::ClientConfig::builder_with_provider(tls::provider());
        let b = if versions.is_empty() {
            b.with_safe_default_protocol_versions()
        } else {
            b.with_protocol_versions(versions)
        };
        let mut c = b.unwrap().with_root_certificates(self.roots()).with_no_client_auth();
        c.alpn_protocols = alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
        Arc::new(c)
    }
}

/// A handle whose fallback is a leaf for `wsingress.local`, with `hosts` mapped to leaves whose
/// common name is the host.
pub fn handle(pki: &Pki, hosts: &[&str]) -> Arc<CertHandle> {
    let h = Arc::new(CertHandle::new(pki.entry(CertSource::SelfSigned, "fallback", &["wsingress.local"])));
    let entries = hosts
        .iter()
        .map(|host| (host.to_string(), pki.entry(CertSource::secret("test", host), host, &[host])))
        .collect();
    h.publish(CertTable::new(entries, None));
    h
}

pub async fn listener() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    (l, a)
}

/// Read once through the relay calls; `Ok(0)` at the end of the stream.
pub async fn read_some(c: &mut TlsConn, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        poll_fn(|cx| c.poll_read_ready(cx)).await?;
        match c.read_some(buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            other => return other,
        }
    }
}

/// Write everything through the relay calls, then flush what the connection holds.
pub async fn write_all(c: &mut TlsConn, data: &[u8]) -> io::Result<()> {
    let mut off = 0;
    while off < data.len() {
        poll_fn(|cx| c.poll_write_ready(cx)).await?;
        match c.try_write(&data[off..]) {
            Ok(n) => off += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    flush(c).await
}

pub async fn flush(c: &mut TlsConn) -> io::Result<()> {
    while c.has_pending_write() {
        poll_fn(|cx| c.poll_write_ready(cx)).await?;
    }
    Ok(())
}

/// Echo until the peer ends, then close_notify + FIN. Returns the bytes echoed.
pub async fn echo(mut c: TlsConn) -> io::Result<(u64, bool)> {
    let mut buf = vec![0u8; 64 * 1024 - 131];
    let mut total = 0u64;
    loop {
        match read_some(&mut c, &mut buf).await? {
            0 => break,
            n => {
                total += n as u64;
                write_all(&mut c, &buf[..n]).await?;
            }
        }
    }
    let clean = c.received_close_notify();
    c.shutdown_write();
    flush(&mut c).await?;
    Ok((total, clean))
}

pub async fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).await.unwrap()
}

/// A scratch folder under the system temp dir, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Self {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let dir = std::env::temp_dir().join(format!("wsingress-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// Kubernetes-style Secret volume: `tls.crt -> ..data/tls.crt`, `..data -> ..VERSION`.
    pub fn swap(&self, version: &str, cert: &str, key: &str) {
        let v = self.0.join(format!("..{version}"));
        std::fs::create_dir_all(&v).unwrap();
        std::fs::write(v.join("tls.crt"), cert).unwrap();
        std::fs::write(v.join("tls.key"), key).unwrap();
        for f in ["tls.crt", "tls.key"] {
            let link = self.0.join(f);
            if std::fs::symlink_metadata(&link).is_err() {
                std::os::unix::fs::symlink(format!("..data/{f}"), &link).unwrap();
            }
        }
        let tmp = self.0.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(format!("..{version}"), &tmp).unwrap();
        std::fs::rename(&tmp, self.0.join("..data")).unwrap();
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
