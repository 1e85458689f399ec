//! What the broker tests share: a real PostgreSQL with Hangar's schema, a test CA
//! issuing the broker's and the workers' certificates, worker pools and workers
//! with tokens, the broker itself on a loopback port, and MQTT clients — rumqttc
//! in-process and Debian's mosquitto_sub/mosquitto_pub as separate processes.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use hangar_broker::{Broker, BrokerHandle, Notification};
use hangar_config::{BrokerConfig, BrokerLimits};
use hangar_certs::{CaOptions, CertStore, LeafRequest, Usage};
use hangar_db::schema::{stacks, worker_pools, workers};
use hangar_db::{DbPool, migrate};
use hangar_testkit::{PgServer, TestDir};
use rumqttc::{AsyncClient, ConnectReturnCode, ConnectionError, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use tokio::sync::mpsc;

/// Upper bound for anything that should happen "at once" (machines are noisy).
pub const SOON: Duration = Duration::from_secs(10);

pub struct Env {
    pub pg: PgServer,
    pub pool: DbPool,
    pub dir: TestDir,
    pub pki: CertStore,
    pub broker: BrokerHandle,
    pub config: BrokerConfig,
}

/// A worker as the database and its host know it.
#[derive(Clone)]
pub struct Worker {
    pub id: i64,
    pub pool: i64,
    pub token: String,
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

impl Worker {
    pub fn name(&self) -> String {
        hangar_broker::wire::tenant(self.id)
    }
    pub fn pool_topic(&self) -> String {
        hangar_broker::wire::pool_topic(self.id)
    }
    pub fn worker_topic(&self) -> String {
        hangar_broker::wire::worker_topic(self.id)
    }
}

impl Env {
    pub async fn start() -> Env {
        Self::start_with(BrokerLimits::default()).await
    }

    pub async fn start_with(limits: BrokerLimits) -> Env {
        let pg = PgServer::start().await;
        migrate::run_pending(&pg.database()).await.expect("migrate");
        let pool = pg.database().pool(Some(8)).expect("pool");
        let dir = TestDir::new("broker");
        let pki = CertStore::open_or_create(&dir.path().join("pki"), &CaOptions::default()).expect("test CA");
        pki.ensure("broker", &LeafRequest::server("broker", &["localhost", "127.0.0.1"]), time::Duration::days(1))
            .expect("broker certificate");
        let config = BrokerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            cert_file: pki.cert_path("broker"),
            key_file: pki.key_path("broker"),
            ca_file: pki.ca_cert_path(),
            limits,
        };
        let broker = Broker::start(config.clone(), pg.database(), pool.clone()).await.expect("start the broker");
        let env = Env { pg, pool, dir, pki, broker, config };
        env.wait_bridge().await;
        env
    }

    pub fn port(&self) -> u16 {
        self.broker.local_addr().port()
    }

    pub fn ca_path(&self) -> PathBuf {
        self.pki.ca_cert_path()
    }

    /// Waits until the bridge LISTENs (notifications sent before are not seen).
    pub async fn wait_bridge(&self) {
        hangar_testkit::wait_for("the broker bridge to listen", SOON, || async {
            self.broker.status().await.bridge.then_some(())
        })
        .await;
    }

    /// Rows and certificates for this environment's database and CA.
    pub fn seed(&self) -> Seed<'_> {
        Seed { db: &self.pool, pki: &self.pki, dir: &self.dir }
    }

    pub async fn create_pool(&self, name: &str) -> i64 {
        self.seed().create_pool(name).await
    }

    pub async fn create_worker(&self, pool: i64) -> Worker {
        self.seed().create_worker(pool).await
    }

    pub fn issue_client_cert(&self, organization: &str) -> hangar_certs::Issued {
        self.seed().issue_client_cert(organization)
    }

    pub async fn sql(&self, statement: &str) {
        self.seed().sql(statement).await
    }

    pub async fn create_stack(&self, slug: &str, pool: i64) -> i64 {
        self.seed().create_stack(slug, pool).await
    }

    /// MQTT options for `w` as a well-behaved worker connects.
    pub fn options(&self, w: &Worker) -> MqttOptions {
        self.options_as(&w.name(), Some((&w.name(), &w.token)), Some((&w.cert_pem, &w.key_pem)))
    }

    pub fn options_as(&self, client_id: &str, login: Option<(&str, &str)>, identity: Option<(&str, &str)>) -> MqttOptions {
        options_with(self.port(), &self.ca_path(), client_id, login, identity)
    }

    /// Connects `w` and subscribes it to its two topics.
    pub async fn subscriber(&self, w: &Worker) -> Client {
        let mut c = Client::connect(self.options(w)).await.unwrap_or_else(|e| panic!("worker {} refused: {e}", w.id));
        c.subscribe(&[&w.pool_topic(), &w.worker_topic()]).await.expect("subscribe to own topics");
        c
    }

    /// Sends a message on each of `workers`' own topics and waits until each
    /// got both: whatever was published before has been routed by then.
    pub async fn barrier(&self, clients: &mut [(&Worker, &mut Client)]) {
        let marker = Notification::RunCanceled { run: -1 };
        for (w, _) in clients.iter() {
            assert_eq!(self.broker.publish_to_worker(w.id, &marker).await.unwrap(), 1);
        }
        let pools: std::collections::BTreeSet<i64> = clients.iter().map(|(w, _)| w.pool).collect();
        let pool_marker = Notification::WorkAvailable { pool: -1 };
        for p in pools {
            self.broker.publish_to_pool(p, &pool_marker).await.unwrap();
        }
        for (w, c) in clients.iter_mut() {
            c.wait_for(&w.worker_topic(), &marker).await;
            c.wait_for(&w.pool_topic(), &pool_marker).await;
        }
    }
}

/// Creates what a test needs in the database, and certificates from the test CA.
pub struct Seed<'a> {
    pub db: &'a DbPool,
    pub pki: &'a CertStore,
    pub dir: &'a TestDir,
}

impl Seed<'_> {
    pub async fn create_pool(&self, name: &str) -> i64 {
        let mut c = self.db.get().await.unwrap();
        diesel::insert_into(worker_pools::table)
            .values(worker_pools::name.eq(name))
            .returning(worker_pools::id)
            .get_result(&mut c)
            .await
            .unwrap()
    }

    /// A worker of `pool` with a token and a client certificate whose Subject O
    /// is its tenant name, as joining would make it.
    pub async fn create_worker(&self, pool: i64) -> Worker {
        let mut c = self.db.get().await.unwrap();
        let generation: i32 =
            worker_pools::table.find(pool).select(worker_pools::generation).get_result(&mut c).await.unwrap();
        let placeholder = format!("pending-{}", rand_suffix());
        let id: i64 = diesel::insert_into(workers::table)
            .values((
                workers::pool_id.eq(pool),
                workers::name.eq(format!("host-{placeholder}")),
                workers::pool_generation.eq(generation),
                workers::cert_serial.eq(&placeholder),
                workers::cert_not_after.eq(chrono_now_plus_day()),
            ))
            .returning(workers::id)
            .get_result(&mut c)
            .await
            .unwrap();
        let issued = self.issue_client_cert(&format!("w{id}"));
        let token = hangar_crypto::new_token(hangar_broker::WORKER_TOKEN_KIND);
        diesel::update(workers::table.find(id))
            .set((workers::cert_serial.eq(&issued.serial_hex), workers::token_hash.eq(&token.hash)))
            .execute(&mut c)
            .await
            .unwrap();
        let (cert_path, key_path) = self.write_identity(&format!("w{id}"), &issued.cert_pem, issued.key_pem.as_deref().unwrap());
        Worker {
            id,
            pool,
            token: token.token.expose().to_string(),
            cert_pem: issued.cert_pem,
            key_pem: issued.key_pem.unwrap(),
            cert_path,
            key_path,
        }
    }

    /// A client certificate from the test CA with Subject O `organization`.
    pub fn issue_client_cert(&self, organization: &str) -> hangar_certs::Issued {
        self.pki
            .ca()
            .issue(&LeafRequest {
                common_name: format!("worker {organization}"),
                names: vec![],
                organization: Some(organization.into()),
                usage: Usage::Client,
                validity: time::Duration::days(1),
            })
            .expect("issue a client certificate")
    }

    /// Writes a certificate and key for the command-line clients.
    pub fn write_identity(&self, name: &str, cert: &str, key: &str) -> (PathBuf, PathBuf) {
        let dir = self.dir.subdir("clients");
        let cert_path = dir.join(format!("{name}.crt"));
        let key_path = dir.join(format!("{name}.key"));
        std::fs::write(&cert_path, cert).unwrap();
        hangar_certs::write_private_file(&key_path, key.as_bytes()).unwrap();
        (cert_path, key_path)
    }

    pub async fn sql(&self, statement: &str) {
        let mut c = self.db.get().await.unwrap();
        diesel::sql_query(statement).execute(&mut c).await.unwrap_or_else(|e| panic!("{statement}: {e}"));
    }

    pub async fn create_stack(&self, slug: &str, pool: i64) -> i64 {
        let mut c = self.db.get().await.unwrap();
        diesel::insert_into(stacks::table)
            .values((
                stacks::slug.eq(slug),
                stacks::name.eq(slug),
                stacks::repository.eq("https://git.example/net.git"),
                stacks::branch.eq("main"),
                stacks::tool_version.eq("1.9.0"),
                stacks::worker_pool_id.eq(pool),
            ))
            .returning(stacks::id)
            .get_result(&mut c)
            .await
            .unwrap()
    }

}

fn rand_suffix() -> String {
    hangar_crypto::new_token("x").id
}

fn chrono_now_plus_day() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now() + chrono::Duration::days(1)
}

fn rustls_pki_types_key(pem: &str) -> rustls::pki_types::PrivateKeyDer<'static> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::PrivateKeyDer::from_pem_slice(pem.as_bytes()).expect("client key")
}

/// MQTT options for a client of the broker on `port` trusting `ca`.
pub fn options_with(
    port: u16,
    ca: &Path,
    client_id: &str,
    login: Option<(&str, &str)>,
    identity: Option<(&str, &str)>,
) -> MqttOptions {
    let roots = hangar_certs::tls::roots_from_pem(&std::fs::read(ca).unwrap()).unwrap();
    let identity = identity.map(|(cert, key)| {
        let chain = hangar_certs::tls::parse_certs(cert.as_bytes()).unwrap();
        (chain, rustls_pki_types_key(key))
    });
    let tls = hangar_certs::tls::client_config(roots, identity).unwrap();
    client_options(client_id, port, login, tls)
}

/// MQTT options for `w` as a well-behaved worker connects.
pub fn worker_options(port: u16, ca: &Path, w: &Worker) -> MqttOptions {
    options_with(port, ca, &w.name(), Some((&w.name(), &w.token)), Some((&w.cert_pem, &w.key_pem)))
}

pub fn client_options(client_id: &str, port: u16, login: Option<(&str, &str)>, tls: rustls::ClientConfig) -> MqttOptions {
    let mut o = MqttOptions::new(client_id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(5));
    if let Some((u, p)) = login {
        o.set_credentials(u, p);
    }
    o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(Arc::new(tls))));
    o
}

/// What a client saw, in order.
#[derive(Debug)]
pub enum Seen {
    Message { topic: String, payload: Vec<u8> },
    SubAck(Vec<rumqttc::SubscribeReasonCode>),
    /// The connection ended (and the client stopped: no reconnection).
    Closed(String),
}

/// A rumqttc client whose event loop runs in a task and reports what it sees.
pub struct Client {
    pub client: AsyncClient,
    seen: mpsc::UnboundedReceiver<Seen>,
    /// Messages that arrived while waiting for something else.
    pub messages: Vec<(String, Notification)>,
}

impl Client {
    /// Connects; `Err` carries the refusal (return code or transport error).
    pub async fn connect(opts: MqttOptions) -> Result<Client, ConnectFailure> {
        let (client, mut eventloop) = AsyncClient::new(opts, 64);
        let first = tokio::time::timeout(SOON, eventloop.poll()).await.map_err(|_| ConnectFailure::Timeout)?;
        match first {
            Ok(Event::Incoming(Packet::ConnAck(ack))) if ack.code == ConnectReturnCode::Success => {}
            Ok(other) => return Err(ConnectFailure::Unexpected(format!("{other:?}"))),
            Err(ConnectionError::ConnectionRefused(code)) => return Err(ConnectFailure::Refused(code)),
            Err(e) => return Err(ConnectFailure::Transport(e.to_string())),
        }
        let (tx, seen) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let topic = p.topic.clone();
                        let _ = tx.send(Seen::Message { topic, payload: p.payload.to_vec() });
                    }
                    Ok(Event::Incoming(Packet::SubAck(s))) => {
                        let _ = tx.send(Seen::SubAck(s.return_codes));
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let _ = tx.send(Seen::Closed(e.to_string()));
                        return;
                    }
                }
            }
        });
        Ok(Client { client, seen, messages: Vec::new() })
    }

    /// Subscribes at QoS 1 and waits for the SUBACK; `Err` when the broker
    /// closed the connection instead.
    pub async fn subscribe(&mut self, filters: &[&str]) -> Result<(), String> {
        for f in filters {
            self.client.subscribe(*f, QoS::AtLeastOnce).await.map_err(|e| e.to_string())?;
        }
        let mut acked = 0;
        while acked < filters.len() {
            match self.next().await {
                Seen::SubAck(codes) => {
                    assert!(codes.iter().all(|c| matches!(c, rumqttc::SubscribeReasonCode::Success(_))), "{codes:?}");
                    acked += 1;
                }
                Seen::Closed(why) => return Err(why),
                Seen::Message { .. } => {}
            }
        }
        Ok(())
    }

    pub async fn next(&mut self) -> Seen {
        let seen = tokio::time::timeout(SOON, self.seen.recv())
            .await
            .expect("nothing happened on the MQTT connection")
            .expect("the client task ended");
        if let Seen::Message { topic, payload } = &seen {
            let n = serde_json::from_slice::<Notification>(payload).unwrap_or_else(|e| panic!("payload on {topic} is not a notification: {e}"));
            self.messages.push((topic.clone(), n));
        }
        seen
    }

    /// Waits for `n` on `topic`.
    pub async fn wait_for(&mut self, topic: &str, n: &Notification) {
        if self.messages.iter().any(|(t, m)| t == topic && m == n) {
            return;
        }
        loop {
            match self.next().await {
                Seen::Message { topic: t, payload } if t == topic && serde_json::from_slice::<Notification>(&payload).ok().as_ref() == Some(n) => return,
                Seen::Closed(why) => panic!("connection closed while waiting for {n:?} on {topic}: {why}"),
                _ => {}
            }
        }
    }

    /// Waits until the broker closes the connection; returns why.
    pub async fn wait_closed(&mut self) -> String {
        loop {
            if let Seen::Closed(why) = self.next().await {
                return why;
            }
        }
    }

    /// The notifications received so far, markers left out.
    pub fn received(&self) -> Vec<(String, Notification)> {
        self.messages
            .iter()
            .filter(|(_, n)| !matches!(n, Notification::RunCanceled { run: -1 } | Notification::WorkAvailable { pool: -1 }))
            .cloned()
            .collect()
    }
}

#[derive(Debug)]
pub enum ConnectFailure {
    Refused(ConnectReturnCode),
    Transport(String),
    Unexpected(String),
    Timeout,
}

impl std::fmt::Display for ConnectFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}

/// mosquitto_sub/mosquitto_pub arguments for `w` against the broker.
pub fn mosquitto_args(env: &Env, w: &Worker) -> Vec<String> {
    mosquitto_worker_args(env.port(), &env.ca_path(), w)
}

pub fn mosquitto_worker_args(port: u16, ca: &Path, w: &Worker) -> Vec<String> {
    let mut a = mosquitto_tls_args(port, ca, &w.cert_path, &w.key_path);
    a.extend(["-u".into(), w.name(), "-P".into(), w.token.clone(), "-i".into(), w.name()]);
    a
}

pub fn tls_args(env: &Env, cert: &Path, key: &Path) -> Vec<String> {
    mosquitto_tls_args(env.port(), &env.ca_path(), cert, key)
}

pub fn mosquitto_tls_args(port: u16, ca: &Path, cert: &Path, key: &Path) -> Vec<String> {
    vec![
        "-h".into(),
        "127.0.0.1".into(),
        "-p".into(),
        port.to_string(),
        "--cafile".into(),
        ca.display().to_string(),
        "--cert".into(),
        cert.display().to_string(),
        "--key".into(),
        key.display().to_string(),
    ]
}

/// Runs a mosquitto command line client to completion (it must end by itself).
pub fn mosquitto(program: &str, args: &[String]) -> std::process::Output {
    Command::new(program).args(args).output().unwrap_or_else(|e| {
        panic!("cannot run {program} ({e}); install Debian's mosquitto-clients")
    })
}

/// Waits until the broker counts `n` connected workers.
pub async fn wait_for_connections(env: &Env, n: usize) {
    hangar_testkit::wait_for(&format!("{n} connected workers"), SOON, || async {
        (env.broker.connections() == n).then_some(())
    })
    .await;
}
