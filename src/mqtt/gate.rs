//! Admission of new connections (sans-IO): at most `max_connections` open, at most
//! `max_connections_per_ip` from one address, and at most `connect_rate` new ones per second
//! (a token bucket holding one second's worth). A refused connection is closed before any
//! byte is read, so a flood costs an accept and a close, not a task or a TLS handshake.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

/// Why a connection was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `mqtt.max_connections` are open.
    Full,
    /// `mqtt.max_connections_per_ip` are open from this address.
    PerIp,
    /// Over `mqtt.connect_rate`.
    Rate,
}

impl Refusal {
    /// The config key that refused.
    pub fn key(self) -> &'static str {
        match self {
            Self::Full => "mqtt.max_connections",
            Self::PerIp => "mqtt.max_connections_per_ip",
            Self::Rate => "mqtt.connect_rate",
        }
    }
}

/// The counts behind admission.
#[derive(Debug)]
pub struct Gate {
    max_total: usize,
    max_per_ip: usize,
    rate: f64,
    open: usize,
    per_ip: HashMap<IpAddr, usize>,
    tokens: f64,
    refilled: Option<Instant>,
}

impl Gate {
    /// Limits; 0 for `max_per_ip` or `rate` means none.
    pub fn new(max_total: usize, max_per_ip: usize, rate: u32) -> Self {
        Self {
            max_total,
            max_per_ip,
            rate: f64::from(rate),
            open: 0,
            per_ip: HashMap::new(),
            tokens: f64::from(rate),
            refilled: None,
        }
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open
    }

    /// Admits a connection from `ip` at `now`; each success must be paired with a `release`.
    pub fn admit(&mut self, ip: IpAddr, now: Instant) -> Result<(), Refusal> {
        if self.rate > 0.0 {
            if let Some(last) = self.refilled {
                let gained = now.saturating_duration_since(last).as_secs_f64() * self.rate;
                self.tokens = (self.tokens + gained).min(self.rate);
            }
            self.refilled = Some(now);
            if self.tokens < 1.0 {
                return Err(Refusal::Rate);
            }
        }
        if self.open >= self.max_total {
            return Err(Refusal::Full);
        }
        if self.max_per_ip > 0 {
            let n = self.per_ip.entry(ip).or_insert(0);
            if *n >= self.max_per_ip {
                return Err(Refusal::PerIp);
            }
            *n += 1;
        }
        if self.rate > 0.0 {
            self.tokens -= 1.0;
        }
        self.open += 1;
        Ok(())
    }

    /// A connection from `ip` ended.
    pub fn release(&mut self, ip: IpAddr) {
        self.open = self.open.saturating_sub(1);
        if self.max_per_ip > 0
            && let Some(n) = self.per_ip.get_mut(&ip)
        {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn total_and_per_ip_limits() {
        let now = Instant::now();
        let mut g = Gate::new(3, 2, 0);
        assert_eq!(g.admit(ip(1), now), Ok(()));
        assert_eq!(g.admit(ip(1), now), Ok(()));
        assert_eq!(g.admit(ip(1), now), Err(Refusal::PerIp));
        assert_eq!(g.admit(ip(2), now), Ok(()));
        assert_eq!(g.admit(ip(3), now), Err(Refusal::Full));
        g.release(ip(1));
        assert_eq!(g.open(), 2);
        assert_eq!(g.admit(ip(1), now), Ok(()));
        for _ in 0..3 {
            g.release(ip(1));
            g.release(ip(2));
        }
        assert_eq!(g.open(), 0);
        assert!(g.per_ip.is_empty(), "no entry kept for closed addresses");
    }

    #[test]
    fn rate_limit_refills() {
        let t0 = Instant::now();
        let mut g = Gate::new(100, 0, 10);
        for _ in 0..10 {
            assert_eq!(g.admit(ip(1), t0), Ok(()));
        }
        assert_eq!(g.admit(ip(1), t0), Err(Refusal::Rate));
        let t1 = t0 + Duration::from_millis(250);
        assert_eq!(g.admit(ip(1), t1), Ok(()));
        assert_eq!(g.admit(ip(1), t1), Ok(()));
        assert_eq!(g.admit(ip(1), t1), Err(Refusal::Rate));
        // A long pause refills one second's worth, not more.
        let t2 = t1 + Duration::from_secs(60);
        for _ in 0..10 {
            assert_eq!(g.admit(ip(1), t2), Ok(()));
        }
        assert_eq!(g.admit(ip(1), t2), Err(Refusal::Rate));
    }
}
