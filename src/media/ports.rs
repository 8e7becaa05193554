//! RTP ports: which UDP port a call's RTP session gets.
//!
//! Owns: the configured port range, handing out even ports (RFC 3550 §11:
//! RTP on an even port, RTCP on the odd one above), the permit that frees a
//! port when dropped, and binding a socket on an allocated port.
//!
//! Must not: read or write RTP, or keep sockets: the session owns those.

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex};

use tokio::net::UdpSocket;

/// Why an RTP session could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error("the RTP port range {0:?} holds no even port")]
    EmptyPortRange(RangeInclusive<u16>),
    #[error("every RTP port is in use")]
    NoFreePort,
    #[error("cannot bind an RTP socket: {0}")]
    Bind(#[source] io::Error),
}

/// Hands out even RTP ports from a configured range (RFC 3550 §11: RTP on
/// an even port, RTCP on the next odd one), drawn at random so that a
/// stranger cannot guess the next call's port and race its caller to latch
/// it (RTP bleed and injection). The draw is from the half of the free
/// ports that rested longest (freed ports queue at the back), so a freed
/// port still rests a while before the next call gets it, and late packets
/// of an old call rarely reach a new one.
#[derive(Debug, Clone)]
pub struct PortAllocator {
    /// Free ports. A `std` mutex: held for a push or pop, never across an
    /// `.await`.
    free: Arc<Mutex<VecDeque<u16>>>,
}

impl PortAllocator {
    pub fn new(range: RangeInclusive<u16>) -> Result<Self, MediaError> {
        let free: VecDeque<u16> = range.clone().filter(|p| p % 2 == 0 && *p != 0).collect();
        if free.is_empty() {
            return Err(MediaError::EmptyPortRange(range));
        }
        Ok(PortAllocator {
            free: Arc::new(Mutex::new(free)),
        })
    }

    /// Takes a free port, or `None` if all are in use.
    pub fn allocate(&self) -> Option<PortPermit> {
        let mut free = lock(&self.free);
        let oldest_half = free.len().div_ceil(2);
        if oldest_half == 0 {
            return None;
        }
        // The front moves into the drawn slot: still among the oldest.
        let port = free.swap_remove_front(rand::random_range(0..oldest_half))?;
        drop(free);
        Some(PortPermit {
            port,
            free: Arc::clone(&self.free),
        })
    }

    /// How many ports are free.
    pub fn available(&self) -> usize {
        lock(&self.free).len()
    }
}

/// The queue stays consistent even if a holder panicked: push and pop do
/// not leave it half-changed.
fn lock(free: &Mutex<VecDeque<u16>>) -> std::sync::MutexGuard<'_, VecDeque<u16>> {
    free.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One allocated RTP port; dropping it returns the port to the allocator.
#[derive(Debug)]
pub struct PortPermit {
    /// The even RTP port held; the odd one above stays free for RTCP.
    port: u16,
    /// The allocator's free list, to push the port back on drop, whoever
    /// drops it (the media task when the session ends, or a failed setup).
    free: Arc<Mutex<VecDeque<u16>>>,
}

impl PortPermit {
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for PortPermit {
    fn drop(&mut self) {
        lock(&self.free).push_back(self.port);
    }
}

/// Binds a UDP socket on `ip` at a port from `allocator`, skipping ports
/// that another program holds.
pub async fn bind_rtp(
    allocator: &PortAllocator,
    ip: IpAddr,
) -> Result<(UdpSocket, PortPermit), MediaError> {
    let attempts = allocator.available();
    let mut last_error = None;
    for _ in 0..attempts {
        let Some(permit) = allocator.allocate() else {
            break;
        };
        match UdpSocket::bind(SocketAddr::new(ip, permit.port())).await {
            Ok(socket) => return Ok((socket, permit)),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => continue,
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.map_or(MediaError::NoFreePort, MediaError::Bind))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_even_and_come_back_when_dropped() {
        let ports = PortAllocator::new(10_001..=10_006).unwrap();
        assert_eq!(ports.available(), 3);
        let a = ports.allocate().unwrap();
        let b = ports.allocate().unwrap();
        let c = ports.allocate().unwrap();
        let mut all = [a.port(), b.port(), c.port()];
        all.sort_unstable();
        assert_eq!(all, [10_002, 10_004, 10_006]);
        assert!(ports.allocate().is_none());
        let freed = b.port();
        drop(b);
        assert_eq!(ports.allocate().map(|p| p.port()), Some(freed));
        assert!(matches!(
            PortAllocator::new(7..=7),
            Err(MediaError::EmptyPortRange(_))
        ));
    }

    #[test]
    fn ports_are_drawn_at_random_and_a_freed_port_rests() {
        let ports = PortAllocator::new(20_000..=21_999).unwrap();
        let drawn: Vec<u16> = (0..20)
            .map(|_| {
                let permit = ports.allocate().unwrap();
                let port = permit.port();
                // Freed at once: it goes to the back of the queue.
                drop(permit);
                port
            })
            .collect();
        // In order they would be 20000, 20002, ...: twenty draws from 500
        // candidates are in order with odds of about 500^-19.
        let in_order = drawn.windows(2).all(|w| w[1] == w[0] + 2);
        assert!(!in_order, "{drawn:?}");
        // A port freed just now is in the younger half: not drawn again
        // within the next 500 draws.
        let mut seen = drawn.clone();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(
            seen.len(),
            drawn.len(),
            "a freed port came back early: {drawn:?}"
        );
    }

    #[tokio::test]
    async fn bind_skips_ports_in_use_and_releases_on_drop() {
        // Find two adjacent free even ports by asking the OS, then occupy one.
        let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let base = probe.local_addr().unwrap().port() & !1;
        drop(probe);
        let busy = std::net::UdpSocket::bind(("127.0.0.1", base));
        let ports = PortAllocator::new(base..=base + 2).unwrap();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        match bind_rtp(&ports, ip).await {
            Ok((socket, permit)) => {
                assert_eq!(socket.local_addr().unwrap().port(), permit.port());
                if busy.is_ok() {
                    assert_eq!(permit.port(), base + 2, "the busy port is skipped");
                }
                assert_eq!(ports.available(), 1);
                drop(permit);
                assert_eq!(ports.available(), 2);
            }
            // Both ports taken by someone else meanwhile: still a typed error.
            Err(e) => assert!(matches!(e, MediaError::NoFreePort), "{e}"),
        }
    }
}
