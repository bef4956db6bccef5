//! The echo server (`wsingress echo`), built on hyper-tungstenite. Interface fixed; body by the echo work.

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What the echo server says and how it names itself.
#[derive(Debug, Clone, Default)]
pub struct EchoConfig {
    /// Prepended to every echoed text message (and binary, as bytes).
    pub prefix: String,
    /// Sent in the `x-echo-instance` response header and in `/headers`.
    pub instance: String,
}

/// Serve until `shutdown` fires.
pub async fn serve(
    listener: TcpListener,
    config: EchoConfig,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let _ = (listener, config);
    shutdown.cancelled().await;
    Ok(())
}
