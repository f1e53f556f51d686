//! SSRF policy: which IP addresses an outbound postback may connect to.
//!
//! Contract
//! - Input: an [`IpAddr`] (from DNS resolution or a literal in the URL); the configured
//!   allow-list (`outbound.allow_networks` / env `POSTGATE_OUTBOUND_ALLOW`).
//! - Output: [`classify_ip`] gives `None` for a public unicast address or the
//!   [`BlockReason`]; [`AddressPolicy::check`] applies the allow-list on top.
//! - Errors: [`SsrfError`] for a bad allow-list entry (config time) and [`Blocked`] for a
//!   refused address (send time).
//! - Side effects: none (reading the environment is explicit in [`AllowList::from_env`]).
//!
//! Addresses that embed an IPv4 address (IPv4-mapped, IPv4-compatible, NAT64, 6to4) are
//! judged by the embedded address, because that is where the packets end up.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// Environment variable holding extra allowed networks, comma-separated (e.g. `127.0.0.1/32`).
pub const ALLOW_ENV: &str = "POSTGATE_OUTBOUND_ALLOW";

/// Why an address is refused. Closed: each variant names one IANA special-purpose range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockReason {
    Unspecified,
    Loopback,
    /// RFC 1918 private IPv4 (10/8, 172.16/12, 192.168/16).
    Private,
    /// 100.64.0.0/10 carrier-grade NAT.
    SharedCgnat,
    LinkLocal,
    Multicast,
    Broadcast,
    /// 192.0.2/24, 198.51.100/24, 203.0.113/24, 2001:db8::/32, 3fff::/20.
    Documentation,
    /// 198.18.0.0/15.
    Benchmarking,
    /// 0/8, 192.0.0/24, 240/4, 100::/64, 2001:10::/28 and other reserved space.
    Reserved,
    /// fc00::/7.
    UniqueLocal,
    /// 2001::/32: the real destination is hidden inside the address.
    Teredo,
}

/// The address refused by the policy, as an error the resolver can hand to reqwest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("outbound connection to {addr} refused: {reason:?} address")]
pub struct Blocked {
    pub addr: IpAddr,
    pub reason: BlockReason,
}

/// Errors in the allow-list configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SsrfError {
    #[error(
        "invalid network {entry:?} in the outbound allow-list (want CIDR such as 127.0.0.1/32)"
    )]
    BadNetwork { entry: String },
}

/// `None` if `ip` is a public unicast address; otherwise why it is refused.
pub fn classify_ip(ip: IpAddr) -> Option<BlockReason> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<BlockReason> {
    let [a, b, c, _] = ip.octets();
    let r = match (a, b, c) {
        _ if ip.is_unspecified() => BlockReason::Unspecified,
        _ if ip.is_broadcast() => BlockReason::Broadcast,
        (0, _, _) => BlockReason::Reserved,
        (127, _, _) => BlockReason::Loopback,
        (10, _, _) => BlockReason::Private,
        (172, 16..=31, _) => BlockReason::Private,
        (192, 168, _) => BlockReason::Private,
        (100, 64..=127, _) => BlockReason::SharedCgnat,
        (169, 254, _) => BlockReason::LinkLocal,
        (192, 0, 0) => BlockReason::Reserved,
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => BlockReason::Documentation,
        (198, 18..=19, _) => BlockReason::Benchmarking,
        (224..=239, _, _) => BlockReason::Multicast,
        (240..=255, _, _) => BlockReason::Reserved,
        _ => return None,
    };
    Some(r)
}

fn classify_v6(ip: Ipv6Addr) -> Option<BlockReason> {
    if ip.is_unspecified() {
        return Some(BlockReason::Unspecified);
    }
    if ip.is_loopback() {
        return Some(BlockReason::Loopback);
    }
    let seg = ip.segments();
    let o = ip.octets();
    let v4_tail = || Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    // ::ffff:a.b.c.d (IPv4-mapped): exactly the IPv4 host.
    if seg[..6] == [0, 0, 0, 0, 0, 0xffff] {
        return classify_v4(v4_tail());
    }
    // ::a.b.c.d (deprecated IPv4-compatible; :: and ::1 were handled above): refused even for
    // a public IPv4, since no legitimate receiver is addressed this way.
    if seg[..6] == [0, 0, 0, 0, 0, 0] {
        return Some(classify_v4(v4_tail()).unwrap_or(BlockReason::Reserved));
    }
    // NAT64 well-known 64:ff9b::/96 and local-use 64:ff9b:1::/48: judge the embedded IPv4.
    if (seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0])
        || (seg[0] == 0x64 && seg[1] == 0xff9b && seg[2] == 1)
    {
        return classify_v4(v4_tail());
    }
    // 6to4 2002::/16 carries the IPv4 address in bits 16..48.
    if seg[0] == 0x2002 {
        return classify_v4(Ipv4Addr::new(o[2], o[3], o[4], o[5]));
    }
    let r = match seg[0] {
        0xff00..=0xffff => BlockReason::Multicast,
        0xfe80..=0xfebf => BlockReason::LinkLocal,
        // fec0::/10 site-local (deprecated) behaves like private space.
        0xfec0..=0xfeff => BlockReason::Reserved,
        0xfc00..=0xfdff => BlockReason::UniqueLocal,
        0x2001 if seg[1] == 0 => BlockReason::Teredo,
        0x2001 if seg[1] == 0x0db8 => BlockReason::Documentation,
        // 2001:10::/28 ORCHID, 2001:20::/28 ORCHIDv2, 2001:2::/48 benchmarking.
        0x2001 if (0x10..=0x2f).contains(&seg[1]) => BlockReason::Reserved,
        0x2001 if seg[1] == 0x0002 && seg[2] == 0 => BlockReason::Benchmarking,
        0x3fff if seg[1] <= 0x0fff => BlockReason::Documentation,
        // 100::/64 discard-only.
        0x0100 if seg[1..4] == [0, 0, 0] => BlockReason::Reserved,
        // Only 2000::/3 is allocated global unicast; anything else is reserved space.
        s if !(0x2000..=0x3fff).contains(&s) => BlockReason::Reserved,
        _ => return None,
    };
    Some(r)
}

/// Networks that override blocking (tests, self-hosted affiliates on a private network).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList(Vec<IpNet>);

impl AllowList {
    /// Parses CIDR entries; a bare address means that single host.
    pub fn parse<'a>(entries: impl IntoIterator<Item = &'a str>) -> Result<Self, SsrfError> {
        let mut nets = Vec::new();
        for e in entries.into_iter().map(str::trim).filter(|e| !e.is_empty()) {
            let net = e
                .parse::<IpNet>()
                .or_else(|_| e.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| SsrfError::BadNetwork {
                    entry: e.to_owned(),
                })?;
            nets.push(net);
        }
        Ok(Self(nets))
    }

    /// Reads [`ALLOW_ENV`] (comma-separated); unset means empty.
    pub fn from_env() -> Result<Self, SsrfError> {
        match std::env::var(ALLOW_ENV) {
            Ok(v) => Self::parse(v.split(',')),
            Err(_) => Ok(Self::default()),
        }
    }

    /// Both lists together (config file + environment).
    pub fn merged(mut self, other: AllowList) -> Self {
        self.0.extend(other.0);
        self
    }

    fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|n| n.contains(&ip))
    }
}

/// The policy the resolver and the literal-IP check apply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressPolicy {
    allow: AllowList,
}

impl AddressPolicy {
    pub fn new(allow: AllowList) -> Self {
        Self { allow }
    }

    /// Ok if the address may be contacted.
    pub fn check(&self, ip: IpAddr) -> Result<(), Blocked> {
        // An IPv4-mapped address is the IPv4 host for allow-list purposes, so allowing
        // 127.0.0.1/32 also allows ::ffff:127.0.0.1.
        let canonical = ip.to_canonical();
        if self.allow.contains(ip) || self.allow.contains(canonical) {
            return Ok(());
        }
        match classify_ip(ip) {
            None => Ok(()),
            Some(reason) => Err(Blocked { addr: ip, reason }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use BlockReason::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test value")
    }

    #[test]
    fn public_addresses_are_allowed() {
        for s in [
            "8.8.8.8",
            "1.1.1.1",
            "93.184.216.34",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.169.0.1",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
            "2606:4700:4700::1111",
            "2a00:1450:4001:81b::200e",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert_eq!(classify_ip(ip(s)), None, "{s}");
        }
    }

    #[test]
    fn special_purpose_addresses_are_blocked_with_their_reason() {
        let table: &[(&str, BlockReason)] = &[
            ("0.0.0.0", Unspecified),
            ("0.1.2.3", Reserved),
            ("127.0.0.1", Loopback),
            ("127.255.255.254", Loopback),
            ("10.0.0.1", Private),
            ("172.16.0.1", Private),
            ("172.31.255.255", Private),
            ("192.168.1.1", Private),
            ("100.64.0.1", SharedCgnat),
            ("100.127.255.255", SharedCgnat),
            ("169.254.169.254", LinkLocal),
            ("224.0.0.1", Multicast),
            ("239.255.255.250", Multicast),
            ("255.255.255.255", Broadcast),
            ("192.0.2.10", Documentation),
            ("198.51.100.7", Documentation),
            ("203.0.113.99", Documentation),
            ("198.18.0.1", Benchmarking),
            ("198.19.255.255", Benchmarking),
            ("240.0.0.1", Reserved),
            ("192.0.0.8", Reserved),
            ("::", Unspecified),
            ("::1", Loopback),
            ("fc00::1", UniqueLocal),
            ("fd12:3456::1", UniqueLocal),
            ("fe80::1", LinkLocal),
            ("febf::1", LinkLocal),
            ("fec0::1", Reserved),
            ("ff02::1", Multicast),
            ("2001:db8::1", Documentation),
            ("3fff::1", Documentation),
            ("2001::1", Teredo),
            ("2001:0:4136:e378::1", Teredo),
            ("2001:10::1", Reserved),
            ("2001:2::1", Benchmarking),
            ("100::1", Reserved),
            ("4000::1", Reserved),
            // Embedded IPv4 is judged by the IPv4 address.
            ("::ffff:127.0.0.1", Loopback),
            ("::ffff:10.1.2.3", Private),
            ("::ffff:169.254.169.254", LinkLocal),
            ("::127.0.0.1", Loopback),
            ("::8.8.8.8", Reserved),
            ("64:ff9b::7f00:1", Loopback),
            ("64:ff9b::a9fe:a9fe", LinkLocal),
            ("64:ff9b:1::a00:1", Private),
            ("2002:7f00:1::", Loopback),
            ("2002:c0a8:101::1", Private),
        ];
        for (s, reason) in table {
            assert_eq!(classify_ip(ip(s)), Some(*reason), "{s}");
        }
    }

    #[test]
    fn the_allow_list_overrides_blocking_for_its_networks_only() {
        let p = AddressPolicy::new(
            AllowList::parse(["127.0.0.1/32", "10.1.0.0/16", "::1"]).expect("test value"),
        );
        assert!(p.check(ip("127.0.0.1")).is_ok());
        assert!(p.check(ip("::ffff:127.0.0.1")).is_ok());
        assert!(p.check(ip("::1")).is_ok());
        assert!(p.check(ip("10.1.200.3")).is_ok());
        assert_eq!(
            p.check(ip("127.0.0.2")),
            Err(Blocked {
                addr: ip("127.0.0.2"),
                reason: Loopback
            })
        );
        assert!(p.check(ip("10.2.0.1")).is_err());
        assert!(AddressPolicy::default().check(ip("127.0.0.1")).is_err());
        assert!(AddressPolicy::default().check(ip("8.8.8.8")).is_ok());
    }

    #[test]
    fn a_bad_allow_list_entry_is_a_config_error() {
        assert_eq!(
            AllowList::parse(["127.0.0.1/33"]),
            Err(SsrfError::BadNetwork {
                entry: "127.0.0.1/33".into()
            })
        );
        assert_eq!(AllowList::parse([" ", ""]), Ok(AllowList::default()));
    }
}
