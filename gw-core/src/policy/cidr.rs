//! CIDR blocks, and the client address as trusted proxies report it.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use http::HeaderMap;

/// An address block such as `10.0.0.0/8` or `2001:db8::/32`; a bare address is a block of
/// one. IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`) match IPv4 blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` is in the block.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = addr
            .parse()
            .map_err(|_| format!("{text:?} is not an IP address or CIDR block"))?;
        let network = network.to_canonical();
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{text:?}: the prefix length must be 0 to {max}"))?,
        };
        let block = Self { network, prefix };
        if block.masked() != network {
            return Err(format!(
                "{text:?} has host bits set; the block is {}",
                Cidr {
                    network: block.masked(),
                    prefix
                }
            ));
        }
        Ok(block)
    }
}

impl Cidr {
    fn masked(&self) -> IpAddr {
        match self.network {
            IpAddr::V4(net) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V4((u32::from(net) & mask).into())
            }
            IpAddr::V6(net) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V6((u128::from(net) & mask).into())
            }
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// The client's address: the connection's peer, unless the peer is a trusted proxy, in which
/// case `X-Forwarded-For` is read from the right, skipping trusted proxies, and the first
/// address that is not one is the client (a client cannot forge its way past a trusted
/// proxy, which appends the address it saw). When the walk ends on a trusted proxy (no
/// header, only trusted hops, or a malformed entry), the client is unknown: the unspecified
/// address `::`, which no allow list of real addresses matches, rather than the proxy's own
/// address, which an allow list of internal addresses might.
pub fn client_ip(headers: &HeaderMap, peer: IpAddr, trusted: &[Cidr]) -> IpAddr {
    let mut ip = peer.to_canonical();
    if !trusted.iter().any(|c| c.contains(ip)) {
        return ip;
    }
    for line in headers.get_all("x-forwarded-for").iter().rev() {
        for entry in line.as_bytes().rsplit(|&b| b == b',') {
            let Some(next) = parse_forwarded(entry) else {
                return UNKNOWN_CLIENT;
            };
            ip = next;
            if !trusted.iter().any(|c| c.contains(ip)) {
                return ip;
            }
        }
    }
    UNKNOWN_CLIENT
}

/// The client address when trusted proxies do not say it.
pub const UNKNOWN_CLIENT: IpAddr = IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED);

/// One `X-Forwarded-For` entry: an address, perhaps with a port (`1.2.3.4:80`,
/// `[::1]:80`).
fn parse_forwarded(entry: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(entry).ok()?.trim();
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Ok(addr) = text.parse::<std::net::SocketAddr>() {
        return Some(addr.ip().to_canonical());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn blocks_parse_and_match() {
        let block: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(block.contains(ip("10.1.2.3")));
        assert!(block.contains(ip("::ffff:10.1.2.3")));
        assert!(!block.contains(ip("10.2.0.1")));
        let one: Cidr = "192.0.2.7".parse().unwrap();
        assert!(one.contains(ip("192.0.2.7")) && !one.contains(ip("192.0.2.8")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("203.0.113.1")) && !all.contains(ip("::1")));
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains(ip("2001:db8:1::1")) && !v6.contains(ip("2001:db9::1")));
        assert!(
            "10.1.2.3/16"
                .parse::<Cidr>()
                .unwrap_err()
                .contains("10.1.0.0/16")
        );
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("ten".parse::<Cidr>().is_err());
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted: Vec<Cidr> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut headers = HeaderMap::new();
        headers.append("x-forwarded-for", "6.6.6.6, 203.0.113.9".parse().unwrap());
        headers.append("x-forwarded-for", "10.0.0.2".parse().unwrap());
        // an untrusted peer: its header is ignored
        assert_eq!(
            client_ip(&headers, ip("198.51.100.1"), &trusted),
            ip("198.51.100.1")
        );
        // a trusted peer: the first untrusted address from the right, not the forged left one
        assert_eq!(
            client_ip(&headers, ip("10.0.0.1"), &trusted),
            ip("203.0.113.9")
        );
        // garbage, or no header from a trusted proxy: unknown, never the proxy itself
        let mut bad = HeaderMap::new();
        bad.append("x-forwarded-for", "6.6.6.6, junk".parse().unwrap());
        assert_eq!(client_ip(&bad, ip("10.0.0.1"), &trusted), UNKNOWN_CLIENT);
        assert_eq!(
            client_ip(&HeaderMap::new(), ip("10.0.0.1"), &trusted),
            UNKNOWN_CLIENT
        );
        let mut internal = HeaderMap::new();
        internal.append("x-forwarded-for", "10.0.0.3".parse().unwrap());
        assert_eq!(
            client_ip(&internal, ip("10.0.0.1"), &trusted),
            UNKNOWN_CLIENT
        );
        // ports are allowed
        let mut port = HeaderMap::new();
        port.append("x-forwarded-for", "[2001:db8::1]:443".parse().unwrap());
        assert_eq!(
            client_ip(&port, ip("10.0.0.1"), &trusted),
            ip("2001:db8::1")
        );
    }
}
