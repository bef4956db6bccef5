//! source file (work in progress)

use std::path::{Path, PathBuf};

use tokio_util::sync::CancellationToken;

use crate::routes::RouteTable;
use crate::translate::{Defaults, Warning};

/// Placeholder until the manifests source lands.
pub fn load_file(path: &Path, defaults: &Defaults) -> Result<(RouteTable, Vec<Warning>), String> {
    let _ = (path, defaults);
    Err("--manifests is not available in this build yet".to_string())
}

/// Placeholder until the manifests source lands.
pub async fn run(
    path: PathBuf,
    defaults: Defaults,
    publisher: super::Publisher,
    shutdown: CancellationToken,
) {
    let _ = (path, defaults, publisher);
    shutdown.cancelled().await;
}
