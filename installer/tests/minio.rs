//! The bundled MinIO engine, up to its process. No MinIO binary can be had
//! here, so none runs: a bundle built with `--minio` over a placeholder file
//! proves the packaging and the installer's detection; the questions for such
//! a bundle, the rendered supervisor entry (command line, environment,
//! readiness, dependencies), the certificate directory with its modes, the
//! launch shell run with an argv-and-environment probe in MinIO's place, and
//! the signed `CreateBucket` against a real S3 server behind TLS are checked.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{bundle, check, profile_dir};
use hangar_crypto::SecretString;
use hangar_install::answers::{self, Answers, BundledEngine, Context, DatabaseChoice, ObjectStoreChoice, Ports};
use hangar_install::host::{Host, Layout};
use hangar_install::prompt::FilePrompter;
use hangar_supervisor::config::ReadyConfig;
use hangar_testkit::TestDir;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The answers of an installation on the bundled MinIO.
fn minio_answers(bundle: &Path) -> Answers {
    Answers {
        bundle: bundle.to_path_buf(),
        allow_downgrade: false,
        hostname: "hangar.example".into(),
        addresses: vec!["127.0.0.1".parse().unwrap()],
        listen: "0.0.0.0".parse().unwrap(),
        ports: Ports { server: 1983, broker: 1984, database: 5432, objects: 9000, garage_s3: 0, garage_rpc: 0, garage_admin: 0 },
        data_dir: "/var/lib/hangar".into(),
        admin_email: common::ADMIN_EMAIL.into(),
        admin_password: SecretString::new(common::ADMIN_PASSWORD.to_string()),
        database: DatabaseChoice::Bundled,
        objects: ObjectStoreChoice::Bundled(BundledEngine::Minio),
        tls: None,
        backups: Default::default(),
    }
}

fn layout(prefix: &Path) -> Layout {
    Host::detect(prefix, "hangar", true).layout(Path::new("/var/lib/hangar"))
}

#[test]
fn a_bundle_built_with_minio_carries_it_and_the_installer_takes_it_for_the_engine() {
    let built = bundle();
    let dir = TestDir::new("minio-bundle");
    // Not MinIO and not a program: only what the packaging carries.
    let placeholder = dir.path().join("minio-placeholder");
    fs::write(&placeholder, "placeholder standing for the MinIO server binary in a packaging test; never run\n").unwrap();
    let out = dir.path().join("appliance-minio.bundle");
    let mut cmd = Command::new(repo().join("bundles/build-appliance.sh"));
    cmd.arg("--bin-dir")
        .arg(profile_dir())
        .arg("--key")
        .arg(profile_dir().join("hangar-install-tests/dev-key.key"))
        .arg("--out")
        .arg(&out)
        .args(["--offline", "--compression-level", "1", "--minio"])
        .arg(&placeholder);
    check("build-appliance.sh --minio", cmd.output().unwrap());

    let mut trust = hangar_bundle::TrustStore::empty();
    trust.add_dir(&built.trust).unwrap();
    let opened = hangar_bundle::Bundle::open(&out, &trust).unwrap();
    let entries = &opened.manifest().entries;
    let minio = entries.iter().find(|e| e.path() == "embedded/minio/minio").expect("embedded/minio/minio in the manifest");
    let hangar_bundle::manifest::Entry::File { mode, sha256, .. } = minio else { panic!("{minio:?} is not a file") };
    let digest = hex::encode(ring::digest::digest(&ring::digest::SHA256, &fs::read(&placeholder).unwrap()));
    assert_eq!((mode.0, sha256.to_string()), (0o755, digest));
    assert!(!entries.iter().any(|e| e.path().starts_with("embedded/garage")), "no Garage beside MinIO");
    assert_eq!(hangar_install::install::bundled_engine(&opened), Some(BundledEngine::Minio));
    let garage = hangar_bundle::Bundle::open(&built.bundle, &trust).unwrap();
    assert_eq!(hangar_install::install::bundled_engine(&garage), Some(BundledEngine::Garage));
}

#[test]
fn the_questions_for_a_minio_bundle_ask_its_one_port_and_no_garage_ports() {
    let dir = TestDir::new("minio-answers");
    let bundle_file = dir.path().join("appliance.bundle");
    fs::write(&bundle_file, "opened by the context below").unwrap();
    let file = dir.path().join("answers.toml");
    fs::write(
        &file,
        format!(
            "bundle = {bundle:?}\nhostname = \"hangar.example\"\naddresses = \"127.0.0.1\"\nlisten_address = \"127.0.0.1\"\n\
             object_store = \"bundled\"\nserver_port = {}\nbroker_port = {}\ndatabase_port = {}\nobjects_port = {}\n\
             data_dir = \"/var/lib/hangar\"\nadmin_email = \"{}\"\nadmin_password = \"{}\"\ntls = \"generate\"\nconfirm = true\n",
            hangar_testkit::free_port(),
            hangar_testkit::free_port(),
            hangar_testkit::free_port(),
            hangar_testkit::free_port(),
            common::ADMIN_EMAIL,
            common::ADMIN_PASSWORD,
            bundle = bundle_file.display().to_string(),
        ),
    )
    .unwrap();
    fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
    let mut prompter = FilePrompter::load(&file).unwrap();
    let engine = || Some("minio".to_string());
    let mut check_bundle = |_: &Path, _: &mut dyn answers::Prompter| Ok(());
    let mut ctx = Context {
        default_hostname: "hangar.example".into(),
        own_ports: vec![],
        external_database: true,
        bundled_engine: &engine,
        check_bundle: &mut check_bundle,
        check_database: &|_| Err("not asked".into()),
        check_s3: &|_| Err("not asked".into()),
        check_tls: &|_, _| Err("not asked".into()),
    };
    // No garage_* key in the file: none is asked.
    let a = answers::ask(&mut prompter, &mut ctx).unwrap();
    assert!(matches!(a.objects, ObjectStoreChoice::Bundled(BundledEngine::Minio)), "{:?}", a.objects);
    assert_eq!((a.ports.garage_s3, a.ports.garage_rpc, a.ports.garage_admin), (0, 0, 0));
    assert!(a.summary().contains("bundled (minio)"), "{}", a.summary());
    assert_eq!(a.ports.all(true).iter().map(|(n, _)| *n).collect::<Vec<_>>(), vec!["server", "broker", "database", "object store"]);
}

#[test]
fn the_minio_supervisor_entry_is_minio_server_with_tls_from_its_certs_dir_and_no_secret_in_sight() {
    let dir = TestDir::new("minio-render");
    let l = layout(&dir.path().join("root"));
    let a = minio_answers(&dir.path().join("appliance.bundle"));
    let text = hangar_install::render::hangar_toml(&a, &l, "hangar");
    let config = hangar_config::Config::from_toml(&text, &l.config).unwrap_or_else(|e| panic!("{e}\n{text}"));

    let objects = config.objects.as_ref().unwrap();
    assert_eq!(objects.engine, hangar_objects::Engine::Minio);
    assert_eq!(objects.endpoint, "https://hangar.example:9000");
    assert_eq!(objects.region.as_deref(), Some("us-east-1"));
    assert_eq!(objects.ca_file.as_deref(), Some(l.pki.join("ca.crt").as_path()));

    let services = &config.supervisor.as_ref().unwrap().services;
    let names: Vec<&str> = services.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"minio") && !names.contains(&"garage") && !names.contains(&"objects-tls"), "{names:?}");
    let minio = services.iter().find(|s| s.name == "minio").unwrap();
    assert_eq!(minio.command, Path::new("/bin/sh"));
    let s = |p: PathBuf| p.display().to_string();
    assert_eq!(
        minio.args,
        vec![
            "-c".to_string(),
            hangar_install::minio::LAUNCH.to_string(),
            s(l.current.join("embedded/minio/minio")),
            s(l.secret("objects-access-key")),
            s(l.secret("objects-secret-key")),
            s(l.objects.clone()),
            "0.0.0.0:9000".to_string(),
            s(l.pki.join("minio")),
        ]
    );
    assert!(
        hangar_install::minio::LAUNCH.ends_with("exec \"$0\" server \"$3\" --address \"$4\" --certs-dir \"$5\""),
        "{}",
        hangar_install::minio::LAUNCH
    );
    assert_eq!(minio.env.0.keys().collect::<Vec<_>>(), vec!["MINIO_BROWSER"], "no credential in the entry's environment");
    assert_eq!(
        minio.ready,
        Some(ReadyConfig::Https { url: "https://127.0.0.1:9000/minio/health/ready".into(), ca_file: l.pki.join("ca.crt") })
    );
    let server = services.iter().find(|s| s.name == "server").unwrap();
    assert!(server.depends_on.contains(&"minio".to_string()), "{:?}", server.depends_on);
    assert!(!text.contains("garage.toml"), "{text}");
}

#[test]
fn the_certs_dir_holds_the_objects_certificate_and_a_private_key_only_the_service_user_reads() {
    let dir = TestDir::new("minio-certs");
    let l = layout(&dir.path().join("root"));
    fs::create_dir_all(&l.pki).unwrap();
    let store = hangar_certs::CertStore::open_or_create(&l.pki, &hangar_certs::CaOptions::default()).unwrap();
    store.ensure("objects", &hangar_certs::LeafRequest::server("hangar.example", &["hangar.example", "127.0.0.1"]), time::Duration::days(30)).unwrap();
    let svc = nix::unistd::User::from_name("hangar-test").unwrap().map(|u| (u.uid.as_raw(), u.gid.as_raw()));

    assert!(hangar_install::minio::prepare_certs(&l, svc).unwrap(), "written the first time");
    assert!(!hangar_install::minio::prepare_certs(&l, svc).unwrap(), "unchanged the second time");
    let certs = hangar_install::minio::certs_dir(&l);
    let public = certs.join("public.crt");
    let private = certs.join("private.key");
    assert_eq!(fs::read(&public).unwrap(), fs::read(store.cert_path("objects")).unwrap());
    assert_eq!(fs::read(&private).unwrap(), fs::read(store.key_path("objects")).unwrap());
    assert_eq!(fs::metadata(&public).unwrap().permissions().mode() & 0o777, 0o644);
    let key_meta = fs::metadata(&private).unwrap();
    assert_eq!(key_meta.permissions().mode() & 0o777, 0o600);
    if let Some((uid, _)) = svc {
        assert_eq!(key_meta.uid(), uid);
    }
    // The certificate is the appliance CA's, for the host name MinIO is reached by.
    let provided = hangar_install::answers::ProvidedTls { cert_file: public.clone(), key_file: private.clone(), ca_file: Some(l.pki.join("ca.crt")) };
    hangar_install::tls::validate_provided(&provided, "hangar.example").unwrap();
    assert!(hangar_install::tls::validate_provided(&provided, "other.example").is_err());
}

#[test]
fn the_launch_shell_puts_the_credentials_in_the_environment_and_only_paths_on_the_command_line() {
    let dir = TestDir::new("minio-launch");
    let l = layout(&dir.path().join("root"));
    fs::create_dir_all(&l.secrets).unwrap();
    fs::write(l.secret("objects-access-key"), "GKroot-user-of-test").unwrap();
    fs::write(l.secret("objects-secret-key"), "root-password-of-test-0123456789").unwrap();
    let a = minio_answers(&dir.path().join("appliance.bundle"));
    let config = hangar_config::Config::from_toml(&hangar_install::render::hangar_toml(&a, &l, "hangar"), &l.config).unwrap();
    let entry = config.supervisor.unwrap().services.into_iter().find(|s| s.name == "minio").unwrap();

    // A probe in MinIO's place, for this test only: it prints the
    // environment MinIO would get and its own command line.
    let probe = dir.path().join("argv-and-env-probe");
    fs::write(
        &probe,
        "#!/bin/sh\nprintf 'user=%s\\npassword=%s\\n' \"$MINIO_ROOT_USER\" \"$MINIO_ROOT_PASSWORD\"\n\
         printf 'cmdline=%s\\n' \"$(tr '\\0' ' ' < /proc/$$/cmdline)\"\n",
    )
    .unwrap();
    fs::set_permissions(&probe, fs::Permissions::from_mode(0o755)).unwrap();
    let mut args = entry.args.clone();
    args[2] = probe.display().to_string();
    let out = check("launch", Command::new(&entry.command).args(&args).envs(entry.env.0.iter()).output().unwrap());
    assert!(out.contains("user=GKroot-user-of-test\npassword=root-password-of-test-0123456789\n"), "{out}");
    let cmdline = out.lines().find_map(|l| l.strip_prefix("cmdline=")).unwrap();
    assert_eq!(
        cmdline.trim_end(),
        format!("/bin/sh {} server {} --address 0.0.0.0:9000 --certs-dir {}", probe.display(), l.objects.display(), l.pki.join("minio").display())
    );
    assert!(!cmdline.contains("root-password-of-test"), "{cmdline}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_bucket_is_made_by_a_signed_create_bucket_over_tls() {
    hangar_testkit::init();
    common::installer();
    let garage = hangar_testkit::Garage::start().await;
    let dir = TestDir::new("minio-bucket");
    // Garage behind a TLS front, with a certificate from a CA of the test's own.
    let pki = dir.path().join("pki");
    let store = hangar_certs::CertStore::open_or_create(&pki, &hangar_certs::CaOptions::default()).unwrap();
    store.ensure("s3", &hangar_certs::LeafRequest::server("objects.example", &["objects.example", "127.0.0.1"]), time::Duration::days(1)).unwrap();
    let front = hangar_testkit::free_port();
    let mut cmd = Command::new(profile_dir().join("hangar"));
    cmd.args(["tls-proxy", "--listen", &format!("127.0.0.1:{front}"), "--to", &format!("127.0.0.1:{}", garage.s3_port), "--cert"])
        .arg(store.cert_path("s3"))
        .arg("--key")
        .arg(store.key_path("s3"));
    let _proxy = hangar_testkit::ChildProcess::spawn(cmd, "s3-tls", dir.path());
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", front)).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let addr: std::net::SocketAddr = format!("127.0.0.1:{front}").parse().unwrap();
    let ca = store.ca_cert_path();
    let create = |bucket: &'static str, secret: String| {
        let (ca, ak) = (ca.clone(), garage.access_key.clone());
        async move {
            hangar_install::minio::create_bucket("objects.example", addr, &ca, bucket, hangar_testkit::garage::REGION, &ak, &secret).await
        }
    };

    // The key may create buckets (Garage's admin API), as MinIO's root may.
    let admin = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{}/v2/UpdateKey?id={}", garage.admin_port, garage.access_key))
        .bearer_auth(&garage.admin_token)
        .json(&serde_json::json!({ "allow": { "createBucket": true } }))
        .send()
        .await
        .unwrap();
    assert!(admin.status().is_success(), "{}", admin.text().await.unwrap_or_default());
    let made = create("made-at-install", garage.secret_key.clone()).await.unwrap();
    assert_eq!(made, "bucket made-at-install created");
    let again = create("made-at-install", garage.secret_key.clone()).await;
    assert!(again.is_ok(), "a bucket that exists and is ours counts as made: {again:?}");

    // A wrong secret is refused by the server: the request is really signed.
    let refused = create("another-one", "0".repeat(64)).await.unwrap_err();
    assert!(refused.contains("answered 403"), "{refused}");
    // An endpoint whose certificate the CA did not sign is refused.
    let other = hangar_certs::CertStore::open_or_create(&dir.path().join("other"), &hangar_certs::CaOptions::default()).unwrap();
    let untrusted = hangar_install::minio::create_bucket(
        "objects.example",
        addr,
        &other.ca_cert_path(),
        "another-one",
        hangar_testkit::garage::REGION,
        &garage.access_key,
        &garage.secret_key,
    )
    .await
    .unwrap_err();
    assert!(untrusted.contains("certificate"), "{untrusted}");
}
