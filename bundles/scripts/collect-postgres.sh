#!/bin/bash
# Collects a relocatable PostgreSQL into OUT, for embedded/postgres/ of the
# appliance bundle:
#
#   OUT/usr/lib/postgresql/15/{bin,lib}   server, clients, extension modules
#   OUT/usr/share/postgresql/15           share files (found relative to bin/)
#   OUT/usr/share/locale                  PostgreSQL's message catalogues
#   OUT/lib                               every shared library they need
#                                         (run with LD_LIBRARY_PATH=OUT/lib)
#
# PostgreSQL locates its share and library directories relative to its own
# binary, through the common prefix of the paths it was compiled with
# (/usr/lib/postgresql/15/bin and /usr/share/postgresql/15), so keeping that
# relation makes the tree relocatable. The packages come from Debian (apt-get
# download + dpkg -x, cached); the libraries are those ldd resolves, except the
# C library's own, which every host has. JIT (llvmjit, LLVM bitcode) is left
# out: it would need all of LLVM, and Hangar runs PostgreSQL with jit=off.
#
# usage: collect-postgres.sh OUT
source "$(dirname "$0")/common.sh"

[ $# -eq 1 ] || die "usage: collect-postgres.sh OUT"
out="$1"
major=15
packages=(postgresql-$major postgresql-client-$major libpq5)
arch="$(dpkg --print-architecture)"
debs="$CACHE_DIR/apt"
mkdir -p "$debs"

# The newest cached .deb of a package, downloading it when none is cached.
cached_deb() {
    local pkg="$1" found
    found="$(ls "$debs/${pkg}_"*"_${arch}.deb" 2>/dev/null | sort -V | tail -n1 || true)"
    if [ -z "$found" ]; then
        need_network "the Debian package $pkg"
        local tmp
        tmp="$(mktemp -d)"
        chmod 755 "$tmp"
        if ! (cd "$tmp" && apt-get download "$pkg" >&2); then
            # A fresh machine may have no package lists yet.
            [ "$(id -u)" = 0 ] || die "apt-get download $pkg failed (run apt-get update?)"
            apt-get update -qq >&2
            (cd "$tmp" && apt-get download "$pkg" >&2) || die "apt-get download $pkg failed"
        fi
        mv "$tmp"/*.deb "$debs/"
        rmdir "$tmp"
        found="$(ls "$debs/${pkg}_"*"_${arch}.deb" | sort -V | tail -n1)"
    fi
    echo "$found"
}

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
for pkg in "${packages[@]}"; do
    dpkg -x "$(cached_deb "$pkg")" "$work/root"
done
root="$work/root"
pg_lib="usr/lib/postgresql/$major"
pg_share="usr/share/postgresql/$major"
[ -x "$root/$pg_lib/bin/postgres" ] || die "the packages hold no $pg_lib/bin/postgres"

mkdir -p "$out/$pg_lib" "$out/usr/share/postgresql" "$out/lib"
# bin/postmaster is a symbolic link to postgres, kept only for compatibility.
cp -a "$root/$pg_lib/bin" "$out/$pg_lib/bin"
rm -f "$out/$pg_lib/bin/postmaster"
cp -a "$root/$pg_lib/lib" "$out/$pg_lib/lib"
rm -rf "$out/$pg_lib/lib/bitcode" "$out/$pg_lib/lib"/llvmjit*
cp -a "$root/$pg_share" "$out/$pg_share"
rm -rf "$out/$pg_share/man"
for mo in "$root"/usr/share/locale/*/LC_MESSAGES/*-"$major".mo; do
    rel="${mo#"$root/"}"
    mkdir -p "$out/$(dirname "$rel")"
    cp "$mo" "$out/$rel"
done
cp -L "$root/usr/lib/"*-linux-gnu/libpq.so.5 "$out/lib/libpq.so.5"

# Libraries of the C library itself: the host's must be used.
is_libc() {
    case "$1" in
        linux-vdso.so.* | ld-linux*.so.* | libc.so.* | libm.so.* | libdl.so.* | libpthread.so.* | \
            librt.so.* | libresolv.so.* | libutil.so.* | libanl.so.* | libnsl.so.* | libmvec.so.* | \
            libBrokenLocale.so.*) return 0 ;;
        *) return 1 ;;
    esac
}

missing=()
while IFS= read -r -d '' elf; do
    [ "$(head -c 4 "$elf" | od -An -c | tr -d ' ')" = '177ELF' ] || continue
    while read -r name arrow path _; do
        [ "$arrow" = "=>" ] || continue
        is_libc "$name" && continue
        if [ "$path" = "not" ]; then
            missing+=("$name (needed by ${elf#"$out/"})")
            continue
        fi
        [ -e "$out/lib/$name" ] || cp -L "$path" "$out/lib/$name"
    done < <(LD_LIBRARY_PATH="$out/lib" ldd "$elf" 2>/dev/null || true)
done < <(find "$out/$pg_lib" -type f -print0)
if [ ${#missing[@]} -gt 0 ]; then
    die "shared libraries not found on this host: ${missing[*]} (install the runtime dependencies of postgresql-$major)"
fi
chmod 644 "$out/lib/"*

version="$(dpkg-deb -f "$(cached_deb postgresql-$major)" Version)"
echo "PostgreSQL $major ($version, Debian $arch)" > "$out/VERSION"
echo "collect-postgres: PostgreSQL $version with $(ls "$out/lib" | wc -l) libraries" >&2
