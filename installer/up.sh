#!/usr/bin/env bash
# Brings Hangar up on this machine, into a local prefix (default ./.hangar-dev):
# builds the workspace, provisions what exists so far, starts it, and says what
# it did. Run as root (services run as an unprivileged user, as on an appliance)
# or as an ordinary user (services then run as that user).
#
#   installer/up.sh [--prefix DIR]     bring up (again: idempotent)
#   installer/up.sh --down [--prefix DIR]   stop what it started
#
# What exists today: the appliance PKI, PostgreSQL 15 with TLS and
# scram-sha-256, and the schema (`hangar migrate`). Later steps of the appliance
# (server, broker, object store, supervisor) are added here as they land, and the
# whole script gives way to `hangar-install` once the offline bundle exists.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
prefix="$root/.hangar-dev"
down=0
while (($#)); do
  case "$1" in
    --prefix) prefix="$(mkdir -p "$2" && cd "$2" && pwd)"; shift 2 ;;
    --down) down=1; shift ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "up.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
  esac
done

pg_bin="${HANGAR_PG_BIN:-/usr/lib/postgresql/15/bin}"
etc="$prefix/etc/hangar"; pki="$etc/pki"; secrets="$etc/secrets"
data="$prefix/var/lib/hangar/postgres"; logs="$prefix/var/log/hangar"
port="${HANGAR_DB_PORT:-5432}"

if [ "$(id -u)" = 0 ]; then
  svc=hangar
  id "$svc" >/dev/null 2>&1 || useradd --system --user-group --no-create-home --shell /usr/sbin/nologin "$svc"
  as_svc() { runuser -u "$svc" -- "$@"; }
else
  svc="$(id -un)"
  as_svc() { "$@"; }
fi

if ((down)); then
  if [ -f "$data/postmaster.pid" ]; then as_svc "$pg_bin/pg_ctl" -D "$data" -m fast -w stop; fi
  echo "stopped PostgreSQL in $data (data kept)"
  exit 0
fi

[ -x "$pg_bin/initdb" ] || { echo "up.sh: PostgreSQL 15 server binaries not found in $pg_bin (apt-get install postgresql-15)" >&2; exit 1; }

echo "==> building the workspace"
cargo build --quiet --workspace --bins --manifest-path "$root/Cargo.toml"
hangar="$(cargo metadata --format-version 1 --no-deps --manifest-path "$root/Cargo.toml" \
  | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')/debug/hangar"

mkdir -p "$pki" "$secrets" "$data" "$logs"
chmod 0700 "$secrets"

echo "==> PKI in $pki"
if [ ! -f "$pki/ca.key" ]; then
  (umask 077; openssl ecparam -name prime256v1 -genkey -noout -out "$pki/ca.key")
  openssl req -x509 -new -key "$pki/ca.key" -sha256 -days 3650 -subj "/CN=Hangar appliance CA/O=Hangar" \
    -addext "basicConstraints=critical,CA:TRUE,pathlen:0" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
    -out "$pki/ca.crt"
  echo "    created the appliance CA"
fi
if [ ! -f "$pki/db.crt" ]; then
  (umask 077; openssl ecparam -name prime256v1 -genkey -noout | openssl pkcs8 -topk8 -nocrypt -out "$pki/db.key")
  openssl req -new -key "$pki/db.key" -subj "/CN=postgres" -out "$pki/db.csr"
  openssl x509 -req -in "$pki/db.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial -days 365 -sha256 \
    -extfile <(printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n') \
    -out "$pki/db.crt" 2>/dev/null
  rm -f "$pki/db.csr"
  echo "    issued the database certificate"
fi

echo "==> PostgreSQL in $data (as $svc, port $port)"
if [ ! -f "$secrets/db-password" ]; then
  (umask 077; openssl rand -hex 24 > "$secrets/db-password"; openssl rand -hex 24 > "$secrets/db-superuser-password")
fi
chown -R "$svc": "$data" "$logs" "$pki/db.key" "$pki/db.crt" 2>/dev/null || true
if [ ! -f "$data/PG_VERSION" ]; then
  pwfile="$(mktemp)"; cp "$secrets/db-superuser-password" "$pwfile"; chown "$svc" "$pwfile"
  as_svc "$pg_bin/initdb" -D "$data" -U postgres --auth=scram-sha-256 -E UTF8 --locale=C --pwfile="$pwfile" >/dev/null
  rm -f "$pwfile"
  cat >> "$data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$data'
ssl = on
ssl_cert_file = '$pki/db.crt'
ssl_key_file = '$pki/db.key'
ssl_min_protocol_version = 'TLSv1.2'
password_encryption = 'scram-sha-256'
CONF
  printf 'local all all scram-sha-256\nhostssl all all 127.0.0.1/32 scram-sha-256\n' > "$data/pg_hba.conf"
  echo "    initialised the cluster"
fi
if ! as_svc "$pg_bin/pg_ctl" -D "$data" status >/dev/null 2>&1; then
  as_svc "$pg_bin/pg_ctl" -D "$data" -l "$logs/postgres.log" -w start >/dev/null
  echo "    started PostgreSQL (log: $logs/postgres.log)"
fi
PGPASSWORD="$(cat "$secrets/db-superuser-password")" "$pg_bin/psql" -qAt \
  "host=127.0.0.1 port=$port user=postgres dbname=postgres sslmode=verify-full sslrootcert=$pki/ca.crt" <<SQL
SELECT 'CREATE ROLE hangar LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'hangar') \gexec
ALTER ROLE hangar PASSWORD '$(cat "$secrets/db-password")';
SELECT 'CREATE DATABASE hangar OWNER hangar' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'hangar') \gexec
SQL

cat > "$etc/hangar.toml" <<CONF
[database]
host = "127.0.0.1"
port = $port
name = "hangar"
user = "hangar"
password_file = "$secrets/db-password"
ca_file = "$pki/ca.crt"
CONF

echo "==> schema"
"$hangar" --config "$etc/hangar.toml" migrate | sed 's/^/    /'

cat <<DONE

Hangar (foundation) is up in $prefix:
  configuration   $etc/hangar.toml
  PostgreSQL 15   127.0.0.1:$port, TLS (CA $pki/ca.crt), database "hangar"
  stop with       installer/up.sh --down --prefix $prefix
The web console arrives with the server; nothing listens on 1983 yet.
DONE
