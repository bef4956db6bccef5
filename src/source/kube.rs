//! source kube (work in progress)

use std::future::Future;
use std::pin::Pin;

use tokio_util::sync::CancellationToken;

/// Placeholder until the controller lands.
pub async fn run_from_args(
    args: &crate::cli::ServeArgs,
    publisher: super::Publisher,
    shutdown: CancellationToken,
) -> anyhow::Result<Pin<Box<dyn Future<Output = ()> + Send>>> {
    let _ = (args, publisher, shutdown);
    Err(crate::app::ConfigError(
        "cluster mode is not available in this build yet; use --upstream".into(),
    )
    .into())
}
