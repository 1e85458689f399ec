#!/usr/bin/env bash
# Brings Hangar up on this machine, into a local prefix (default ./.hangar-dev),
# the way an operator would: builds the binaries, builds a signed appliance
# bundle, and installs it with `hangar-install --answers` into the prefix.
#
#   installer/up.sh [--prefix DIR]          bring up (again: resumes, repairs, upgrades)
#   installer/up.sh --down [--prefix DIR]   stop it and remove the release and the
#                                           configuration (data and secrets are kept)
#
# Run as root: the installer creates the `hangar` service account and runs every
# service as it. The bundle is signed with a development key kept in
# DIR/dev-signing/ and trusted only through DIR/etc/hangar/trust/. The
# administrator's password is generated on the first run, printed once, and kept
# in DIR/admin-password (0600). Services listen on loopback only.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
prefix="$root/.hangar-dev"
down=0
while (($#)); do
  case "$1" in
    --prefix) [ $# -ge 2 ] || { echo "up.sh: --prefix needs a directory" >&2; exit 2; }
              prefix="$(mkdir -p "$2" && cd "$2" && pwd)"; shift 2 ;;
    --down) down=1; shift ;;
    -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "up.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
  esac
done

[ "$(id -u)" = 0 ] || { echo "up.sh: run as root (the installer creates the service account and runs services as it)" >&2; exit 1; }

target="$(cargo metadata --format-version 1 --no-deps --manifest-path "$root/Cargo.toml" \
  | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
install_bin="$target/debug/hangar-install"

if ((down)); then
  if [ -f "$prefix/etc/hangar/install-state.json" ]; then
    "$install_bin" --prefix "$prefix" uninstall
  else
    echo "nothing installed in $prefix"
  fi
  exit 0
fi

# Packages, Garage and the bundles' offline inputs, when missing.
"$root/scripts/prepare.sh" --for up
# shellcheck source=scripts/env.sh
source "$root/scripts/env.sh"

if [ ! -d "$prefix" ]; then
  mkdir -p "$prefix"
  chmod 755 "$prefix"
fi
# Every directory above the prefix must let the service account through: the
# services run from the release unpacked there.
dir="$prefix"
while [ "$dir" != / ]; do
  mode="$(stat -c '%a' "$dir")"
  if (( (8#$mode & 1) == 0 )); then
    echo "up.sh: the service account cannot enter $dir (mode $mode); choose another --prefix" >&2
    exit 1
  fi
  dir="$(dirname "$dir")"
done

if [ -x "$install_bin" ]; then
  echo "==> building the binaries"
else
  echo "==> building the binaries (the first build takes about 10 minutes on 2 cores)"
fi
started=$SECONDS
cargo build --quiet --manifest-path "$root/Cargo.toml" -p hangar -p hangar-worker -p hangar-install -p hangar-bundle
echo "    built in $((SECONDS - started)) s"

signing="$prefix/dev-signing"
trust="$prefix/etc/hangar/trust"
mkdir -p "$signing" "$trust"
chmod 700 "$signing"
chmod 755 "$prefix" "$prefix/etc" "$prefix/etc/hangar" "$trust"
if [ ! -f "$signing/dev.key" ]; then
  "$target/debug/hangar-bundle" keygen --out "$signing/dev" >/dev/null
  echo "    made a development signing key in $signing"
fi
install -m 0644 "$signing/dev.pub" "$trust/dev.pub"

echo "==> building the appliance bundle"
bundle="$prefix/hangar-appliance.bundle"
"$root/bundles/build-appliance.sh" --bin-dir "$target/debug" --key "$signing/dev.key" \
  --out "$bundle.partial" --compression-level 3 >/dev/null
mv "$bundle.partial" "$bundle"

answers="$prefix/answers.toml"
password_file="$prefix/admin-password"
new_password=0
if [ ! -f "$password_file" ]; then
  (umask 077; printf 'Hangar-%s\n' "$(head -c 18 /dev/urandom | base64 | tr -d '/+=')" > "$password_file")
  new_password=1
fi

# A port the installer may use: the usual one when nothing listens there.
pick_port() {
  if ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
    echo "$1"
  else
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
  fi
}

# The ports of an earlier run are kept: the installer knows them as its own.
if [ -f "$answers" ]; then
  port_of() { sed -n "s/^$1 = \([0-9]*\)$/\1/p" "$answers"; }
  ports=(server "$(port_of server_port)" broker "$(port_of broker_port)" database "$(port_of database_port)"
         objects "$(port_of objects_port)" s3 "$(port_of garage_s3_port)" rpc "$(port_of garage_rpc_port)"
         admin "$(port_of garage_admin_port)")
else
  ports=(server "$(pick_port 1983)" broker "$(pick_port 1984)" database "$(pick_port 5432)"
         objects "$(pick_port 9000)" s3 "$(pick_port 3900)" rpc "$(pick_port 3901)" admin "$(pick_port 3903)")
fi
declare -A port=()
for ((i = 0; i < ${#ports[@]}; i += 2)); do port[${ports[i]}]="${ports[i+1]}"; done

(umask 077; cat > "$answers.partial" <<TOML
# Answers for hangar-install, written by installer/up.sh.
existing_install = "upgrade-or-repair"
bundle = "$bundle"
allow_downgrade = true
hostname = "localhost"
addresses = ["127.0.0.1"]
listen_address = "127.0.0.1"
server_port = ${port[server]}
broker_port = ${port[broker]}
database_port = ${port[database]}
objects_port = ${port[objects]}
garage_s3_port = ${port[s3]}
garage_rpc_port = ${port[rpc]}
garage_admin_port = ${port[admin]}
data_dir = "/var/lib/hangar"
admin_email = "admin@hangar.localhost"
admin_password = "$(cat "$password_file")"
object_store = "bundled"
tls = "generate"
confirm = true
TOML
)
mv "$answers.partial" "$answers"

echo "==> installing into $prefix"
# A rebuilt development bundle keeps its version: replacing the installed
# release with it must be asked for. A trial on a workstation may have less
# free disk than an appliance host must: that check is shown as a warning.
"$install_bin" --prefix "$prefix" --no-systemd --answers "$answers" --timings --danger-replace-release \
    --ignore-preflight disk

cat <<DONE

Hangar is up in $prefix:
  console         https://localhost:${port[server]}  (trust $prefix/etc/hangar/pki/ca.crt)
  administrator   admin@hangar.localhost, password in $password_file
  status          $install_bin --prefix $prefix status
  stop            installer/up.sh --down --prefix $prefix
DONE
if ((new_password)); then
  echo "  password        $(cat "$password_file")   (shown once; kept in $password_file)"
fi
