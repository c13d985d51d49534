//! The two API clients each binary holds: one for watches, one for every other request.
//!
//! kube's default client has no read timeout, since a watch may legitimately stay silent
//! for minutes. For a plain request that is wrong: a request the API server accepted and
//! never answered (one caught in its shutdown, say) would hold its caller forever, and a
//! controller loop awaiting it would stop with it. Requests therefore go through a client
//! whose connections give up after [`REQUEST_READ_TIMEOUT`] of silence; watches (whose
//! list and watch requests kube-runtime's idle timeout does not cover until the response
//! starts) go through one that gives up after [`WATCH_READ_TIMEOUT`].

use std::time::Duration;

/// How long a request waits for the next bytes of its response before failing.
pub const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(20);

/// The server-side timeout podnet's watches ask for (`timeoutSeconds`): the API server
/// ends each watch after it and the watcher resumes from its last resourceVersion.
pub const WATCH_TIMEOUT_SECS: u32 = 290;

/// The watch client's read timeout: longer than any healthy watch can stay silent (the
/// server ends it at [`WATCH_TIMEOUT_SECS`]), so it only fires on a list or a watch
/// whose response never starts, which kube-runtime's idle timeout does not cover.
pub const WATCH_READ_TIMEOUT: Duration = Duration::from_secs(WATCH_TIMEOUT_SECS as u64 + 40);

/// Why the clients could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No kubeconfig or in-cluster configuration found, or it is unusable.
    #[error("finding the API server's configuration (in-cluster or KUBECONFIG): {0}")]
    Config(#[from] kube::config::InferConfigError),
    /// The configuration did not make a client (TLS material, proxy, …).
    #[error("building the API client: {0}")]
    Build(#[from] kube::Error),
}

/// The watch client and the request client, from the same configuration.
#[derive(Clone)]
pub struct ApiClients {
    /// For watches (and the reflectors built on them): fails only after
    /// [`WATCH_READ_TIMEOUT`] without a byte.
    pub watch: kube::Client,
    /// For gets, lists, creates, patches, deletes: fails after
    /// [`REQUEST_READ_TIMEOUT`] without a byte of response.
    pub request: kube::Client,
}

impl ApiClients {
    /// Both clients from the in-cluster configuration or `KUBECONFIG`.
    pub async fn infer() -> Result<Self, ClientError> {
        Self::from_config(kube::Config::infer().await?)
    }

    /// Both clients from `config`.
    pub fn from_config(config: kube::Config) -> Result<Self, ClientError> {
        let watch = kube::Client::try_from(with_read_timeout(config.clone(), WATCH_READ_TIMEOUT))?;
        let request = kube::Client::try_from(with_read_timeout(config, REQUEST_READ_TIMEOUT))?;
        Ok(Self { watch, request })
    }
}

fn with_read_timeout(mut config: kube::Config, timeout: Duration) -> kube::Config {
    config.read_timeout = Some(timeout);
    config
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// A real socket that accepts connections and never answers: what a frozen or
    /// half-dead API server looks like to a client.
    fn silent_server() -> (std::net::TcpListener, http::Uri) {
        let listener =
            std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
        let port = listener
            .local_addr()
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("addr: {e}"));
        let uri: http::Uri = format!("http://127.0.0.1:{port}")
            .parse()
            .unwrap_or_else(|e| panic!("uri: {e}"));
        (listener, uri)
    }

    #[tokio::test]
    async fn a_request_to_a_silent_server_fails_and_a_watch_waits() {
        let (_listener, uri) = silent_server();
        let base = kube::Config::new(uri);
        assert!(WATCH_READ_TIMEOUT > Duration::from_secs(u64::from(WATCH_TIMEOUT_SECS)));
        let timeout = Duration::from_millis(500);
        let request = kube::Client::try_from(with_read_timeout(base.clone(), timeout))
            .unwrap_or_else(|e| panic!("client: {e}"));
        let watch = kube::Client::try_from(with_read_timeout(base, WATCH_READ_TIMEOUT))
            .unwrap_or_else(|e| panic!("client: {e}"));
        let get = || {
            http::Request::get("/version")
                .body(Vec::new())
                .unwrap_or_else(|e| panic!("{e}"))
        };

        let started = Instant::now();
        let outcome =
            tokio::time::timeout(Duration::from_secs(10), request.request_text(get())).await;
        let took = started.elapsed();
        match outcome {
            Ok(Err(_)) => {}
            Ok(Ok(body)) => panic!("a silent server answered {body:?}"),
            Err(_) => panic!("the request client still waited after 10 s"),
        }
        assert!(took >= timeout, "failed after {took:?}, before its timeout");

        // The watch client waits far longer: still waiting well past the request's limit.
        let pending = tokio::time::timeout(4 * timeout, watch.request_text(get())).await;
        assert!(pending.is_err(), "the watch client gave up: {pending:?}");
    }
}
