// Proves the VM harness (test/vm/run.ts): the scratch disks are there with their sizes, the
// kernel nbd driver is loaded, and veeamsnap is loaded when VEEAMSNAP_KO says so.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import { describe, test } from 'node:test';
import { guestDisks, veeamsnapLoaded, vmSkipReason } from './run';

// Skipped (with the reason) when run on the host: the disks and modules exist only in the VM.
const inVm = { skip: vmSkipReason() };

describe('vm harness', () => {
  test('the VM_DISKS devices are block devices of the expected sizes', inVm, (t) => {
    for (const disk of guestDisks()) {
      assert.ok(fs.statSync(disk.device).isBlockDevice(), `${disk.device} is a block device`);
      const size = Number(execFileSync('blockdev', ['--getsize64', disk.device], { encoding: 'utf8' }).trim());
      assert.equal(size, disk.sizeBytes, `${disk.name} (${disk.device}) size`);
      t.diagnostic(`${disk.name} ${disk.role} ${disk.device} ${size}`);
    }
    assert.equal(process.env.VM_ORIGIN_DISKS, guestDisks().filter((d) => d.role === 'origin').map((d) => d.device).join(' '));
    assert.equal(process.env.VM_STORE_DISK, guestDisks().find((d) => d.role === 'store')?.device);
  });

  test('the kernel nbd driver is loaded', inVm, () => {
    assert.ok(fs.statSync('/dev/nbd0').isBlockDevice(), '/dev/nbd0 is a block device');
  });

  test('veeamsnap is loaded', { skip: vmSkipReason() || (veeamsnapLoaded() ? false : 'VEEAMSNAP_KO not set') }, (t) => {
    assert.ok(fs.statSync('/dev/veeamsnap').isCharacterDevice(), '/dev/veeamsnap is a character device');
    assert.ok(fs.statSync('/sys/module/veeamsnap').isDirectory(), '/sys/module/veeamsnap exists');
    t.diagnostic(`veeamsnap ${fs.readFileSync('/sys/module/veeamsnap/version', 'utf8').trim()}`);
  });
});
