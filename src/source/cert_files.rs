//! `serve --tls-cert FILE --tls-key FILE`: the fallback certificate (every host's in sidecar
//! mode; unknown and missing SNI otherwise) from PEM files, reloaded when they change.
//!
//! Like the manifests file, the pair is polled (every [`POLL_INTERVAL`]) rather than watched
//! with inotify: a Kubernetes Secret volume replaces both files at once by swapping its
//! `..data` symlink, which leaves an inode watch on the old files. Both files are read and
//! hashed each time (they are a few KB); a change is applied once the same content was seen
//! on two consecutive polls, so a certificate written before its key is not applied alone.
//! A bad pair is reported and the last good certificate keeps serving.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Publisher;
use crate::tls::material::{self, CertEntry, CertError, CertSource};

/// Label of this source in metrics and logs.
pub const SOURCE: &str = "tls-files";
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// The two files of `--tls-cert` and `--tls-key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertFileError {
    #[error("cannot read {path}: {why}")]
    Read { path: PathBuf, why: String },
    #[error("{cert}: {source}")]
    Material {
        cert: PathBuf,
        #[source]
        source: CertError,
    },
}

fn read(path: &Path) -> Result<Vec<u8>, CertFileError> {
    std::fs::read(path).map_err(|e| CertFileError::Read { path: path.to_path_buf(), why: e.to_string() })
}

/// Read and check the pair at `now`.
pub fn load(files: &CertFiles, now: i64) -> Result<CertEntry, CertFileError> {
    let (cert, key) = (read(&files.cert)?, read(&files.key)?);
    entry(files, &cert, &key, now)
}

fn entry(files: &CertFiles, cert: &[u8], key: &[u8], now: i64) -> Result<CertEntry, CertFileError> {
    let source = CertSource::File { path: files.cert.display().to_string() };
    material::load(cert, key, source, now, &crate::tls::provider())
        .map_err(|source| CertFileError::Material { cert: files.cert.clone(), source })
}

/// What one poll saw: the pair's digest, or why it could not be read.
fn observe(files: &CertFiles) -> Result<(u64, Vec<u8>, Vec<u8>), CertFileError> {
    let (cert, key) = (read(&files.cert)?, read(&files.key)?);
    Ok((material::digest(&cert, &key), cert, key))
}

/// Poll the pair until `shutdown`; `loaded` is the digest of the pair already serving.
pub async fn run(files: CertFiles, loaded: u64, publisher: Publisher, shutdown: CancellationToken) {
    let mut applied: Result<u64, CertFileError> = Ok(loaded);
    let mut previous: Option<Result<u64, CertFileError>> = None;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(POLL_INTERVAL) => {}
        }
        let seen = observe(&files);
        let summary = seen.as_ref().map(|(d, _, _)| *d).map_err(Clone::clone);
        let settled = previous.as_ref() == Some(&summary);
        previous = Some(summary.clone());
        if !settled || summary == applied {
            continue;
        }
        applied = summary;
        let loaded = seen.and_then(|(_, cert, key)| entry(&files, &cert, &key, crate::tls::unix_now()));
        match loaded {
            Ok(e) => {
                publisher.certificate_update(SOURCE, true);
                publisher.publish_fallback(Arc::new(e));
            }
            Err(e) => {
                publisher.certificate_update(SOURCE, false);
                tracing::warn!(source = SOURCE, error = %e, "certificate files rejected; the last good certificate keeps serving");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::routes::RouteHandle;
    use crate::source::test_support::until;
    use crate::tls::generate::{self, Validity};
    use crate::tls::{CertHandle, unix_now};

    fn pair(cn: &str) -> (String, String) {
        let g = generate::self_signed(cn, &["sidecar.example.com"], Validity::around(unix_now(), 1)).unwrap();
        (g.cert_pem, g.key_pem)
    }

    /// A Kubernetes-style Secret volume: `tls.crt -> ..data/tls.crt`, `..data -> ..v1`.
    struct Volume(PathBuf);

    impl Volume {
        fn new() -> Self {
            let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
            let dir = std::env::temp_dir().join(format!("wsingress-certvol-{}-{nanos}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            for f in ["tls.crt", "tls.key"] {
                std::os::unix::fs::symlink(format!("..data/{f}"), dir.join(f)).unwrap();
            }
            Self(dir)
        }

        /// Write a new version directory and swap `..data` to it atomically, as the kubelet does.
        fn swap(&self, version: &str, cert: &str, key: &str) {
            let v = self.0.join(format!("..{version}"));
            std::fs::create_dir_all(&v).unwrap();
            std::fs::write(v.join("tls.crt"), cert).unwrap();
            std::fs::write(v.join("tls.key"), key).unwrap();
            let tmp = self.0.join("..data_tmp");
            let _ = std::fs::remove_file(&tmp);
            std::os::unix::fs::symlink(format!("..{version}"), &tmp).unwrap();
            std::fs::rename(&tmp, self.0.join("..data")).unwrap();
        }

        fn files(&self) -> CertFiles {
            CertFiles { cert: self.0.join("tls.crt"), key: self.0.join("tls.key") }
        }
    }

    impl Drop for Volume {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[tokio::test]
    async fn a_symlink_swap_reloads_and_a_bad_pair_keeps_the_last_good_one() {
        let vol = Volume::new();
        let (c1, k1) = pair("v1");
        vol.swap("v1", &c1, &k1);
        let files = vol.files();
        let first = load(&files, unix_now()).unwrap();
        assert_eq!(first.info.subject, "CN=v1");
        let metrics = Arc::new(Metrics::new().unwrap());
        let handle = Arc::new(CertHandle::new(Arc::new(first)));
        let publisher =
            Publisher::new(Arc::new(RouteHandle::new()), metrics.clone(), "static").with_certs(handle.clone());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(
            files.clone(),
            material::digest(c1.as_bytes(), k1.as_bytes()),
            publisher,
            shutdown.clone(),
        ));
        let subject = || handle.fallback().info.subject.clone();
        let count = |r: &str| metrics.config_updates.with_label_values(&[SOURCE, r]).get();

        let (c2, k2) = pair("v2");
        vol.swap("v2", &c2, &k2);
        until("the swap to v2", || subject() == "CN=v2").await;
        assert_eq!(count("applied"), 1);

        // A key that belongs to another certificate: rejected, v2 keeps serving.
        let (_, k3) = pair("v3");
        vol.swap("v3", &c1, &k3);
        until("the rejection", || count("rejected") == 1).await;
        assert_eq!(subject(), "CN=v2");

        // Fixed: applied.
        vol.swap("v4", &c1, &k1);
        until("v1 again", || subject() == "CN=v1").await;
        let text = String::from_utf8(metrics.encode()).unwrap();
        assert!(text.contains("wsingress_tls_certificate_expiry_timestamp_seconds{secret=\"file:"), "{text}");
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), task).await.unwrap().unwrap();
    }

    #[test]
    fn load_names_the_file_and_the_reason() {
        let files = CertFiles { cert: "/nonexistent/tls.crt".into(), key: "/nonexistent/tls.key".into() };
        let err = load(&files, unix_now()).unwrap_err().to_string();
        assert!(err.contains("cannot read /nonexistent/tls.crt"), "{err}");
    }
}
