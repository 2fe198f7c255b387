//! Lets containers reach an S3 endpoint that listens on this machine's loopback (a MinIO or
//! test server at `http://127.0.0.1:9000`): inside a container 127.0.0.1 is the container
//! itself. The relay listens on the job network's gateway address, which containers on that
//! network reach and nothing outside this machine does, and copies bytes both ways to the
//! loopback endpoint. Requests are forwarded untouched, so their SigV4 signatures (which
//! cover the `Host` the client used) still verify.

use crate::docker::Subnet;
use std::net::{IpAddr, SocketAddr};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use url::Url;

/// A running relay; dropping it closes the listener and every forwarded connection.
pub(crate) struct Relay {
    /// The endpoint as containers must name it.
    pub url: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Whether `endpoint` (a URL) names this machine's loopback, which containers cannot reach.
pub(crate) fn loopback_target(endpoint: &str) -> Option<SocketAddr> {
    let url = Url::parse(endpoint).ok()?;
    let port = url.port_or_known_default()?;
    let ip: IpAddr = match url.host()? {
        url::Host::Ipv4(ip) => ip.into(),
        url::Host::Ipv6(ip) => ip.into(),
        url::Host::Domain(d) if d.eq_ignore_ascii_case("localhost") => IpAddr::from([127, 0, 0, 1]),
        url::Host::Domain(_) => return None,
    };
    ip.is_loopback().then_some(SocketAddr::new(ip, port))
}

impl Relay {
    /// Listens on `listen` (any free port) and forwards to `endpoint`'s loopback address,
    /// for clients in `peers` only: the job's own network, so no other container on this
    /// machine reaches the endpoint through it.
    pub(crate) async fn start(listen: IpAddr, endpoint: &str, peers: Subnet) -> std::io::Result<Relay> {
        let Some(target) = loopback_target(endpoint) else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{endpoint} is not an endpoint on this machine's loopback"),
            ));
        };
        let listener = TcpListener::bind(SocketAddr::new(listen, 0)).await?;
        let bound = listener.local_addr()?;
        let mut url = Url::parse(endpoint).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let _ = url.set_ip_host(listen);
        let _ = url.set_port(Some(bound.port()));
        let task = tokio::spawn(async move {
            // Owned here so that aborting the listener aborts every connection too.
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((client, from)) if peers.contains(from.ip()) => {
                            connections.spawn(forward(client, target));
                        }
                        Ok((_, from)) => tracing::warn!("the S3 relay on {bound} refused {from}, which is not on the job's network"),
                        Err(e) => tracing::warn!("the S3 relay on {bound} cannot accept: {e}"),
                    },
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        Ok(Relay { url: url.as_str().trim_end_matches('/').to_string(), task })
    }
}

async fn forward(mut client: TcpStream, target: SocketAddr) {
    match TcpStream::connect(target).await {
        Ok(mut server) => {
            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
        }
        Err(e) => tracing::warn!("the S3 relay cannot reach {target}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn only_loopback_endpoints_need_a_relay() {
        assert_eq!(loopback_target("http://127.0.0.1:9000"), Some("127.0.0.1:9000".parse().unwrap()));
        assert_eq!(loopback_target("http://localhost"), Some("127.0.0.1:80".parse().unwrap()));
        assert_eq!(loopback_target("http://[::1]:9000/"), Some("[::1]:9000".parse().unwrap()));
        assert_eq!(loopback_target("https://s3.us-east-1.amazonaws.com"), None);
        assert_eq!(loopback_target("http://10.1.2.3:9000"), None);
        assert_eq!(loopback_target("not a url"), None);
    }

    #[tokio::test]
    async fn bytes_cross_both_ways_and_stop_when_dropped() {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = echo.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        // A second loopback address stands in for a Docker network's gateway.
        let loopback = Subnet::parse("127.0.0.0/8").unwrap();
        let relay =
            Relay::start("127.0.0.2".parse().unwrap(), &format!("http://127.0.0.1:{port}"), loopback).await.unwrap();
        assert!(relay.url.starts_with("http://127.0.0.2:"), "{}", relay.url);
        let addr = relay.url.trim_start_matches("http://").to_string();
        let mut c = TcpStream::connect(&addr).await.unwrap();
        c.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let mut got = [0u8; 16];
        c.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"GET / HTTP/1.1\r\n");
        drop(relay);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(TcpStream::connect(&addr).await.is_err());

        // Clients outside the job's network are dropped unanswered.
        let elsewhere = Subnet::parse("10.0.0.0/8").unwrap();
        let relay =
            Relay::start("127.0.0.2".parse().unwrap(), &format!("http://127.0.0.1:{port}"), elsewhere).await.unwrap();
        let mut c = TcpStream::connect(relay.url.trim_start_matches("http://")).await.unwrap();
        let _ = c.write_all(b"GET / HTTP/1.1\r\n").await;
        let mut got = Vec::new();
        let read = tokio::time::timeout(std::time::Duration::from_secs(5), c.read_to_end(&mut got)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "an outsider was answered: {got:?}");
    }
}
