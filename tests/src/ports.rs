//! Free loopback ports for servers that cannot be told to bind port 0.

use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::Mutex;

/// A loopback port nothing listens on right now, never handed out twice by this
/// process. Another process may still take it first; starters retry on a clash.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind a loopback port")
            .port();
        let mut given = GIVEN.lock().expect("port registry");
        if given.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
}
