//! Network plumbing for tests of what a worker host can reach: a network
//! namespace of the test's own whose only link leads to the host, and TCP
//! relays that can be cut (every connection dropped, new ones refused) and
//! restored on the same address. Namespaces need root and iproute2.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// Namespaces made here are named `hgw<pid>x<n>`, so that those of a test
/// process that died can be told apart and removed.
const PREFIX: &str = "hgw";

/// A network namespace linked to the host by a veth pair (a /30: the host
/// side and the namespace side) and with no other route. Removed, with its
/// link and its `/etc/netns` files, when dropped.
#[derive(Debug)]
pub struct NetNs {
    pub name: String,
    /// The host's end of the link: the only address reachable from inside.
    pub host_addr: Ipv4Addr,
    /// The namespace's own address.
    pub ns_addr: Ipv4Addr,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = std::process::Command::new("ip").args(args).output().map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

impl NetNs {
    /// Makes a namespace; panics saying why when the host cannot (tests run
    /// as root with iproute2).
    pub fn create() -> NetNs {
        Self::sweep();
        let used = std::process::Command::new("ip").args(["-o", "-4", "addr", "show"]).output().expect("ip addr");
        let used = String::from_utf8_lossy(&used.stdout).into_owned();
        let pid = std::process::id();
        for attempt in 0..64u32 {
            // A /30 in 10.213.0.0/16 nobody on this host uses yet.
            let n = (pid.wrapping_mul(31).wrapping_add(attempt * 7919)) % 16_384;
            let (b, c) = ((n / 64) as u8, ((n % 64) * 4) as u8);
            let host_addr = Ipv4Addr::new(10, 213, b, c + 1);
            if used.contains(&format!("inet {host_addr}/")) {
                continue;
            }
            let ns_addr = Ipv4Addr::new(10, 213, b, c + 2);
            let name = format!("{PREFIX}{pid}x{attempt}");
            if Path::new("/var/run/netns").join(&name).exists() {
                continue;
            }
            let (host_if, ns_if) = (format!("hw{n}a"), format!("hw{n}b"));
            let ns = NetNs { name: name.clone(), host_addr, ns_addr };
            let made = (|| {
                ip(&["netns", "add", &name])?;
                ip(&["link", "add", &host_if, "type", "veth", "peer", "name", &ns_if])?;
                ip(&["link", "set", &ns_if, "netns", &name])?;
                ip(&["addr", "add", &format!("{host_addr}/30"), "dev", &host_if])?;
                ip(&["link", "set", &host_if, "up"])?;
                ip(&["-n", &name, "addr", "add", &format!("{ns_addr}/30"), "dev", &ns_if])?;
                ip(&["-n", &name, "link", "set", &ns_if, "up"])?;
                ip(&["-n", &name, "link", "set", "lo", "up"])
            })();
            match made {
                Ok(()) => return ns,
                Err(e) => {
                    let _ = ip(&["link", "del", &host_if]);
                    drop(ns);
                    panic!("cannot make a network namespace (tests run as root with iproute2): {e}");
                }
            }
        }
        panic!("no free address block for a network namespace");
    }

    /// Removes the namespaces of test processes that died without cleaning up.
    pub fn sweep() {
        let Ok(out) = std::process::Command::new("ip").args(["netns", "list"]).output() else {
            return;
        };
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            let Some(pid) = name.strip_prefix(PREFIX).and_then(|r| r.split('x').next()) else {
                continue;
            };
            if pid.parse::<u32>().is_ok() && !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = ip(&["netns", "del", name]);
                let _ = std::fs::remove_dir_all(etc_dir(name));
            }
        }
    }

    /// What `/etc/hosts` says inside the namespace: `ip netns exec` puts this
    /// file over the host's. Pointing `localhost` at `host_addr` makes the
    /// appliance's own URLs (certificates name `localhost`) lead across the
    /// link, to relays listening there.
    pub fn set_hosts(&self, entries: &[(&str, IpAddr)]) {
        let dir = etc_dir(&self.name);
        std::fs::create_dir_all(&dir).expect("create the namespace's /etc directory");
        let text: String = entries.iter().map(|(name, addr)| format!("{addr} {name}\n")).collect();
        std::fs::write(dir.join("hosts"), text).expect("write the namespace's hosts file");
    }

    /// `program` to be run inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> std::process::Command {
        let mut c = std::process::Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Runs `args` inside the namespace; returns its stdout.
    pub fn run(&self, args: &[&str]) -> String {
        let out = std::process::Command::new("ip").args(["netns", "exec", &self.name]).args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

fn etc_dir(name: &str) -> PathBuf {
    Path::new("/etc/netns").join(name)
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // The veth pair goes with the namespace that holds one of its ends.
        let _ = ip(&["netns", "del", &self.name]);
        let _ = std::fs::remove_dir_all(etc_dir(&self.name));
    }
}

/// A TCP relay from its own address to a target. `cut` drops every
/// connection with a reset and closes the listener, so new connections are
/// refused; `restore` listens again on the same address. Stops when dropped.
#[derive(Debug)]
pub struct Relay {
    addr: SocketAddr,
    target: SocketAddr,
    control: mpsc::Sender<(bool, oneshot::Sender<()>)>,
    stop: CancellationToken,
}

impl Relay {
    /// Relays `listen` (port 0 for a free one) to `target`.
    pub async fn start(listen: SocketAddr, target: SocketAddr) -> Relay {
        let listener = TcpListener::bind(listen).await.unwrap_or_else(|e| panic!("relay: bind {listen}: {e}"));
        let addr = listener.local_addr().unwrap();
        let (control, commands) = mpsc::channel(4);
        let stop = CancellationToken::new();
        tokio::spawn(serve(listener, addr, target, commands, stop.clone()));
        Relay { addr, target, control, stop }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// Drops every relayed connection and refuses new ones; returns once done.
    pub async fn cut(&self) {
        self.command(false).await;
    }

    /// Accepts connections again on the same address; returns once listening.
    pub async fn restore(&self) {
        self.command(true).await;
    }

    async fn command(&self, up: bool) {
        let (ack, done) = oneshot::channel();
        self.control.send((up, ack)).await.expect("the relay is running");
        done.await.expect("the relay answers");
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn serve(
    listener: TcpListener,
    addr: SocketAddr,
    target: SocketAddr,
    mut commands: mpsc::Receiver<(bool, oneshot::Sender<()>)>,
    stop: CancellationToken,
) {
    let mut listener = Some(listener);
    // Cancelled on each cut: every connection relayed until then goes.
    let mut generation = stop.child_token();
    loop {
        let accept = async {
            match &listener {
                Some(l) => l.accept().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            command = commands.recv() => {
                let Some((up, ack)) = command else { return };
                if up {
                    if listener.is_none() {
                        listener = Some(rebind(addr).await);
                    }
                } else {
                    listener = None;
                    generation.cancel();
                    generation = stop.child_token();
                }
                let _ = ack.send(());
            }
            accepted = accept => {
                if let Ok((inbound, _)) = accepted {
                    tokio::spawn(pipe(inbound, target, generation.clone()));
                }
            }
        }
    }
}

/// Binds `addr` again after a cut; another socket may hold it for a moment.
async fn rebind(addr: SocketAddr) -> TcpListener {
    let mut last = None;
    for _ in 0..100 {
        match TcpListener::bind(addr).await {
            Ok(l) => return l,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("relay: cannot listen on {addr} again: {last:?}");
}

async fn pipe(mut inbound: TcpStream, target: SocketAddr, cut: CancellationToken) {
    let connect = tokio::select! {
        _ = cut.cancelled() => None,
        c = TcpStream::connect(target) => c.ok(),
    };
    let Some(mut outbound) = connect else {
        let _ = inbound.set_zero_linger();
        return;
    };
    tokio::select! {
        _ = cut.cancelled() => {
            // A cut resets both sides rather than closing them politely.
            let _ = inbound.set_zero_linger();
            let _ = outbound.set_zero_linger();
        }
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
    }
}
