#!/bin/busybox sh
# SnowFlock guest /init (PID 1 in the initramfs). Mounts the host's files read-only under a
# tmpfs overlay and hands over to the sfd guest agent. The files come from EROFS images on
# read-only virtio-blk disks (sf.root=disk; serials sfsys and sfwork; the VM can be cloned)
# or from the host's root over virtio-9p (tag sfroot; the default of the library).
# Any failure prints "sf-init: ..." on the console and powers off, so the host sees the
# VM stop instead of a hang.
/bin/busybox mkdir -p /bin /proc /sys /dev /lower /workimg /rw /newroot
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

fail() { echo "sf-init: $*" > /dev/console; poweroff -f; sleep 5; exit 1; }

mode=run; agent=; root=9p
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    sf.mode=*) mode=${arg#sf.mode=} ;;
    sf.agent=*) agent=${arg#sf.agent=} ;;
    sf.root=*) root=${arg#sf.root=} ;;
  esac
done

if [ "$mode" = probe ]; then
  echo "SF-GUEST-PROBE-OK" > /dev/console
  poweroff -f
  sleep 5
fi

for m in $(cat /modules.order); do
  insmod "/lib/modules/$m" || fail "insmod $m failed"
done

if [ "$mode" = idle ]; then
  # A guest with no 9p mount (QEMU 7.2 blocks migration while one is mounted), for the
  # descriptor and cloning measurements of scripts/bench.d/vm. Counts so clones show progress.
  echo "SF-GUEST-IDLE" > /dev/console
  i=0
  while :; do i=$((i+1)); echo "sf-idle-tick $i" > /dev/console; sleep 1; done
fi

# The block device whose virtio serial is $1 (no udev here: look in sysfs).
disk_with_serial() {
  for s in /sys/block/*/serial; do
    [ -e "$s" ] && [ "$(cat "$s")" = "$1" ] && { d=${s%/serial}; echo "/dev/${d##*/}"; return 0; }
  done
  return 1
}

mount -t tmpfs -o mode=0755 sfrw /rw || fail "cannot mount the overlay tmpfs"
mkdir -p /rw/upper /rw/work
if [ "$root" = disk ]; then
  # System image (host's /usr, /etc, ...) below, work image (cwd etc. at their host paths) above.
  sys=; i=0
  while ! sys=$(disk_with_serial sfsys); do
    i=$((i+1)); [ $i -le 50 ] || fail "no virtio-blk disk with serial sfsys (the system image)"; sleep 0.1
  done
  mount -t erofs -o ro "$sys" /lower || fail "cannot mount the system image $sys (erofs)"
  lower=/lower
  if work=$(disk_with_serial sfwork); then
    mount -t erofs -o ro "$work" /workimg || fail "cannot mount the work image $work (erofs)"
    lower=/workimg:/lower
  fi
  mount -t overlay sfroot -o "lowerdir=$lower,upperdir=/rw/upper,workdir=/rw/work" /newroot \
    || fail "cannot mount the root overlay"
  # The host's other top-level directories are not in the images: empty ones, writable in RAM.
  for d in tmp var var/tmp root home srv mnt media; do mkdir -p "/newroot/$d"; done
  # /tmp and /var/tmp are tmpfs unless the work image provides them (the cwd is below).
  [ -e /workimg/tmp ] || mount -t tmpfs -o mode=1777 tmpfs /newroot/tmp
  [ -e /workimg/var/tmp ] || mount -t tmpfs -o mode=1777 tmpfs /newroot/var/tmp
else
  mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144,cache=loose sfroot /lower \
    || fail "cannot mount the host root (virtio-9p tag sfroot)"
  mount -t overlay sfroot -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work /newroot \
    || fail "cannot mount the root overlay"
  # /tmp stays the overlay's: host programs and files under /tmp are visible, writes private.
fi
for d in proc sys dev run; do mkdir -p "/newroot/$d"; done
mount -t proc proc /newroot/proc
mount -t sysfs sysfs /newroot/sys
mount --move /dev /newroot/dev
mkdir -p /newroot/dev/pts /newroot/dev/shm
mount -t devpts devpts /newroot/dev/pts
mount -t tmpfs -o mode=1777 tmpfs /newroot/dev/shm
mount -t tmpfs -o mode=0755 tmpfs /newroot/run
umount /proc /sys
[ -n "$agent" ] || fail "no sf.agent= on the kernel command line"
[ -x "/newroot$agent" ] || fail "the guest agent $agent is not executable in the guest"
exec switch_root /newroot "$agent" guest-agent
