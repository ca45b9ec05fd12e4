//! Network value types shared by configuration and the probe's filters.

use std::{fmt, net::IpAddr, str::FromStr};

/// An IP prefix such as `10.0.0.0/8` or `2001:db8::/32` (a bare address is a /32 or /128).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix_len: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix_len))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix_len))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("`{s}` is not an IP address or CIDR prefix"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix_len = match len {
            None => max,
            Some(l) => l
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|l| *l <= max)
                .ok_or_else(|| format!("`{s}`: prefix length must be 0..={max}"))?,
        };
        Ok(Self { addr, prefix_len })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// Named destination prefixes, the `dest` label of flow metrics: a remote address belongs to
/// the first configured group that contains it, else to `internal` (private, loopback,
/// link-local, shared and unique-local ranges) or `external`. A bounded set by construction.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DestGroups {
    groups: Vec<(String, Vec<Cidr>)>,
}

/// Ranges that are not the Internet: RFC 1918, loopback, link-local, CGNAT (RFC 6598), ULA.
const INTERNAL: [Cidr; 9] = [
    Cidr::v4([10, 0, 0, 0], 8),
    Cidr::v4([172, 16, 0, 0], 12),
    Cidr::v4([192, 168, 0, 0], 16),
    Cidr::v4([127, 0, 0, 0], 8),
    Cidr::v4([169, 254, 0, 0], 16),
    Cidr::v4([100, 64, 0, 0], 10),
    Cidr::v6([0, 0, 0, 0, 0, 0, 0, 1], 128),
    Cidr::v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7),
    Cidr::v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10),
];

impl Cidr {
    const fn v4(octets: [u8; 4], prefix_len: u8) -> Self {
        let [a, b, c, d] = octets;
        Self {
            addr: IpAddr::V4(std::net::Ipv4Addr::new(a, b, c, d)),
            prefix_len,
        }
    }

    const fn v6(segments: [u16; 8], prefix_len: u8) -> Self {
        let [a, b, c, d, e, f, g, h] = segments;
        Self {
            addr: IpAddr::V6(std::net::Ipv6Addr::new(a, b, c, d, e, f, g, h)),
            prefix_len,
        }
    }
}

impl DestGroups {
    /// `groups` as configured (name → prefixes), in order of precedence.
    pub fn new(groups: Vec<(String, Vec<Cidr>)>) -> Self {
        Self { groups }
    }

    pub fn group_of(&self, ip: IpAddr) -> &str {
        let index = self.index_of(ip);
        match self.groups.get(index) {
            Some((name, _)) => name,
            None if index == self.groups.len() => "internal",
            None => "external",
        }
    }

    /// The position of `ip`'s group in [`Self::names`].
    pub fn index_of(&self, ip: IpAddr) -> usize {
        if let Some(index) = self
            .groups
            .iter()
            .position(|(_, cidrs)| cidrs.iter().any(|c| c.contains(ip)))
        {
            return index;
        }
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let internal = INTERNAL.iter().any(|c| c.contains(ip));
        self.groups.len() + usize::from(!internal)
    }

    /// Every value `group_of` can return.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.groups
            .iter()
            .map(|(n, _)| n.as_str())
            .chain(["internal", "external"])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_destination_falls_in_the_first_group_then_internal_or_external() {
        let g = DestGroups::new(vec![
            ("db".into(), vec!["10.1.0.0/16".parse().unwrap()]),
            ("all-ten".into(), vec!["10.0.0.0/8".parse().unwrap()]),
        ]);
        assert_eq!(g.group_of("10.1.2.3".parse().unwrap()), "db");
        for ip in [
            "10.1.2.3",
            "10.9.2.3",
            "192.168.1.1",
            "8.8.8.8",
            "::ffff:10.1.0.1",
        ] {
            let ip = ip.parse().unwrap();
            assert_eq!(g.names().nth(g.index_of(ip)), Some(g.group_of(ip)), "{ip}");
        }
        assert_eq!(g.group_of("10.9.2.3".parse().unwrap()), "all-ten");
        assert_eq!(g.group_of("192.168.1.1".parse().unwrap()), "internal");
        assert_eq!(g.group_of("::ffff:127.0.0.1".parse().unwrap()), "internal");
        assert_eq!(g.group_of("8.8.8.8".parse().unwrap()), "external");
        assert_eq!(g.group_of("2001:db8::1".parse().unwrap()), "external");
        assert_eq!(g.names().count(), 4);
    }

    #[test]
    fn parses_and_matches() {
        let net: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(net.contains("10.1.200.3".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        assert!(!net.contains("::1".parse().unwrap()));
        let host: Cidr = "::1".parse().unwrap();
        assert_eq!(host.prefix_len, 128);
        assert!(host.contains("::1".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("192.0.2.1".parse().unwrap()));
    }

    #[test]
    fn rejects_bad_prefixes() {
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("nope/8".parse::<Cidr>().is_err());
        assert!("10.0.0.0/x".parse::<Cidr>().is_err());
        assert!("::/129".parse::<Cidr>().is_err());
    }
}
