//! The SSRF guard. Hooks choose their URLs, so the engine decides where a
//! delivery may connect: by default only to public addresses. The check
//! runs after DNS resolution, and the connection goes to the address that
//! was checked (the resolver hands only checked addresses to the client),
//! so DNS rebinding gains nothing. Operators allow more with `allow_hosts`
//! (hostnames and CIDRs), per hook or for all.

use super::EgressError;
use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

/// Where deliveries may connect beyond public addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Egress {
    /// Lowercase hostnames; `*.example.com` matches its subdomains.
    hosts: Vec<String>,
    nets: Vec<IpNet>,
}

/// A connection the guard refused.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "refused to connect to {host} ({addr}): {why} address; if this receiver is trusted, \
     add it to `allow_hosts` in the hook's NAME.toml"
)]
pub(crate) struct Refused {
    pub host: String,
    pub addr: IpAddr,
    pub why: &'static str,
}

impl Egress {
    /// Parses `allow_hosts` entries: an IP, a CIDR, a hostname or `*.domain`.
    pub(crate) fn parse(entries: &[String]) -> Result<Egress, EgressError> {
        let mut egress = Egress::default();
        for entry in entries {
            let entry = entry.trim();
            if let Ok(net) = entry.parse::<IpNet>() {
                egress.nets.push(net);
            } else if let Ok(ip) = entry.parse::<IpAddr>() {
                egress.nets.push(IpNet::from(ip));
            } else if is_host_pattern(entry) {
                egress.hosts.push(entry.to_ascii_lowercase());
            } else {
                return Err(EgressError {
                    entry: entry.to_owned(),
                });
            }
        }
        Ok(egress)
    }

    /// This policy plus `other`'s allowances.
    pub(crate) fn with(&self, other: &Egress) -> Egress {
        let mut merged = self.clone();
        merged.hosts.extend(other.hosts.iter().cloned());
        merged.nets.extend(other.nets.iter().copied());
        merged
    }

    /// A key that tells policies apart, for one HTTP client per policy.
    pub(crate) fn key(&self) -> String {
        let mut parts: Vec<String> = self.hosts.clone();
        parts.extend(self.nets.iter().map(|n| n.to_string()));
        parts.sort();
        parts.join(",")
    }

    /// Whether the operator trusts this hostname whatever it resolves to.
    pub(crate) fn allows_host(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.hosts
            .iter()
            .any(|pattern| match pattern.strip_prefix("*.") {
                Some(domain) => host.ends_with(&format!(".{domain}")),
                None => *pattern == host,
            })
    }

    /// Checks one address `host` resolved to (or is).
    pub(crate) fn check(&self, host: &str, addr: IpAddr) -> Result<(), Refused> {
        if self.nets.iter().any(|n| n.contains(&addr)) {
            return Ok(());
        }
        match forbidden(addr) {
            None => Ok(()),
            Some(why) => Err(Refused {
                host: host.to_owned(),
                addr,
                why,
            }),
        }
    }
}

/// Several policies that must all allow a connection: the one a delivery
/// was queued under and the hook's current one.
#[derive(Debug)]
pub(crate) struct Guard {
    all: Vec<Egress>,
}

impl Guard {
    pub(crate) fn new(all: Vec<Egress>) -> Guard {
        Guard { all }
    }

    /// Checks one address `host` resolved to (or is) against every policy:
    /// each must trust the hostname or allow the address.
    pub(crate) fn check(&self, host: &str, addr: IpAddr) -> Result<(), Refused> {
        for egress in &self.all {
            if !egress.allows_host(host) {
                egress.check(host, addr)?;
            }
        }
        Ok(())
    }

    /// A resolver for reqwest that returns only the addresses every policy allows.
    pub(crate) fn resolver(self: &Arc<Self>) -> Arc<GuardedResolver> {
        Arc::new(GuardedResolver {
            guard: self.clone(),
        })
    }
}

fn is_host_pattern(entry: &str) -> bool {
    let name = entry.strip_prefix("*.").unwrap_or(entry);
    !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Why an address is not a public one, or `None` if it is.
pub(crate) fn forbidden(addr: IpAddr) -> Option<&'static str> {
    match addr {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        (0, ..) => "an unspecified (0.0.0.0/8)",
        (10, ..) | (172, 16..=31, _) | (192, 168, _) => "a private (RFC 1918)",
        (100, 64..=127, _) => "a carrier-grade NAT (100.64.0.0/10)",
        (127, ..) => "a loopback",
        (169, 254, _) => "a link-local (cloud metadata lives here)",
        (192, 0, 0) => "a reserved (192.0.0.0/24)",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "a documentation",
        (192, 88, 99) => "a reserved (6to4 relay)",
        (198, 18..=19, _) => "a benchmarking (198.18.0.0/15)",
        (224..=239, ..) => "a multicast",
        (240..=255, ..) => "a reserved (240.0.0.0/4, broadcast)",
        _ => return None,
    })
}

fn forbidden_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    if ip.is_unspecified() {
        return Some("an unspecified");
    }
    if ip.is_loopback() {
        return Some("a loopback");
    }
    // Forms that embed an IPv4 address are judged by that address.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return forbidden_v4(v4);
    }
    if s[0] == 0x0064 && s[1] == 0xff9b && s[2..6] == [0; 4] {
        return forbidden_v4(Ipv4Addr::from(((s[6] as u32) << 16) | s[7] as u32)); // NAT64
    }
    if s[0] == 0x2002 {
        return forbidden_v4(Ipv4Addr::from(((s[1] as u32) << 16) | s[2] as u32)); // 6to4
    }
    Some(match s[0] {
        0x0000 => "a deprecated IPv4-compatible or reserved",
        0x0064 if s[1] == 0xff9b => "a local-use NAT64 (64:ff9b:1::/48)",
        0x0100 if s[1..4] == [0; 3] => "a discard-only (100::/64)",
        0x2001 if s[1] == 0 => "a Teredo tunnel",
        0x2001 if s[1] == 0x0db8 => "a documentation",
        0xfc00..=0xfdff => "a unique local (fc00::/7)",
        0xfe80..=0xfebf => "a link-local",
        0xfec0..=0xfeff => "a site-local (deprecated)",
        0xff00..=0xffff => "a multicast",
        0x2000..=0x3fff => return None, // global unicast
        _ => "a reserved",
    })
}

/// The resolver every delivery client uses: system DNS, then the guard.
pub(crate) struct GuardedResolver {
    guard: Arc<Guard>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let guard = self.guard.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refused = None;
            let allowed: Vec<SocketAddr> = addrs
                .into_iter()
                .filter(|a| match guard.check(&host, a.ip()) {
                    Ok(()) => true,
                    Err(r) => {
                        refused.get_or_insert(r);
                        false
                    }
                })
                .collect();
            match (allowed.is_empty(), refused) {
                (true, Some(refused)) => Err(refused.into()),
                _ => Ok(Box::new(allowed.into_iter()) as Addrs),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_every_non_public_form() {
        let refused = [
            "0.0.0.0",
            "0.1.2.3",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "100.64.0.1",
            "100.127.255.254",
            "127.0.0.1",
            "127.9.9.9",
            "169.254.169.254",
            "192.0.0.8",
            "192.0.2.1",
            "198.18.0.1",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b::7f00:1",
            "64:ff9b:1::1",
            "2002:7f00:1::",
            "2002:a9fe:a9fe::1",
            "2002:c0a8:101::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "100::1",
            "2001:db8::1",
            "2001:0:4136:e378::1",
            "4000::1",
        ];
        for ip in refused {
            let addr: IpAddr = ip.parse().unwrap();
            assert!(forbidden(addr).is_some(), "{ip} must be refused");
        }
        for ip in [
            "1.1.1.1",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "::ffff:1.1.1.1",
            "64:ff9b::101:101",
            "2002:808:808::",
            "2606:4700:4700::1111",
        ] {
            let addr: IpAddr = ip.parse().unwrap();
            assert_eq!(forbidden(addr), None, "{ip} is public");
        }
    }

    #[test]
    fn allow_hosts_takes_hostnames_ips_and_cidrs() {
        let e = Egress::parse(&[
            "127.0.0.1".into(),
            "10.0.0.0/8".into(),
            "fd00::/8".into(),
            "cmdb.internal".into(),
            "*.corp.example".into(),
        ])
        .unwrap();
        assert!(e.check("x", "127.0.0.1".parse().unwrap()).is_ok());
        assert!(e.check("x", "127.0.0.2".parse().unwrap()).is_err());
        assert!(e.check("x", "10.9.8.7".parse().unwrap()).is_ok());
        assert!(e.check("x", "fd00::5".parse().unwrap()).is_ok());
        assert!(e.allows_host("CMDB.internal"));
        assert!(e.allows_host("ci.corp.example"));
        assert!(!e.allows_host("corp.example.evil"));
        assert!(Egress::parse(&["not a host!".into()]).is_err());
    }
}
