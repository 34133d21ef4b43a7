// Disk discovery with real device-mapper, md and LVM stacking (inside the VM): a snapstore
// destination on an LV of a VG on an md RAID1 of two partitioned disks excludes both disks; swap
// on dm hides a disk that holds nothing else; the virtio disks are listed as physical disks.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { silentLogger } from '../../src/core/log';
import { diskToJSON } from '../../src/api/json';
import { DiskCatalog } from '../../src/storage/catalog';
import { decodeDeviceNumber } from '../../src/host/sysfs';
import { findCommand } from '../native/helpers/loop';
import { attachPartitionedLoop, partitionImage } from '../storage/helpers';
import { guestDisks, vmSkipReason } from './run';

const MiB = 1024 * 1024;
const LVM_CONFIG = 'activation { monitoring = 0 udev_sync = 0 udev_rules = 0 }';

function skipReason(): string | false {
  const notVm = vmSkipReason();
  if (notVm) return notVm;
  const missing = ['sfdisk', 'mdadm', 'lvm', 'dmsetup', 'mkswap', 'swapon'].filter((c) => findCommand(c) === undefined);
  return missing.length > 0 ? `not installed: ${missing.join(', ')} (Debian packages fdisk, mdadm, lvm2, dmsetup)` : false;
}

function sh(command: string, ...args: string[]): string {
  return execFileSync(findCommand(command) ?? command, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim();
}

/** Without udev, lvm and dmsetup make their own nodes: the device number tells the kernel name. */
function kernelName(devicePath: string): string {
  const { major, minor } = decodeDeviceNumber(fs.statSync(devicePath, { bigint: true }).rdev);
  return path.basename(fs.realpathSync(`/sys/dev/block/${major}:${minor}`));
}

describe('disk discovery with dm, md and LVM (VM)', { skip: skipReason() }, () => {
  const undo: Array<() => void> = [];
  let tmp: string;
  let destination: string;
  const disks: Record<'a' | 'b' | 'c' | 'd', ReturnType<typeof attachPartitionedLoop>> = {} as never;
  const names: Record<string, string> = {};

  before(() => {
    sh('modprobe', 'dm-mod');
    sh('modprobe', 'raid1');
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'coriolis-vm-storage-'));
    undo.push(() => fs.rmSync(tmp, { recursive: true, force: true }));
    for (const letter of ['a', 'b', 'c', 'd'] as const) {
      const file = path.join(tmp, `${letter}.img`);
      fs.writeFileSync(file, '');
      fs.truncateSync(file, 64 * MiB);
      partitionImage(file, letter === 'c' ? 'label: gpt\n,32M\n,\n' : 'label: gpt\n,\n');
      disks[letter] = attachPartitionedLoop(file);
      undo.push(() => disks[letter].detach());
      names[letter] = path.basename(disks[letter].path);
    }
    // LVM on md RAID1 on the first partitions of a and b; the destination is on one LV.
    sh('mdadm', '--create', '/dev/md/cstore', '--run', '--assume-clean', '--metadata=1.2', '--level=1', '--raid-devices=2',
      disks.a.partitions[0], disks.b.partitions[0]);
    names.md = kernelName('/dev/md/cstore');
    undo.push(() => sh('mdadm', '--stop', '/dev/md/cstore'));
    sh('lvm', 'pvcreate', '--config', LVM_CONFIG, '-q', '/dev/md/cstore');
    sh('lvm', 'vgcreate', '--config', LVM_CONFIG, '-q', 'cstorevg', '/dev/md/cstore');
    undo.push(() => sh('lvm', 'vgchange', '--config', LVM_CONFIG, '-q', '-an', 'cstorevg'));
    sh('lvm', 'lvcreate', '--config', LVM_CONFIG, '-q', '-L', '16M', '-n', 'store', 'cstorevg');
    sh('lvm', 'lvcreate', '--config', LVM_CONFIG, '-q', '-L', '8M', '-n', 'other', 'cstorevg');
    names.store = kernelName('/dev/cstorevg/store');
    names.other = kernelName('/dev/cstorevg/other');
    sh('mkfs.ext4', '-q', '/dev/cstorevg/store');
    const mountDir = path.join(tmp, 'mnt');
    fs.mkdirSync(mountDir);
    sh('mount', '/dev/cstorevg/store', mountDir);
    undo.push(() => sh('umount', mountDir));
    destination = path.join(mountDir, 'snapstore_files');
    fs.mkdirSync(destination);
    // Swap through dm: on c's second partition (c also has data), and on d's only partition. The
    // dm device starts 8 sectors in, as dm-crypt's payload does, so the partitions themselves
    // carry no swap signature: only /proc/swaps tells.
    for (const [letter, partition] of [['c', disks.c.partitions[1]], ['d', disks.d.partitions[0]]] as const) {
      const table = `0 ${Number(sh('blockdev', '--getsz', partition)) - 8} linear ${partition} 8`;
      const dm = `cswap${letter}`;
      execFileSync(findCommand('dmsetup')!, ['create', dm], { input: table });
      undo.push(() => sh('dmsetup', 'remove', dm));
      sh('mkswap', '-q', `/dev/mapper/${dm}`);
      sh('swapon', `/dev/mapper/${dm}`);
      undo.push(() => sh('swapoff', `/dev/mapper/${dm}`));
      names[`swap${letter}`] = kernelName(`/dev/mapper/${dm}`);
    }
    sh('mkfs.ext4', '-q', disks.c.partitions[0]);
  });

  after(() => {
    for (const step of undo.reverse()) {
      try {
        step();
      } catch (err) {
        process.stderr.write(`cleanup: ${(err as Error).message}\n`);
      }
    }
  });

  it('excludes every device beneath the destination, through LVM, md and partitions', async () => {
    const catalog = new DiskCatalog({ log: silentLogger(), destinations: [destination] });
    const excluded = await catalog.excludedDevices();
    const expected = [names.store, names.md, names.a, names.b, `${names.a}p1`, `${names.b}p1`];
    assert.deepEqual([...excluded].sort(), expected.sort());
    const listed = (await catalog.list({ includeVirtual: true, includeSwap: true })).map((d) => d.name);
    for (const name of [names.a, names.b, names.md, names.store]) assert.ok(!listed.includes(name), `${name} is not listed: ${listed.join(' ')}`);
    const other = (await catalog.get(names.other))!;
    assert.ok(other, 'the other LV of the VG is not beneath the destination');
    assert.deepEqual(diskToJSON(other).device_slaves, [`/dev/${names.md}`]);
    assert.equal(other.isVirtual, true);
  });

  it('hides a disk whose only partition is swap through dm, and keeps one with data next to swap', async () => {
    const catalog = new DiskCatalog({ log: silentLogger(), destinations: [destination] });
    const listed = (await catalog.list({ includeVirtual: true })).map((d) => d.name);
    assert.ok(listed.includes(names.c), `${names.c} (data and swap) is listed: ${listed.join(' ')}`);
    assert.ok(!listed.includes(names.d), `${names.d} (swap only) is hidden`);
    assert.ok(!listed.includes(names.swapd), 'the swap dm device itself is hidden');
    const withSwap = (await catalog.list({ includeVirtual: true, includeSwap: true })).map((d) => d.name);
    assert.ok(withSwap.includes(names.d) && withSwap.includes(names.swapd), withSwap.join(' '));
    assert.equal((await catalog.get(names.d))!.partitions[0].filesystemType, '', 'no signature on the partition itself');
  });

  it('lists the virtio disks as physical disks by default', async () => {
    const catalog = new DiskCatalog({ log: silentLogger(), destinations: [destination] });
    const listed = await catalog.list();
    for (const disk of guestDisks()) {
      const found = listed.find((d) => d.path === disk.device);
      assert.ok(found, `${disk.device} listed`);
      assert.equal(found.isVirtual, false);
      assert.equal(found.size, disk.sizeBytes);
      assert.deepEqual(await catalog.byDevice(found.device), found);
    }
    assert.ok(listed.every((d) => !d.isVirtual));
  });
});
