#!/bin/busybox sh
# SnowFlock guest /init (PID 1 in the initramfs). Mounts the host's root read-only over
# virtio-9p (tag sfroot) under a tmpfs overlay and hands over to the sfd guest agent.
# Any failure prints "sf-init: ..." on the console and powers off, so the host sees the
# VM stop instead of a hang.
/bin/busybox mkdir -p /bin /proc /sys /dev /lower /rw /newroot
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

fail() { echo "sf-init: $*" > /dev/console; poweroff -f; sleep 5; exit 1; }

mode=run; agent=
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    sf.mode=*) mode=${arg#sf.mode=} ;;
    sf.agent=*) agent=${arg#sf.agent=} ;;
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

mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144,cache=loose sfroot /lower \
  || fail "cannot mount the host root (virtio-9p tag sfroot)"
mount -t tmpfs -o mode=0755 sfrw /rw || fail "cannot mount the overlay tmpfs"
mkdir -p /rw/upper /rw/work
mount -t overlay sfroot -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work /newroot \
  || fail "cannot mount the root overlay"
for d in proc sys dev run; do mkdir -p "/newroot/$d"; done
mount -t proc proc /newroot/proc
mount -t sysfs sysfs /newroot/sys
mount --move /dev /newroot/dev
mkdir -p /newroot/dev/pts /newroot/dev/shm
mount -t devpts devpts /newroot/dev/pts
mount -t tmpfs -o mode=1777 tmpfs /newroot/dev/shm
mount -t tmpfs -o mode=0755 tmpfs /newroot/run
# /tmp stays the overlay's: host programs and files under /tmp are visible, writes private.
umount /proc /sys
[ -n "$agent" ] || fail "no sf.agent= on the kernel command line"
[ -x "/newroot$agent" ] || fail "the guest agent $agent is not executable in the guest"
exec switch_root /newroot "$agent" guest-agent
