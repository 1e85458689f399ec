//! The PROXY protocol, version 2 (HAProxy's `send-proxy-v2`): the header a
//! TCP load balancer puts before the first byte of a connection it passes
//! through, naming the client the connection came from. Behind a balancer
//! that passes TLS through (so workers' client certificates still reach the
//! server), every connection would otherwise come from the balancer, and the
//! login throttle, which counts failures per address, would lock out everyone
//! at once.
//!
//! The header is read only from the addresses in `server.proxy_protocol_from`,
//! and from them it is required: anyone else could name any address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt};

/// The twelve bytes every version 2 header starts with.
const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Longest address block (addresses and TLVs) accepted: the protocol allows
/// 65,535 bytes, a balancer sends a few dozen.
const MAX_LEN: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ProxyHeaderError {
    #[error("cannot read the PROXY protocol header")]
    Read {
        #[source]
        source: std::io::Error,
    },
    #[error("the connection does not start with a PROXY protocol v2 header")]
    NoSignature,
    #[error("a PROXY protocol v1 (text) header: the balancer must send version 2 (HAProxy: send-proxy-v2)")]
    TextVersion,
    #[error("PROXY protocol version {0} (only 2 is understood)")]
    Version(u8),
    #[error("PROXY protocol command {0} (only LOCAL and PROXY exist)")]
    Command(u8),
    #[error("a PROXY protocol address block of {len} bytes (at most {MAX_LEN})")]
    TooLong { len: usize },
    #[error("a PROXY protocol address block of {len} bytes is too short for address family {family:#04x}")]
    Short { family: u8, len: usize },
    #[error("PROXY protocol address family {0:#04x} is not TCP over IPv4 or IPv6")]
    Family(u8),
}

/// Reads one header from `stream`, and nothing past it. Returns the client's
/// address, or `None` when the balancer speaks for itself (a LOCAL header, as
/// its health checks send, or an address family other than IP).
pub(crate) async fn read<R: AsyncRead + Unpin>(stream: &mut R) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let mut head = [0u8; 16];
    stream.read_exact(&mut head).await.map_err(|source| ProxyHeaderError::Read { source })?;
    let len = check_head(&head)?;
    let mut block = vec![0u8; len];
    stream.read_exact(&mut block).await.map_err(|source| ProxyHeaderError::Read { source })?;
    parse_block(&head, &block)
}

/// Checks the fixed part; returns the length of the address block that follows.
fn check_head(head: &[u8; 16]) -> Result<usize, ProxyHeaderError> {
    if head.starts_with(b"PROXY ") {
        return Err(ProxyHeaderError::TextVersion);
    }
    if head[..12] != SIGNATURE {
        return Err(ProxyHeaderError::NoSignature);
    }
    let version = head[12] >> 4;
    if version != 2 {
        return Err(ProxyHeaderError::Version(version));
    }
    let len = usize::from(u16::from_be_bytes([head[14], head[15]]));
    if len > MAX_LEN {
        return Err(ProxyHeaderError::TooLong { len });
    }
    Ok(len)
}

fn parse_block(head: &[u8; 16], block: &[u8]) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    match head[12] & 0x0f {
        // LOCAL: the balancer's own connection; the block is ignored.
        0 => return Ok(None),
        1 => {}
        c => return Err(ProxyHeaderError::Command(c)),
    }
    let family = head[13];
    let short = || ProxyHeaderError::Short { family, len: block.len() };
    match family {
        // TCP over IPv4: source and destination addresses, then their ports.
        0x11 => {
            let b: &[u8; 12] = block.get(..12).and_then(|b| b.try_into().ok()).ok_or_else(short)?;
            let ip = Ipv4Addr::new(b[0], b[1], b[2], b[3]);
            Ok(Some(SocketAddr::new(IpAddr::V4(ip), u16::from_be_bytes([b[8], b[9]]))))
        }
        // TCP over IPv6.
        0x21 => {
            let b: &[u8; 36] = block.get(..36).and_then(|b| b.try_into().ok()).ok_or_else(short)?;
            let mut ip = [0u8; 16];
            ip.copy_from_slice(&b[..16]);
            Ok(Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), u16::from_be_bytes([b[32], b[33]]))))
        }
        // UNSPEC: the balancer could not say.
        0x00 => Ok(None),
        f => Err(ProxyHeaderError::Family(f)),
    }
}

/// A version 2 PROXY header for a TCP connection from `client` to `server`,
/// as a balancer sends it (tests build connections with it).
#[cfg(test)]
pub(crate) fn encode(client: SocketAddr, server: SocketAddr) -> Vec<u8> {
    let mut out = SIGNATURE.to_vec();
    out.push(0x21);
    match (client, server) {
        (SocketAddr::V4(c), SocketAddr::V4(s)) => {
            out.push(0x11);
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&c.ip().octets());
            out.extend_from_slice(&s.ip().octets());
            out.extend_from_slice(&c.port().to_be_bytes());
            out.extend_from_slice(&s.port().to_be_bytes());
        }
        (c, s) => {
            let v6 = |a: SocketAddr| match a.ip() {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            out.push(0x21);
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&v6(c).octets());
            out.extend_from_slice(&v6(s).octets());
            out.extend_from_slice(&c.port().to_be_bytes());
            out.extend_from_slice(&s.port().to_be_bytes());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parse(bytes: &[u8]) -> Result<Option<SocketAddr>, ProxyHeaderError> {
        let mut r = bytes;
        read(&mut r).await
    }

    #[tokio::test]
    async fn a_balancers_header_names_the_client_and_nothing_past_it_is_read() {
        let client: SocketAddr = "203.0.113.7:40123".parse().unwrap();
        let server: SocketAddr = "10.0.0.11:1983".parse().unwrap();
        let mut bytes = encode(client, server);
        bytes.extend_from_slice(b"\x16\x03\x01rest of a ClientHello");
        let mut r = &bytes[..];
        assert_eq!(read(&mut r).await.unwrap(), Some(client));
        assert_eq!(r, b"\x16\x03\x01rest of a ClientHello");

        let v6: SocketAddr = "[2001:db8::7]:555".parse().unwrap();
        assert_eq!(parse(&encode(v6, "[2001:db8::1]:1983".parse().unwrap())).await.unwrap(), Some(v6));

        // TLVs after the addresses are skipped with the block.
        let mut tlv = encode(client, server);
        tlv[15] += 7;
        tlv.extend_from_slice(&[0x04, 0x00, 0x04, b'n', b'o', b'o', b'p']);
        tlv.extend_from_slice(b"after");
        let mut r = &tlv[..];
        assert_eq!(read(&mut r).await.unwrap(), Some(client));
        assert_eq!(r, b"after");
    }

    #[tokio::test]
    async fn the_balancers_own_connections_name_nobody() {
        let mut local = encode("10.0.0.5:1".parse().unwrap(), "10.0.0.11:1983".parse().unwrap());
        local[12] = 0x20;
        assert_eq!(parse(&local).await.unwrap(), None);
        let mut unspec = SIGNATURE.to_vec();
        unspec.extend_from_slice(&[0x21, 0x00, 0x00, 0x00]);
        assert_eq!(parse(&unspec).await.unwrap(), None);
    }

    #[tokio::test]
    async fn malformed_headers_are_refused_with_what_is_wrong() {
        let good = encode("203.0.113.7:40123".parse().unwrap(), "10.0.0.11:1983".parse().unwrap());
        let refused = |e: ProxyHeaderError| e.to_string();

        // A TLS ClientHello straight away: the balancer sends no header.
        let hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03abcdefghijklmnop";
        assert!(matches!(parse(hello).await, Err(ProxyHeaderError::NoSignature)));
        let v1 = b"PROXY TCP4 203.0.113.7 10.0.0.11 40123 1983\r\n";
        let e = parse(v1).await.unwrap_err();
        assert!(refused(e).contains("send-proxy-v2"));

        let mut version = good.clone();
        version[12] = 0x11;
        assert!(matches!(parse(&version).await, Err(ProxyHeaderError::Version(1))));
        let mut command = good.clone();
        command[12] = 0x2f;
        assert!(matches!(parse(&command).await, Err(ProxyHeaderError::Command(15))));
        let mut udp = good.clone();
        udp[13] = 0x12;
        assert!(matches!(parse(&udp).await, Err(ProxyHeaderError::Family(0x12))));
        let mut short = good.clone();
        short[15] = 4;
        short.truncate(16 + 4);
        assert!(matches!(parse(&short).await, Err(ProxyHeaderError::Short { family: 0x11, len: 4 })));
        let mut long = good.clone();
        long[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
        let e = parse(&long).await.unwrap_err();
        assert!(matches!(e, ProxyHeaderError::TooLong { len: 65535 }), "{e}");
        // Cut short: the connection ended inside the header.
        assert!(matches!(parse(&good[..20]).await, Err(ProxyHeaderError::Read { .. })));
        assert!(matches!(parse(&good[..10]).await, Err(ProxyHeaderError::Read { .. })));
    }
}
