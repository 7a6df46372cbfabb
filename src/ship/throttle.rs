//! The wire rate limit (option `bwlimit`): a virtual clock of when the bytes sent so far are
//! paid for.

use std::time::{Duration, Instant};

/// Wire bytes per second, 0 = unlimited.
pub struct Throttle {
    limit: u64,
    /// When everything counted so far (`.1` wire bytes) has been paid for at the limit.
    base: (Instant, u64),
}

impl Throttle {
    pub fn new() -> Throttle {
        Throttle {
            limit: 0,
            base: (Instant::now(), 0),
        }
    }

    /// Sets the limit (bytes/s, 0 = none) from now on; `wire` is the count of bytes sent so far.
    pub fn set(&mut self, bytes_per_sec: u64, wire: u64) {
        if bytes_per_sec != self.limit {
            self.limit = bytes_per_sec;
            // Whatever went before is paid for; the credit of an idle link applies from here.
            let now = Instant::now();
            self.base = (now.checked_sub(Duration::from_secs(1)).unwrap_or(now), wire);
        }
    }

    /// Sleeps while the wire (`wire` bytes sent so far) is ahead of the limit; at most one
    /// second of unused rate is saved up, so an idle link does not earn a burst. Bytes sent
    /// after an idle spell are paid from at most one second before now, counting the piece
    /// just sent.
    pub fn pace(&mut self, wire: u64) {
        if self.limit == 0 {
            return;
        }
        let (clock, counted) = self.base;
        let now = Instant::now();
        let new = wire.saturating_sub(counted);
        let start = clock.max(now.checked_sub(Duration::from_secs(1)).unwrap_or(now));
        let paid = start + Duration::from_secs_f64(new as f64 / self.limit as f64);
        self.base = (paid, wire);
        if paid > now {
            std::thread::sleep(paid - now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limited_wire_waits_for_what_it_sent_beyond_one_second_of_credit() {
        let mut t = Throttle::new();
        t.set(1 << 20, 0);
        let start = Instant::now();
        // One second of credit, then 0.25 s more at 1 MiB/s.
        t.pace(5 << 18);
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(200), "{took:?}");
        assert!(took < Duration::from_secs(2), "{took:?}");
        let mut free = Throttle::new();
        let start = Instant::now();
        free.pace(1 << 40);
        assert!(start.elapsed() < Duration::from_millis(100));
    }
}
