//! Free loopback ports for servers that cannot be told to bind port 0.
//!
//! A port the kernel hands out for `bind(0)` comes from the ephemeral range,
//! the same range it draws outgoing connections' source ports from: between
//! the probe and the server's own bind, any client connection on the machine
//! may take it (a Garage RPC port lost that way panics Garage). Ports are
//! therefore picked below the ephemeral range, where the kernel never assigns
//! a source port; only another test picking the same port can clash, and
//! picking at random from thousands makes that rare.

use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::Mutex;

/// The lowest port handed out.
const FLOOR: u16 = 10_000;

/// A loopback port nothing listens on right now, outside the kernel's
/// ephemeral range when there is room below it, never handed out twice by this
/// process. Another process may still take it first; starters retry on a clash.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let ceiling = ephemeral_floor().filter(|low| *low > FLOOR + 1_000);
    loop {
        let port = match ceiling {
            Some(low) => {
                let port = rand::random_range(FLOOR..low);
                match TcpListener::bind(("127.0.0.1", port)) {
                    Ok(_) => port,
                    Err(_) => continue,
                }
            }
            None => TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("bind a loopback port").port(),
        };
        let mut given = GIVEN.lock().expect("port registry");
        if given.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
}

/// The first port of the kernel's ephemeral range, when it can be read.
fn ephemeral_floor() -> Option<u16> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    text.split_whitespace().next()?.parse().ok()
}
