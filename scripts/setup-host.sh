#!/usr/bin/env bash
# Installs every host package this project needs on Debian 12 (bookworm), idempotently.
# mkosi 24.3, systemd 254 tools, QEMU 10, swtpm come from bookworm-backports.
set -euo pipefail

BACKPORTS_LIST=/etc/apt/sources.list.d/bookworm-backports.sources
STAMP_DIR=${ELEMENTAL_STATE:-/var/lib/elemental-py}
STAMP=$STAMP_DIR/host-packages.stamp

# Packages from bookworm-backports (newer than bookworm's own).
BPO_PACKAGES=(
  mkosi systemd systemd-boot systemd-boot-efi systemd-container udev libudev1
  qemu-system-x86 qemu-utils ovmf swtpm swtpm-tools python3-virt-firmware
)
# Packages from bookworm itself (zsh: elementalctl's zsh completion is tested for real;
# chromium: the dashboard's browser tests; sbsigntool: Secure Boot signing of systemd-boot and UKIs;
# busybox-static: the static /bin/busybox the `custom` channel tests build their channel image from).
PACKAGES=(
  mtools dosfstools erofs-utils squashfs-tools xorriso cpio zstd pigz kmod
  tpm2-tools python3-pefile python3-installer python3-venv python3-dev libtss2-dev pkg-config
  dmidecode skopeo umoci fdisk gdisk e2fsprogs util-linux debian-archive-keyring
  bubblewrap isolinux syslinux-common ca-certificates curl zsh
  postgresql chromium sbsigntool busybox-static
)

want="${BPO_PACKAGES[*]} ${PACKAGES[*]}"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  echo "host packages: already installed"
  exit 0
fi

SUDO=
[ "$(id -u)" -eq 0 ] || SUDO=sudo

if [ ! -f "$BACKPORTS_LIST" ]; then
  $SUDO tee "$BACKPORTS_LIST" >/dev/null <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi

export DEBIAN_FRONTEND=noninteractive
# Unreachable third-party sources only warn; apt-get still refreshes Debian's lists.
$SUDO apt-get update -q || true
$SUDO apt-get install -y -q --no-install-recommends -t bookworm-backports "${BPO_PACKAGES[@]}"
$SUDO apt-get install -y -q --no-install-recommends "${PACKAGES[@]}"
$SUDO mkdir -p "$STAMP_DIR"
echo "$want" | $SUDO tee "$STAMP" >/dev/null
echo "host packages: installed"
