//! Who gets in: only a worker with its own certificate and its own token, while
//! it is not revoked and its pool was not reset — and what happens to clients
//! that are slow, silent, oversized, too many, or speak another protocol.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Client, ConnectFailure, Env, SOON, mosquitto, mosquitto_args, tls_args};
use hangar_broker::Notification;
use hangar_config::BrokerLimits;
use hangar_certs::{CaOptions, CertStore, LeafRequest, Usage};
use rumqttc::ConnectReturnCode::{BadClientId, BadUserNamePassword, NotAuthorized, ServiceUnavailable};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn refused(opts: rumqttc::MqttOptions) -> ConnectFailure {
    match Client::connect(opts).await {
        Ok(_) => panic!("the client must be refused"),
        Err(e) => e,
    }
}

async fn assert_refused(what: &str, opts: rumqttc::MqttOptions, code: rumqttc::ConnectReturnCode) {
    match refused(opts).await {
        ConnectFailure::Refused(c) => assert_eq!(c, code, "{what}"),
        other => panic!("{what}: expected CONNACK {code:?}, got {other}"),
    }
}

async fn assert_tls_refused(what: &str, opts: rumqttc::MqttOptions) {
    match refused(opts).await {
        ConnectFailure::Transport(_) => {}
        other => panic!("{what}: expected the TLS handshake to fail, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_worker_with_its_own_certificate_and_token_gets_in() {
    let env = Env::start().await;
    let pool = env.create_pool("a").await;
    let w = env.create_worker(pool).await;
    let other = env.create_worker(pool).await;
    let name = w.name();
    let cert = Some((w.cert_pem.as_str(), w.key_pem.as_str()));
    let login = Some((name.as_str(), w.token.as_str()));

    assert_refused("anonymous", env.options_as(&name, None, cert), BadUserNamePassword).await;
    assert_refused("empty password", env.options_as(&name, Some((&name, "")), cert), BadUserNamePassword).await;
    assert_refused("not a token", env.options_as(&name, Some((&name, "hunter2")), cert), BadUserNamePassword).await;
    let wrong = format!("hwt_{}_{}", "a".repeat(12), "b".repeat(40));
    assert_refused("wrong token", env.options_as(&name, Some((&name, &wrong)), cert), BadUserNamePassword).await;
    assert_refused("a peer's token", env.options_as(&name, Some((&name, &other.token)), cert), BadUserNamePassword)
        .await;
    let api_key_shaped = w.token.replacen("hwt_", "hak_", 1);
    assert_refused("another kind of token", env.options_as(&name, Some((&name, &api_key_shaped)), cert), BadUserNamePassword)
        .await;
    // The peer's full credentials, but this worker's certificate.
    let other_name = other.name();
    assert_refused(
        "credentials of another worker",
        env.options_as(&other_name, Some((&other_name, &other.token)), cert),
        NotAuthorized,
    )
    .await;
    assert_refused("client id is not the username", env.options_as("w999", login, cert), BadClientId).await;
    let mut zero = env.options(&w);
    zero.set_keep_alive(Duration::ZERO);
    assert_refused("keep-alive 0", zero, BadClientId).await;

    // Certificates: none, another CA's, one that names no worker, one not recorded.
    assert_tls_refused("no client certificate", env.options_as(&name, login, None)).await;
    let foreign = CertStore::open_or_create(&env.dir.path().join("foreign-pki"), &CaOptions::default()).unwrap();
    let forged = foreign
        .ca()
        .issue(&LeafRequest {
            common_name: "forged".into(),
            names: vec![],
            organization: Some(name.clone()),
            usage: Usage::Client,
            validity: time::Duration::days(1),
        })
        .unwrap();
    let forged_key = forged.key_pem.clone().unwrap();
    assert_tls_refused("another CA's certificate", env.options_as(&name, login, Some((&forged.cert_pem, &forged_key)))).await;
    for organization in ["admin", "w0", "w1x", "wOne"] {
        let c = env.issue_client_cert(organization);
        let key = c.key_pem.clone().unwrap();
        assert_refused(organization, env.options_as(&name, login, Some((&c.cert_pem, &key))), NotAuthorized).await;
    }
    let server_cert = env.pki.ca().issue(&LeafRequest::server("broker", &["127.0.0.1"])).unwrap();
    let server_key = server_cert.key_pem.clone().unwrap();
    assert_tls_refused(
        "a server certificate (no client usage)",
        env.options_as(&name, login, Some((&server_cert.cert_pem, &server_key))),
    )
    .await;
    let reissued = env.issue_client_cert(&name);
    let reissued_key = reissued.key_pem.clone().unwrap();
    assert_refused(
        "a valid certificate of the right name that is not the recorded one",
        env.options_as(&name, login, Some((&reissued.cert_pem, &reissued_key))),
        NotAuthorized,
    )
    .await;

    // The database says no.
    let tokenless = env.create_worker(pool).await;
    env.sql(&format!("UPDATE workers SET token_hash = NULL WHERE id = {}", tokenless.id)).await;
    assert_refused("no token on record", env.options(&tokenless), BadUserNamePassword).await;
    let revoked = env.create_worker(pool).await;
    env.sql(&format!("UPDATE workers SET revoked_at = now() WHERE id = {}", revoked.id)).await;
    assert_refused("revoked", env.options(&revoked), NotAuthorized).await;
    let gone = env.create_worker(pool).await;
    env.sql(&format!("DELETE FROM workers WHERE id = {}", gone.id)).await;
    assert_refused("deleted", env.options(&gone), NotAuthorized).await;
    let reset_pool = env.create_pool("reset").await;
    let stale = env.create_worker(reset_pool).await;
    env.sql(&format!("UPDATE worker_pools SET generation = generation + 1 WHERE id = {reset_pool}")).await;
    assert_refused("pool reset", env.options(&stale), NotAuthorized).await;

    // The same refusals as Debian's client reports them.
    let mut args = mosquitto_args(&env, &revoked);
    args.extend(["-t".into(), revoked.pool_topic(), "-C".into(), "1".into(), "-W".into(), "5".into()]);
    let out = mosquitto("mosquitto_sub", &args);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not authorised"), "{err}");
    let mut bad_password = w.clone();
    bad_password.token = wrong.clone();
    let mut args = mosquitto_args(&env, &bad_password);
    args.extend(["-t".into(), w.pool_topic(), "-C".into(), "1".into(), "-W".into(), "5".into()]);
    let out = mosquitto("mosquitto_sub", &args);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad user name or password"), "{err}");
    let mut args = tls_args(&env, &w.cert_path, &w.key_path);
    args.extend(["-t".into(), w.pool_topic(), "-C".into(), "1".into(), "-W".into(), "5".into(), "-i".into(), name.clone()]);
    let out = mosquitto("mosquitto_sub", &args);
    assert!(!out.status.success(), "anonymous mosquitto_sub must be refused");

    // And after all that, the right worker is welcome.
    assert_eq!(env.broker.connections(), 0);
    let mut c = env.subscriber(&w).await;
    env.barrier(&mut [(&w, &mut c)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_ca_in_the_ca_file_is_trusted_and_changes_need_no_restart() {
    let env = Env::start().await;
    let pool = env.create_pool("a").await;
    let w = env.create_worker(pool).await;
    // A worker whose certificate comes from a second CA (as during a CA rotation).
    let next_ca = CertStore::open_or_create(&env.dir.path().join("next-pki"), &CaOptions::default()).unwrap();
    let mut v = env.create_worker(pool).await;
    let issued = next_ca
        .ca()
        .issue(&LeafRequest {
            common_name: "rotated".into(),
            names: vec![],
            organization: Some(v.name()),
            usage: Usage::Client,
            validity: time::Duration::days(1),
        })
        .unwrap();
    env.sql(&format!("UPDATE workers SET cert_serial = '{}' WHERE id = {}", issued.serial_hex, v.id)).await;
    v.cert_pem = issued.cert_pem.clone();
    v.key_pem = issued.key_pem.clone().unwrap();
    assert_tls_refused("a CA the broker does not trust yet", env.options(&v)).await;

    // The broker's CA file gets the second CA after the first: it is picked up
    // without a restart, and both are trusted.
    let mut bundle = std::fs::read_to_string(env.ca_path()).unwrap();
    bundle.push_str(next_ca.ca().cert_pem());
    std::fs::write(env.ca_path(), bundle).unwrap();
    let mut c = hangar_testkit::wait_for("the broker to trust the second CA", SOON, || async {
        Client::connect(env.options(&v)).await.ok()
    })
    .await;
    c.subscribe(&[&v.pool_topic(), &v.worker_topic()]).await.unwrap();
    let mut cw = env.subscriber(&w).await;
    env.barrier(&mut [(&v, &mut c), (&w, &mut cw)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_reset_and_rotation_end_live_connections() {
    let env = Env::start().await;
    let (pool, other_pool) = (env.create_pool("a").await, env.create_pool("b").await);
    let revoked = env.create_worker(pool).await;
    let rotated = env.create_worker(pool).await;
    let bystander = env.create_worker(other_pool).await;
    let mut c_revoked = env.subscriber(&revoked).await;
    let mut c_rotated = env.subscriber(&rotated).await;
    let mut c_bystander = env.subscriber(&bystander).await;

    env.sql(&format!("UPDATE workers SET revoked_at = now() WHERE id = {}", revoked.id)).await;
    c_revoked.wait_closed().await;
    assert_refused("revoked", env.options(&revoked), NotAuthorized).await;

    let fresh = hangar_crypto::new_token(hangar_broker::WORKER_TOKEN_KIND);
    env.sql(&format!("UPDATE workers SET token_hash = '{}' WHERE id = {}", fresh.hash, rotated.id)).await;
    c_rotated.wait_closed().await;
    assert_refused("old token", env.options(&rotated), BadUserNamePassword).await;
    let mut renewed = rotated.clone();
    renewed.token = fresh.token.expose().to_string();
    let mut c_renewed = env.subscriber(&renewed).await;

    env.sql(&format!("UPDATE worker_pools SET generation = generation + 1 WHERE id = {pool}")).await;
    c_renewed.wait_closed().await;
    assert_refused("pool reset", env.options(&renewed), NotAuthorized).await;

    // The other pool was not touched.
    env.barrier(&mut [(&bystander, &mut c_bystander)]).await;
    assert_eq!(env.broker.connections(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_garbage_and_oversized_clients_do_not_hold_the_broker() {
    let limits = BrokerLimits { connect_timeout_secs: 2, ..BrokerLimits::default() };
    let env = Env::start_with(limits).await;
    let pool = env.create_pool("a").await;
    let w = env.create_worker(pool).await;
    let addr = env.broker.local_addr();

    // Silent TCP clients, a client speaking HTTP, and one that completes TLS
    // with a valid certificate but never sends CONNECT.
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    let mut http = tokio::net::TcpStream::connect(addr).await.unwrap();
    http.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut mute_tls = tls_connect(&env, &w).await;

    // Meanwhile a worker connects and is served.
    let mut c = env.subscriber(&w).await;
    env.barrier(&mut [(&w, &mut c)]).await;

    // The broker closes the silent ones after the connect timeout (the HTTP
    // client first gets a TLS alert).
    for s in silent.iter_mut().chain(std::iter::once(&mut http)) {
        tokio::time::timeout(SOON, closed(s)).await.expect("the broker must close a silent client");
    }
    tokio::time::timeout(SOON, closed(&mut mute_tls)).await.expect("the broker must close a mute TLS client");

    // An oversized packet ends the connection; so does garbage after CONNECT.
    let mut big = env.subscriber(&w).await;
    let filter = format!("{}{}", w.pool_topic(), "x".repeat(5000));
    assert!(big.subscribe(&[&filter]).await.is_err());
    // Invalid packet type, malformed remaining length, SUBSCRIBE without payload.
    for garbage in [&[0xF0u8, 0x00][..], &[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01], &[0x82, 0x00]] {
        let mut raw = tls_connect(&env, &w).await;
        raw.write_all(&connect_packet(&w)).await.unwrap();
        let mut ack = [0u8; 4];
        raw.read_exact(&mut ack).await.unwrap();
        assert_eq!(ack, [0x20, 0x02, 0x00, 0x00], "CONNACK accepted");
        raw.write_all(garbage).await.unwrap();
        let rest = tokio::time::timeout(SOON, closed(&mut raw)).await.expect("garbage must end the connection");
        assert!(rest.is_empty(), "the broker answered {garbage:?} with {rest:?}");
    }

    // A client that goes silent after CONNECT is dropped once 1.5 keep-alive
    // periods pass without a packet.
    let mut quiet = tls_connect(&env, &w).await;
    quiet.write_all(&connect_packet_keep_alive(&w, 1)).await.unwrap();
    let mut ack = [0u8; 4];
    quiet.read_exact(&mut ack).await.unwrap();
    assert_eq!(ack, [0x20, 0x02, 0x00, 0x00]);
    let rest = tokio::time::timeout(SOON, closed(&mut quiet)).await.expect("keep-alive must expire");
    assert!(rest.is_empty(), "{rest:?}");

    // A client speaking MQTT 5 is told its protocol version is not accepted.
    let mut args = mosquitto_args(&env, &w);
    args.extend(["-V".into(), "5".into(), "-t".into(), w.pool_topic(), "-C".into(), "1".into(), "-W".into(), "5".into()]);
    let out = mosquitto("mosquitto_sub", &args);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(err.contains("protocol"), "{err}");

    // The broker still works.
    let mut again = env.subscriber(&w).await;
    env.barrier(&mut [(&w, &mut again)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_connection_limit_new_workers_are_told_to_come_back() {
    let limits = BrokerLimits { max_connections: 2, ..BrokerLimits::default() };
    let env = Env::start_with(limits).await;
    let pool = env.create_pool("a").await;
    let (w1, w2, w3) = (env.create_worker(pool).await, env.create_worker(pool).await, env.create_worker(pool).await);
    let c1 = env.subscriber(&w1).await;
    let mut c2 = env.subscriber(&w2).await;
    assert_refused("third connection", env.options(&w3), ServiceUnavailable).await;
    c1.client.disconnect().await.unwrap();
    common::wait_for_connections(&env, 1).await;
    let mut c3 = env.subscriber(&w3).await;
    env.barrier(&mut [(&w2, &mut c2), (&w3, &mut c3)]).await;
    assert_eq!(
        env.broker.publish_to_pool(pool, &Notification::WorkAvailable { pool }).await.unwrap(),
        2,
        "the disconnected worker is no longer addressed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_connection_of_a_worker_replaces_the_first() {
    let env = Env::start().await;
    let pool = env.create_pool("a").await;
    let w = env.create_worker(pool).await;
    let mut first = env.subscriber(&w).await;
    let mut second = env.subscriber(&w).await;
    first.wait_closed().await;
    common::wait_for_connections(&env, 1).await;
    env.barrier(&mut [(&w, &mut second)]).await;
}

/// Reads until the peer closes; returns what came before.
async fn closed(s: &mut (impl tokio::io::AsyncRead + Unpin)) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// A TLS connection presenting `w`'s certificate, with no MQTT spoken yet.
async fn tls_connect(env: &Env, w: &common::Worker) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use rustls::pki_types::pem::PemObject;
    let roots = hangar_certs::tls::roots_from_pem(&std::fs::read(env.ca_path()).unwrap()).unwrap();
    let chain = hangar_certs::tls::parse_certs(w.cert_pem.as_bytes()).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(w.key_pem.as_bytes()).unwrap();
    let cfg = hangar_certs::tls::client_config(roots, Some((chain, key))).unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = tokio::net::TcpStream::connect(env.broker.local_addr()).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    connector.connect(name, tcp).await.expect("TLS handshake")
}

/// An MQTT 3.1.1 CONNECT for `w`, encoded by rumqttd's own codec.
fn connect_packet(w: &common::Worker) -> Vec<u8> {
    connect_packet_keep_alive(w, 30)
}

fn connect_packet_keep_alive(w: &common::Worker, keep_alive: u16) -> Vec<u8> {
    use rumqttd::protocol::{Connect, Login, Packet, Protocol};
    let mut out = bytes::BytesMut::new();
    let connect = Connect { keep_alive, client_id: w.name(), clean_session: true };
    let login = Login { username: w.name(), password: w.token.clone() };
    rumqttd::protocol::v4::V4.write(Packet::Connect(connect, None, None, None, Some(login)), &mut out).unwrap();
    out.to_vec()
}
