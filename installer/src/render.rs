//! The files the installer writes from the answers: `hangar.toml` (no secret
//! inside: it points to files), Garage's configuration, PostgreSQL's settings
//! and access rules. Pure functions of the answers and the layout.

use std::path::Path;

use crate::answers::{Answers, BundledEngine, DatabaseChoice, ObjectStoreChoice};
use crate::host::Layout;

/// Names of the secret files under `secrets/`.
pub const DB_PASSWORD: &str = "db-password";
pub const MASTER_KEY: &str = "master.key";
pub const OBJECTS_ACCESS_KEY: &str = "objects-access-key";
pub const OBJECTS_SECRET_KEY: &str = "objects-secret-key";
pub const GARAGE_RPC_SECRET: &str = "garage-rpc-secret";
/// Every secret file the installer may create.
pub const SECRET_FILES: &[&str] = &[DB_PASSWORD, MASTER_KEY, OBJECTS_ACCESS_KEY, OBJECTS_SECRET_KEY, GARAGE_RPC_SECRET];

/// The CA of an external PostgreSQL server, copied under `pki/`.
pub const DB_CA: &str = "database-ca.crt";

/// The database and its role.
pub const DB_NAME: &str = "hangar";
pub const DB_ROLE: &str = "hangar";
pub const BUCKET: &str = "hangar";
pub const GARAGE_REGION: &str = "garage";

/// A TOML string literal.
fn q(s: impl AsRef<str>) -> String {
    toml::Value::String(s.as_ref().to_string()).to_string()
}

fn qp(p: &Path) -> String {
    q(p.to_string_lossy())
}

/// The console certificate: the operator's own, or one from the appliance CA.
pub fn server_cert(answers: &Answers, l: &Layout) -> (std::path::PathBuf, std::path::PathBuf) {
    if answers.tls.is_some() {
        (l.pki.join("console-provided.crt"), l.pki.join("console-provided.key"))
    } else {
        (l.pki.join("server.crt"), l.pki.join("server.key"))
    }
}

/// The server's staging area for uploaded bundles (`[server] bundles_dir`).
pub fn bundles_dir(l: &Layout) -> std::path::PathBuf {
    l.data.join("bundles")
}

pub fn hangar_toml(answers: &Answers, l: &Layout, service_user: &str) -> String {
    let ca = l.pki.join("ca.crt");
    let listen = |port: u16| q(std::net::SocketAddr::new(answers.listen, port).to_string());
    let (server_cert, server_key) = server_cert(answers, l);
    let hangar = l.bin("hangar");
    let config = &l.config;
    let (db_host, db_port, db_name, db_role, db_ca) = match &answers.database {
        DatabaseChoice::Bundled => ("127.0.0.1", answers.ports.database, DB_NAME, DB_ROLE, ca.clone()),
        DatabaseChoice::External(d) => (d.host.as_str(), d.port, d.name.as_str(), d.user.as_str(), l.pki.join(DB_CA)),
    };
    let mut s = format!(
        "# The appliance configuration, written by hangar-install (run it again to change\n\
         # it). No secrets here: they live in the files under {secrets}.\n\n\
         [database]\nhost = {db_host}\nport = {db_port}\nname = {db}\nuser = {role}\npassword_file = {pw}\nca_file = {db_ca}\npool_size = 16\n\n\
         [server]\nlisten = {server_listen}\npublic_url = {public}\ncert_file = {scert}\nkey_file = {skey}\nca_file = {ca}\n\
         ca_key_file = {cakey}\nbroker_url = {broker_url}\ntools_dir = {tools}\nprovider_mirror_dir = {providers}\n\
         bundles_dir = {bundles}\nbundle_trust_dir = {trust}\n\n\
         [drain]\ndata_dir = {drain}\n\n\
         [secrets]\nmaster_key_file = {mk}\n\n\
         [broker]\nlisten = {broker_listen}\ncert_file = {bcert}\nkey_file = {bkey}\nca_file = {ca}\n\n",
        secrets = l.secrets.display(),
        db_host = q(db_host),
        db_port = db_port,
        db = q(db_name),
        role = q(db_role),
        pw = qp(&l.secret(DB_PASSWORD)),
        db_ca = qp(&db_ca),
        ca = qp(&ca),
        server_listen = listen(answers.ports.server),
        public = q(answers.console_url()),
        scert = qp(&server_cert),
        skey = qp(&server_key),
        cakey = qp(&l.pki.join("ca.key")),
        broker_url = q(format!("mqtts://{}:{}", answers.hostname, answers.ports.broker)),
        // In the data directory, not the release: tools bundles add to them.
        tools = qp(&l.tools),
        providers = qp(&crate::tools::mirror_dir(l)),
        bundles = qp(&bundles_dir(l)),
        trust = qp(&l.trust),
        drain = qp(&l.drain),
        mk = qp(&l.secret(MASTER_KEY)),
        broker_listen = listen(answers.ports.broker),
        bcert = qp(&l.pki.join("broker.crt")),
        bkey = qp(&l.pki.join("broker.key")),
    );
    match &answers.objects {
        ObjectStoreChoice::Bundled(engine) => s += &format!(
            "[objects]\nengine = {engine}\nendpoint = {ep}\nregion = {region}\nbucket = {bucket}\n\
             access_key_file = {ak}\nsecret_key_file = {sk}\nca_file = {ca}\n\n",
            engine = q(engine.name()),
            ep = q(format!("https://{}:{}", answers.hostname, answers.ports.objects)),
            region = q(match engine {
                BundledEngine::Garage => GARAGE_REGION,
                BundledEngine::Minio => crate::minio::REGION,
            }),
            bucket = q(BUCKET),
            ak = qp(&l.secret(OBJECTS_ACCESS_KEY)),
            sk = qp(&l.secret(OBJECTS_SECRET_KEY)),
            ca = qp(&ca),
        ),
        ObjectStoreChoice::External(x) => {
            s += &format!(
                "[objects]\nengine = \"external\"\nendpoint = {ep}\nregion = {region}\nbucket = {bucket}\n\
                 access_key_file = {ak}\nsecret_key_file = {sk}\n",
                ep = q(&x.endpoint),
                region = q(&x.region),
                bucket = q(&x.bucket),
                ak = qp(&l.secret(OBJECTS_ACCESS_KEY)),
                sk = qp(&l.secret(OBJECTS_SECRET_KEY)),
            );
            if let Some(ca) = &x.ca_file {
                s += &format!("ca_file = {}\n", qp(&l.pki.join("objects-ca.crt")));
                let _ = ca;
            }
            if x.danger_plain_http {
                s += "danger_plain_http = true\n";
            }
            s += "\n";
        }
    }
    s += &format!(
        "[supervisor]\nsocket = {socket}\nlog_dir = {logs}\nstate_dir = {state}\nuser = {user}\n\n",
        socket = qp(&l.socket()),
        logs = qp(&l.logs),
        state = qp(&l.supervisor),
        user = q(service_user),
    );
    if answers.bundled_database() {
        s += &format!(
            "[[supervisor.service]]\nname = \"postgres\"\ncommand = {pg}\nargs = [\"-D\", {data}]\n\
             env = {{ LD_LIBRARY_PATH = {lib}, LC_ALL = \"C\", TZ = \"UTC\" }}\n\
             # SIGINT is PostgreSQL's fast shutdown.\nstop_signal = \"INT\"\nstop_timeout_secs = 60\nready = {{ kind = \"postgres\" }}\n\n",
            pg = qp(&l.pg_bin("postgres")),
            data = qp(&l.postgres),
            lib = qp(&l.pg_lib()),
        );
    }
    // An external database is not supervised here: nothing waits for it but
    // the services' own connections.
    let db_deps: &[&str] = if answers.bundled_database() { &["\"postgres\""] } else { &[] };
    let mut server_deps = db_deps.to_vec();
    if matches!(answers.objects, ObjectStoreChoice::Bundled(BundledEngine::Minio)) {
        s += &crate::minio::service_toml(answers, l, &|v| q(v));
        server_deps.push("\"minio\"");
    }
    if matches!(answers.objects, ObjectStoreChoice::Bundled(BundledEngine::Garage)) {
        // Garage serves no TLS: it listens on loopback, `hangar tls-proxy` is
        // its TLS front. Its keys are read from their files at start, so they
        // never appear in this file.
        s += &format!(
            "[[supervisor.service]]\nname = \"garage\"\ncommand = \"/bin/sh\"\n\
             args = [\"-c\", {script}, {garage}, {ak}, {sk}, {cfg}]\n\
             env = {{ GARAGE_DEFAULT_BUCKET = {bucket}, RUST_LOG = \"garage=warn\", NO_COLOR = \"1\" }}\n\
             ready = {{ kind = \"tcp\", address = {s3} }}\n\n\
             [[supervisor.service]]\nname = \"objects-tls\"\ncommand = {hangar}\n\
             args = [\"tls-proxy\", \"--listen\", {olisten}, \"--to\", {s3}, \"--cert\", {ocert}, \"--key\", {okey}]\n\
             depends_on = [\"garage\"]\nready = {{ kind = \"s3\", endpoint = {local_ep} }}\n\n",
            script = q("set -e; a=$(cat \"$1\"); s=$(cat \"$2\"); export GARAGE_DEFAULT_ACCESS_KEY=\"$a\" GARAGE_DEFAULT_SECRET_KEY=\"$s\"; exec \"$0\" -c \"$3\" server --single-node --default-bucket"),
            garage = qp(&l.current.join("embedded/garage/garage")),
            ak = qp(&l.secret(OBJECTS_ACCESS_KEY)),
            sk = qp(&l.secret(OBJECTS_SECRET_KEY)),
            cfg = qp(&l.garage_config),
            bucket = q(BUCKET),
            s3 = q(format!("127.0.0.1:{}", answers.ports.garage_s3)),
            hangar = qp(&hangar),
            olisten = listen(answers.ports.objects),
            ocert = qp(&l.pki.join("objects.crt")),
            okey = qp(&l.pki.join("objects.key")),
            local_ep = q(format!("https://{}", answers.local_addr(answers.ports.objects))),
        );
        server_deps.push("\"objects-tls\"");
    }
    s += &format!(
        "[[supervisor.service]]\nname = \"server\"\ncommand = {hangar}\nargs = [\"--config\", {config}, \"server\"]\n\
         depends_on = [{deps}]\nready = {{ kind = \"https\", url = {ready}, ca_file = {ca} }}\n\n\
         [[supervisor.service]]\nname = \"drain\"\ncommand = {hangar}\nargs = [\"--config\", {config}, \"drain\"]\n\
         depends_on = [{db_deps}]\nready = {{ kind = \"heartbeat\", process = \"drain\" }}\n\n\
         [[supervisor.service]]\nname = \"scheduler\"\ncommand = {hangar}\nargs = [\"--config\", {config}, \"scheduler\"]\n\
         depends_on = [{db_deps}]\nready = {{ kind = \"heartbeat\", process = \"scheduler\" }}\n",
        hangar = qp(&hangar),
        config = qp(config),
        deps = server_deps.join(", "),
        db_deps = db_deps.join(", "),
        ready = q(format!("https://{}/ready", answers.local_addr(answers.ports.server))),
        ca = qp(&ca),
    );
    if answers.backups.schedule.is_some() {
        // The schedule and retention are read from backup.toml.
        s += &format!(
            "\n[[supervisor.service]]\nname = \"backups\"\ncommand = {installer}\n\
             args = [\"--prefix\", {prefix}, \"--service-user\", {user}, \"backup\", \"--scheduled\"]\n\
             depends_on = [\"postgres\"]\n",
            installer = qp(&l.bin("hangar-install")),
            prefix = qp(&l.prefix),
            user = q(service_user),
        );
    }
    s
}

pub fn garage_toml(answers: &Answers, l: &Layout) -> String {
    let p = &answers.ports;
    format!(
        "# Garage, the bundled object store, written by hangar-install.\n\
         metadata_dir = {meta}\ndata_dir = {data}\ndb_engine = \"sqlite\"\nreplication_factor = 1\n\
         rpc_bind_addr = \"127.0.0.1:{rpc}\"\nrpc_public_addr = \"127.0.0.1:{rpc}\"\nrpc_secret_file = {secret}\n\n\
         [s3_api]\ns3_region = {region}\napi_bind_addr = \"127.0.0.1:{s3}\"\n\n\
         [admin]\napi_bind_addr = \"127.0.0.1:{admin}\"\n",
        meta = qp(&l.objects.join("meta")),
        data = qp(&l.objects.join("data")),
        rpc = p.garage_rpc,
        secret = qp(&l.secret(GARAGE_RPC_SECRET)),
        region = q(GARAGE_REGION),
        s3 = p.garage_s3,
        admin = p.garage_admin,
    )
}

/// The TLS 1.2 suites PostgreSQL may use: the AEAD ones with forward secrecy
/// that rustls offers on every other listener, in its order. TLS 1.3 (whose
/// suites PostgreSQL 15 does not configure) has only AEAD suites in OpenSSL's
/// default set.
pub const POSTGRES_TLS12_CIPHERS: &str = "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-CHACHA20-POLY1305:\
                                          ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-CHACHA20-POLY1305";

/// PostgreSQL's settings, included from `postgresql.conf`.
pub fn postgres_conf(answers: &Answers, l: &Layout) -> String {
    format!(
        "# Written by hangar-install.\nlisten_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{run}'\n\
         ssl = on\nssl_cert_file = '{cert}'\nssl_key_file = '{key}'\nssl_min_protocol_version = 'TLSv1.2'\n\
         ssl_ciphers = '{POSTGRES_TLS12_CIPHERS}'\nssl_prefer_server_ciphers = on\n\
         password_encryption = 'scram-sha-256'\njit = off\nlogging_collector = off\n",
        port = answers.ports.database,
        run = l.pg_run.display(),
        cert = l.pki.join("db.crt").display(),
        key = l.pki.join("db.key").display(),
    )
}

/// Only what is needed: the service account as the superuser over the local
/// socket (peer), and the application role over TLS from loopback.
pub fn pg_hba() -> String {
    format!(
        "# Written by hangar-install.\n\
         local all postgres peer map=hangar\n\
         hostssl {DB_NAME} {DB_ROLE} 127.0.0.1/32 scram-sha-256\n\
         hostssl {DB_NAME} {DB_ROLE} ::1/128 scram-sha-256\n"
    )
}

pub fn pg_ident(service_user: &str) -> String {
    format!("# Written by hangar-install.\nhangar {service_user} postgres\n")
}

/// The systemd unit running the supervisor.
pub fn systemd_unit(l: &Layout) -> String {
    format!(
        "# Written by hangar-install: the supervisor runs every other service.\n\
         [Unit]\nDescription=Hangar appliance ({prefix})\nAfter=network-online.target\nWants=network-online.target\n\n\
         [Service]\nType=notify\nNotifyAccess=main\nExecStart={hangar} --config {config} supervise\n\
         ExecReload=/bin/kill -HUP $MAINPID\nKillMode=mixed\nTimeoutStopSec=180\nRestart=always\nRestartSec=2\n\n\
         [Install]\nWantedBy=multi-user.target\n",
        prefix = l.prefix.display(),
        hangar = l.bin("hangar").display(),
        config = l.config.display(),
    )
}
