#!/bin/sh
# Creates the federation's CA and certificates once, into $PKI_DIR (default
# /pki, which only this script mounts: it holds ca.key). Re-running keeps every
# certificate that is still good.
#
# Then, for every folder $NODES_DIR/<name> (default /nodes; compose.yaml mounts
# one volume per node there), it copies in just what node <name> needs: ca.pem,
# crl.pem, its certificate as tls.pem and its key as tls.key, owned by root and
# group $NODE_GID (10001, the image's jukinet user), the key readable by that
# group only; a node that keeps an operation log also gets its log key as
# tls.log.key (like tls.key) and log-verifiers (the log keys of the tier below).
# Never ca.key, never another node's key.
set -eu
PKI_DIR=${PKI_DIR:-/pki}
NODES_DIR=${NODES_DIR:-/nodes}
NODE_GID=${NODE_GID:-10001}
umask 077
jukinet pki federation --dir "$PKI_DIR" \
  --municipality 312011 --municipality 312029 --municipality 131016 \
  --operators "$@"
chmod 0700 "$PKI_DIR"
[ -d "$NODES_DIR" ] || exit 0
for dir in "$NODES_DIR"/*/; do
  [ -d "$dir" ] || continue
  name=$(basename "$dir")
  if [ ! -f "$PKI_DIR/$name.pem" ] || [ ! -f "$PKI_DIR/$name.key" ]; then
    echo "pki-bootstrap: no certificate for $name in $PKI_DIR" >&2
    exit 1
  fi
  install -o 0 -g "$NODE_GID" -m 0444 "$PKI_DIR/ca.pem" "$dir/ca.pem"
  install -o 0 -g "$NODE_GID" -m 0444 "$PKI_DIR/crl.pem" "$dir/crl.pem"
  install -o 0 -g "$NODE_GID" -m 0444 "$PKI_DIR/$name.pem" "$dir/tls.pem"
  install -o 0 -g "$NODE_GID" -m 0440 "$PKI_DIR/$name.key" "$dir/tls.key"
  given="ca.pem crl.pem tls.pem tls.key"
  if [ -f "$PKI_DIR/$name.log.key" ]; then
    install -o 0 -g "$NODE_GID" -m 0440 "$PKI_DIR/$name.log.key" "$dir/tls.log.key"
    install -o 0 -g "$NODE_GID" -m 0444 "$PKI_DIR/log-verifiers" "$dir/log-verifiers"
    given="$given tls.log.key log-verifiers"
  fi
  chown 0:"$NODE_GID" "$dir"
  chmod 0750 "$dir"
  echo "pki-bootstrap: $name gets $given"
done
