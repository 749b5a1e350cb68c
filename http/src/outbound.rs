//! Where Tidings may send requests of its own (webhook deliveries): never to
//! an address inside the network it runs in — loopback, private,
//! link-local (the cloud metadata service among them), shared, multicast or
//! reserved — unless the operator allowlists it, and only over https
//! unless the address is allowlisted.
//!
//! A host name is resolved once and every address it resolves to is checked;
//! the sender connects to the checked addresses (its resolver is
//! [`Destinations::resolve`]), so a name that answers differently the second
//! time (DNS rebinding) gains nothing.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;

/// How long resolving a name may take.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest URL accepted.
pub const MAX_URL_LEN: usize = 2048;

/// Why a destination is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the URL does not parse: {0}")]
    Unparsable(String),
    #[error("the URL is longer than {MAX_URL_LEN} characters")]
    TooLong,
    #[error("only https URLs are accepted (http only for allowlisted addresses)")]
    Scheme,
    #[error("URLs with a user name or password are not accepted")]
    Credentials,
    #[error("the URL has no host")]
    NoHost,
    #[error("{host} resolves to {address}, a {kind} address that is not allowlisted")]
    Internal {
        host: String,
        address: IpAddr,
        kind: &'static str,
    },
    #[error("{0} does not resolve")]
    Unresolved(String),
}

/// The operator's allowlist, and the checks made with it.
#[derive(Debug, Clone, Default)]
pub struct Destinations {
    allowed: Vec<IpNet>,
}

impl Destinations {
    /// An allowlist of networks (`127.0.0.1/32`, `10.1.0.0/16`, `::1/128`;
    /// a bare address is one host).
    pub fn new(allowed: &[String]) -> Result<Destinations, String> {
        let allowed = allowed
            .iter()
            .map(|net| net.trim())
            .filter(|net| !net.is_empty())
            .map(|net| {
                net.parse::<IpNet>()
                    .or_else(|_| net.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("{net:?} is neither an address nor a network"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Destinations { allowed })
    }

    fn allowlisted(&self, address: IpAddr) -> bool {
        self.allowed.iter().any(|net| net.contains(&address))
    }

    /// Whether Tidings may connect to `address`: public, or allowlisted.
    pub fn check(&self, host: &str, address: IpAddr) -> Result<(), Refused> {
        match internal(address) {
            Some(kind) if !self.allowlisted(address) => Err(Refused::Internal {
                host: host.to_owned(),
                address,
                kind,
            }),
            _ => Ok(()),
        }
    }

    /// Resolves `host` and checks every address it names: all of them, or
    /// none, may be connected to.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, Refused> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let addresses: Vec<SocketAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => {
                let lookup = tokio::net::lookup_host((host, port));
                match tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await {
                    Ok(Ok(found)) => found.collect(),
                    _ => return Err(Refused::Unresolved(host.to_owned())),
                }
            }
        };
        if addresses.is_empty() {
            return Err(Refused::Unresolved(host.to_owned()));
        }
        for address in &addresses {
            self.check(host, address.ip())?;
        }
        Ok(addresses)
    }

    /// Checks a URL a user gives: its form, its scheme, and where its host
    /// resolves now. Returns the URL as parsed.
    pub async fn check_url(&self, url: &str) -> Result<url::Url, Refused> {
        if url.len() > MAX_URL_LEN {
            return Err(Refused::TooLong);
        }
        let parsed = url::Url::parse(url).map_err(|e| Refused::Unparsable(e.to_string()))?;
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(Refused::Credentials);
        }
        let host = parsed.host_str().ok_or(Refused::NoHost)?.to_owned();
        let port = parsed.port_or_known_default().ok_or(Refused::Scheme)?;
        let https = match parsed.scheme() {
            "https" => true,
            "http" => false,
            _ => return Err(Refused::Scheme),
        };
        let addresses = self.resolve(&host, port).await?;
        if !https && !addresses.iter().all(|a| self.allowlisted(a.ip())) {
            return Err(Refused::Scheme);
        }
        Ok(parsed)
    }
}

/// What kind of address inside a network `address` is, if it is one.
pub fn internal(address: IpAddr) -> Option<&'static str> {
    match address {
        IpAddr::V4(v4) => internal_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return internal_v4(v4);
            }
            let segments = v6.segments();
            // NAT64 (64:ff9b::/96) reaches the IPv4 address it embeds.
            if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                let [a, b] = segments[6].to_be_bytes();
                let [c, d] = segments[7].to_be_bytes();
                return internal_v4(Ipv4Addr::new(a, b, c, d));
            }
            internal_v6(v6)
        }
    }
}

fn internal_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        _ if ip.is_loopback() => "loopback",
        _ if ip.is_private() => "private",
        (169, 254, _) => "link-local",
        (100, 64..=127, _) => "shared",
        (0, _, _) => "unspecified",
        (192, 0, 0) | (192, 0, 2) | (198, 51, 100) | (203, 0, 113) | (198, 18..=19, _) => {
            "reserved"
        }
        _ if ip.is_multicast() => "multicast",
        (240..=255, _, _) => "reserved",
        _ => return None,
    })
}

fn internal_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let first = ip.segments()[0];
    Some(match first {
        _ if ip.is_loopback() => "loopback",
        _ if ip.is_unspecified() => "unspecified",
        _ if ip.is_multicast() => "multicast",
        _ if first & 0xfe00 == 0xfc00 => "private",
        _ if first & 0xffc0 == 0xfe80 => "link-local",
        0x2001 if ip.segments()[1] == 0x0db8 => "reserved",
        // Other IPv4-embedding forms (::a.b.c.d, 6to4, Teredo) and what is
        // not global unicast (2000::/3).
        _ if first & 0xe000 != 0x2000 => "reserved",
        // 6to4 and Teredo embed IPv4 addresses.
        0x2002 => "reserved",
        0x2001 if ip.segments()[1] == 0 => "reserved",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(d: &Destinations, ip: &str) -> bool {
        d.check("h", ip.parse().unwrap()).is_err()
    }

    #[test]
    fn addresses_inside_a_network_are_refused() {
        let d = Destinations::default();
        for ip in [
            "127.0.0.1",
            "127.1.2.3",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
            "2001:db8::1",
            "::127.0.0.1",
        ] {
            assert!(refused(&d, ip), "{ip} is let through");
        }
        for ip in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:4700::1111",
            "2a00:1450::1",
        ] {
            assert!(!refused(&d, ip), "{ip} is refused");
        }
    }

    #[test]
    fn an_allowlisted_network_is_let_through_and_nothing_else() {
        let d = Destinations::new(&["127.0.0.1/32".into(), "::1".into()]).unwrap();
        assert!(!refused(&d, "127.0.0.1"));
        assert!(!refused(&d, "::1"));
        assert!(refused(&d, "127.0.0.2"));
        assert!(refused(&d, "169.254.169.254"));
        assert!(Destinations::new(&["nonsense".into()]).is_err());
    }

    #[tokio::test]
    async fn urls_are_checked_by_form_scheme_and_where_they_resolve() {
        let open = Destinations::new(&["127.0.0.1/32".into()]).unwrap();
        let closed = Destinations::default();
        assert!(open.check_url("http://127.0.0.1:9/in").await.is_ok());
        assert_eq!(
            closed.check_url("http://127.0.0.1:9/in").await.unwrap_err(),
            Refused::Internal {
                host: "127.0.0.1".into(),
                address: "127.0.0.1".parse().unwrap(),
                kind: "loopback"
            }
        );
        assert!(matches!(
            closed.check_url("https://localhost/in").await,
            Err(Refused::Internal { .. })
        ));
        assert!(matches!(
            closed
                .check_url("https://169.254.169.254/latest/meta-data")
                .await,
            Err(Refused::Internal {
                kind: "link-local",
                ..
            })
        ));
        assert!(matches!(
            closed.check_url("https://[::ffff:10.0.0.1]/").await,
            Err(Refused::Internal { .. })
        ));
        assert_eq!(
            closed.check_url("ftp://example.com/").await.unwrap_err(),
            Refused::Scheme
        );
        assert_eq!(
            closed
                .check_url("https://u:p@example.com/")
                .await
                .unwrap_err(),
            Refused::Credentials
        );
        assert!(matches!(
            closed.check_url("not a url").await,
            Err(Refused::Unparsable(_))
        ));
    }
}
