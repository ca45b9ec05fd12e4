//! Where calls may go: the configured targets (allow-list of hosts or CIDRs and ports), their
//! routes, and the addresses that are never a target whatever the configuration says.

use std::net::IpAddr;

use super::{Cidr, RouteName, TargetName};

/// How a target names its hosts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostMatch {
    /// An exact DNS name (lower case, no trailing dot).
    Name(String),
    /// A literal IP within this prefix.
    Net(Cidr),
}

/// A route of a target: requests whose path starts with `path_prefix`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteRule {
    pub name: RouteName,
    pub path_prefix: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub name: TargetName,
    pub hosts: Vec<HostMatch>,
    pub ports: Vec<u16>,
    /// Tried in order; a path matching none gets the route `default`.
    pub routes: Vec<RouteRule>,
    /// A call that was executing when the agent died runs again even when it is not
    /// idempotent (the target deduplicates by itself, or a repeat is harmless).
    pub replay_unsafe: bool,
}

/// The allow-list. Built from validated configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Targets(pub Vec<Target>);

/// The URL host, as the URL spells it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Host<'a> {
    Name(&'a str),
    Ip(IpAddr),
}

/// Why a destination is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Link-local, cloud metadata, unspecified, multicast or broadcast: never a target.
    Forbidden,
    /// Not in the allow-list.
    NotAllowed,
}

/// Addresses that are never a target, even when a configured prefix covers them.
pub fn is_forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_link_local() // 169.254.0.0/16, incl. cloud metadata 169.254.169.254
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.octets()[0] == 0
                || v4.octets() == [100, 100, 100, 200] // Alibaba Cloud metadata
        }
        IpAddr::V6(v6) => {
            let mapped = v6.to_ipv4_mapped();
            mapped.is_some_and(|v4| is_forbidden(IpAddr::V4(v4)))
                || v6.is_unspecified()
                || v6.is_multicast()
                || (v6.segments()[0] & 0xffc0) == 0xfe80 // link-local
                || v6.segments()[..4] == [0xfd00, 0x0ec2, 0, 0] // AWS IMDS over IPv6
        }
    }
}

impl Targets {
    /// The target that allows `host:port`, or why there is none.
    pub fn resolve(&self, host: &Host<'_>, port: u16) -> Result<&Target, Refusal> {
        if let Host::Ip(ip) = host
            && is_forbidden(*ip)
        {
            return Err(Refusal::Forbidden);
        }
        self.0
            .iter()
            .find(|t| {
                t.ports.contains(&port)
                    && t.hosts.iter().any(|h| match (h, host) {
                        (HostMatch::Name(n), Host::Name(name)) => n.eq_ignore_ascii_case(name),
                        (HostMatch::Net(net), Host::Ip(ip)) => net.contains(*ip),
                        _ => false,
                    })
            })
            .ok_or(Refusal::NotAllowed)
    }
}

impl Target {
    /// The route of a request path: the first rule whose prefix matches, else `default`.
    pub fn route(&self, path: &str) -> RouteName {
        self.routes
            .iter()
            .find(|r| path.starts_with(&r.path_prefix))
            .map_or_else(|| RouteName("default".to_owned()), |r| r.name.clone())
    }

    /// The local demo upstream (127.0.0.1:18080) as target `demo`, with routes `orders` and
    /// `payments`: what tests and benchmarks start from.
    pub fn example() -> Self {
        let route = |name: &str| RouteRule {
            name: RouteName(name.to_owned()),
            path_prefix: format!("/{name}"),
        };
        Self {
            name: TargetName("demo".into()),
            hosts: vec![HostMatch::Net(Cidr {
                addr: IpAddr::from([127, 0, 0, 1]),
                prefix_len: 32,
            })],
            ports: vec![18080],
            routes: vec![route("orders"), route("payments")],
            replay_unsafe: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets() -> Targets {
        Targets(vec![
            Target::example(),
            Target {
                name: TargetName("payments".into()),
                hosts: vec![
                    HostMatch::Name("pay.example.com".into()),
                    HostMatch::Net("169.254.0.0/16".parse().unwrap()),
                ],
                ports: vec![443],
                routes: vec![],
                replay_unsafe: false,
            },
        ])
    }

    #[test]
    fn allows_only_listed_hosts_and_ports() {
        let t = targets();
        let ip = |s: &str| Host::Ip(s.parse().unwrap());
        assert_eq!(t.resolve(&ip("127.0.0.1"), 18080).unwrap().name.0, "demo");
        assert_eq!(t.resolve(&ip("127.0.0.1"), 22), Err(Refusal::NotAllowed));
        assert_eq!(t.resolve(&ip("10.0.0.1"), 18080), Err(Refusal::NotAllowed));
        assert_eq!(
            t.resolve(&Host::Name("PAY.example.com"), 443)
                .unwrap()
                .name
                .0,
            "payments"
        );
        assert_eq!(
            t.resolve(&Host::Name("evil.example.com"), 443),
            Err(Refusal::NotAllowed)
        );
    }

    #[test]
    fn metadata_and_link_local_are_never_targets_even_if_configured() {
        let t = targets();
        for bad in [
            "169.254.169.254",
            "169.254.1.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "100.100.100.200",
            "fe80::1",
            "::",
            "::ffff:169.254.169.254",
            "fd00:ec2::254",
        ] {
            let ip: IpAddr = bad.parse().unwrap();
            assert!(is_forbidden(ip), "{bad}");
            assert_eq!(
                t.resolve(&Host::Ip(ip), 443),
                Err(Refusal::Forbidden),
                "{bad}"
            );
        }
        assert!(!is_forbidden("127.0.0.1".parse().unwrap()));
        assert!(!is_forbidden("2001:db8::1".parse().unwrap()));
    }

    #[test]
    fn routes_match_by_prefix_else_default() {
        let t = targets();
        let demo = &t.0[0];
        assert_eq!(demo.route("/orders/42").0, "orders");
        assert_eq!(demo.route("/users").0, "default");
    }
}
