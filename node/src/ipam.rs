//! One loopback address per pod: 127.x.y.z from 127.1.0.1 upward (127.0.0.0/16 stays for
//! the node itself and the Service proxies). Linux routes the whole 127/8 to `lo`, so any
//! of these can be bound without configuration.

use std::{collections::BTreeSet, net::Ipv4Addr};

const FIRST: u32 = u32::from_be_bytes([127, 1, 0, 1]);
const LAST: u32 = u32::from_be_bytes([127, 254, 255, 254]);

#[derive(Debug, Clone)]
pub struct IpPool {
    used: BTreeSet<u32>,
    next: u32,
}

impl Default for IpPool {
    fn default() -> Self {
        IpPool { used: BTreeSet::new(), next: FIRST }
    }
}

impl IpPool {
    /// A pool whose round-robin cursor starts `offset` addresses in, so that an agent
    /// restarted while pods still carry addresses is unlikely to hand one out again.
    pub fn starting_at(offset: u32) -> IpPool {
        IpPool { used: BTreeSet::new(), next: FIRST + offset % (LAST - FIRST + 1) }
    }

    /// Whether an address is one this pool hands out (and so may be reused when a pod
    /// already carries it from an earlier run of the agent).
    pub fn in_range(ip: Ipv4Addr) -> bool {
        let v = u32::from(ip);
        (FIRST..=LAST).contains(&v) && usable(v)
    }

    /// Reserves `ip` if it is in range and free.
    pub fn reserve(&mut self, ip: Ipv4Addr) -> bool {
        Self::in_range(ip) && self.used.insert(u32::from(ip))
    }

    /// The next free address, round-robin, so a released address is not reused at once.
    pub fn allocate(&mut self) -> Option<Ipv4Addr> {
        let span = LAST - FIRST + 1;
        for _ in 0..span {
            let candidate = self.next;
            self.next = if self.next >= LAST { FIRST } else { self.next + 1 };
            if usable(candidate) && !self.used.contains(&candidate) {
                self.used.insert(candidate);
                return Some(Ipv4Addr::from(candidate));
            }
        }
        None
    }

    pub fn release(&mut self, ip: Ipv4Addr) {
        self.used.remove(&u32::from(ip));
    }
}

/// Skips the network and broadcast-looking addresses (x.y.z.0 and x.y.z.255).
fn usable(v: u32) -> bool {
    let last = v & 0xff;
    last != 0 && last != 255
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_unique_addresses_and_skips_0_and_255() {
        let mut pool = IpPool::default();
        let mut seen = BTreeSet::new();
        for _ in 0..600 {
            let ip = pool.allocate().unwrap();
            assert!(seen.insert(ip), "{ip} handed out twice");
            let o = ip.octets();
            assert_eq!(o[0], 127);
            assert!(o[1] >= 1);
            assert!(o[3] != 0 && o[3] != 255);
        }
    }

    #[test]
    fn offset_start_wraps_into_range() {
        let mut pool = IpPool::starting_at(u32::MAX);
        let ip = pool.allocate().unwrap();
        assert!(IpPool::in_range(ip), "{ip}");
        let mut pool = IpPool::starting_at(LAST - FIRST);
        assert_eq!(pool.allocate().unwrap(), Ipv4Addr::from(LAST));
        assert_eq!(pool.allocate().unwrap(), Ipv4Addr::from(FIRST));
    }

    #[test]
    fn released_address_is_not_reused_immediately_and_reserve_blocks() {
        let mut pool = IpPool::default();
        let a = pool.allocate().unwrap();
        pool.release(a);
        let b = pool.allocate().unwrap();
        assert_ne!(a, b);
        let c: Ipv4Addr = "127.1.0.3".parse().unwrap();
        assert!(pool.reserve(c));
        assert!(!pool.reserve(c));
        assert_ne!(pool.allocate().unwrap(), c);
        assert!(!pool.reserve("127.0.0.1".parse().unwrap()));
        assert!(!pool.reserve("10.0.0.1".parse().unwrap()));
    }
}
