//! The HTTP client of one target: its own connection pool, no proxy, no redirect (a redirect
//! could lead outside the allow-list), and a resolver that never returns a forbidden address
//! (DNS answers are checked like literal IPs).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use crate::domain::targets::is_forbidden;

#[derive(Debug, thiserror::Error)]
#[error("cannot build the HTTP client: {0}")]
pub struct ClientError(#[from] reqwest::Error);

/// Resolves with the system resolver, dropping link-local, metadata and other forbidden answers.
struct GuardedResolver;

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = found
                .iter()
                .copied()
                .filter(|a| !is_forbidden(a.ip()))
                .collect();
            if allowed.is_empty() {
                let msg = format!("{host} resolves only to forbidden addresses ({found:?})");
                return Err(msg.into());
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// TLS uses rustls with the ring provider; installing it twice is harmless.
fn ensure_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub fn build(connect_timeout: Duration) -> Result<reqwest::Client, ClientError> {
    ensure_crypto_provider();
    Ok(reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(connect_timeout)
        .pool_idle_timeout(Duration::from_secs(30))
        .tcp_nodelay(true)
        .user_agent(concat!("netscope/", env!("CARGO_PKG_VERSION")))
        .dns_resolver(Arc::new(GuardedResolver))
        .build()?)
}

/// (local, remote) addresses of the connection a response came on.
pub fn connection_of(response: &reqwest::Response) -> Option<(SocketAddr, SocketAddr)> {
    response
        .extensions()
        .get::<hyper_util::client::legacy::connect::HttpInfo>()
        .map(|info| (info.local_addr(), info.remote_addr()))
}
