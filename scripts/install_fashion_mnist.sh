#!/usr/bin/env bash
# Installs Fashion-MNIST (gzipped IDX files) from Debian's `dataset-fashion-mnist` package into
# /usr/share/datasets/fashion-mnist/, where jaxsel.hebb.data.load_fashion_mnist looks by default.
# Needs root (or sudo) and access to the Debian package mirror; nothing else is downloaded.
set -euo pipefail
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y dataset-fashion-mnist
ls -l /usr/share/datasets/fashion-mnist/
