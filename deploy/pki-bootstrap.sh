#!/bin/sh
# Creates the federation's CA and certificates once, into $PKI_DIR (default
# /pki). Re-running keeps every certificate that is still good.
set -eu
PKI_DIR=${PKI_DIR:-/pki}
jukinet pki federation --dir "$PKI_DIR" \
  --municipality 312011 --municipality 312029 --municipality 131016 \
  --operators "$@"
