#!/usr/bin/env bash
# The test command: formatting, lints, unit and integration tests. Installs what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v cc >/dev/null || need_apt+=(gcc)
# The SSH tests run a private OpenSSH sshd on a loopback port (never the system one).
[ -x /usr/sbin/sshd ] || need_apt+=(openssh-server)
command -v ssh >/dev/null || need_apt+=(openssh-client)
command -v setpriv >/dev/null || need_apt+=(util-linux)
# The multi-host tests make hosts of network namespaces (ip netns, veth, a bridge; tc netem).
command -v ip >/dev/null && command -v tc >/dev/null || need_apt+=(iproute2)
# scripts/install.sh's test reads the man pages it installs with `man -l`.
command -v man >/dev/null || need_apt+=(man-db)
command -v strip >/dev/null || need_apt+=(binutils)
# tests/it/stripe.rs forges joins by hand (socket.send_fds) as a hostile local process would.
[ -x /usr/bin/python3 ] || need_apt+=(python3)
# tests/it/gluster.rs replicates real GlusterFS volumes: a private glusterd, FUSE mounts.
command -v glusterd >/dev/null || need_apt+=(glusterfs-server)
command -v fusermount3 >/dev/null || need_apt+=(fuse3)
command -v setfattr >/dev/null || need_apt+=(attr)
if [ ${#need_apt[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi
# promtool checks the example alert rules (conf/prometheus/); the server is not started.
if ! command -v promtool >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus
fi
rustup component list --installed 2>/dev/null | grep -q rustfmt || rustup component add rustfmt
rustup component list --installed 2>/dev/null | grep -q clippy || rustup component add clippy

echo "== cargo fmt --check"
cargo fmt --check
echo "== cargo clippy"
cargo clippy --all-targets --locked -- -D warnings
echo "== cargo doc"
# The API docs build without a warning (broken or private links, bad markup).
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --locked --quiet
echo "== cargo test"
# Integration tests run the real binary; build it first so every test uses the same one.
cargo build --locked
# A private glusterd (127.0.0.1, its own state in a scratch directory), stopped at the end.
GEOREP_TEST_GLUSTERD_DIR=$(mktemp -d /tmp/georep-glusterd.XXXXXX)
export GEOREP_TEST_GLUSTERD_DIR
trap 'scripts/glusterd.sh stop "$GEOREP_TEST_GLUSTERD_DIR" || true; rm -rf "$GEOREP_TEST_GLUSTERD_DIR"' EXIT
# If it cannot start here, the Gluster tests fail and say why; the rest still runs.
scripts/glusterd.sh start "$GEOREP_TEST_GLUSTERD_DIR" >/dev/null ||
    echo "glusterd did not start: the Gluster tests will fail (see above)" >&2
cargo test --locked -- --test-threads="${GEOREP_TEST_THREADS:-2}"
echo "== disaster-recovery drill over SSH (docs/runbook.md)"
GEOREP_BIN=$PWD/target/debug/georep scripts/dr-drill.sh
