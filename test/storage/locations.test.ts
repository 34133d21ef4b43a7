// Snapstore locations against a fake sysfs (the real-device cases are in host.test.ts).
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { locationToJSON } from '../../src/api/json';
import { locationStatus, requireBlockDevice, resolveLocation } from '../../src/storage/locations';
import { showDevice } from '../../src/core/devices';
import { fileSystemDevice } from '../../src/host/sysfs';
import { fakeSysfs } from './helpers';

let tmp: string;

before(() => { tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'coriolis-locations-')); });
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

describe('snapstore locations', () => {
  it('names the device by its uevent DEVNAME', async () => {
    const dest = path.join(tmp, 'dest');
    fs.mkdirSync(dest);
    const device = fileSystemDevice(dest);
    const sysRoot = fakeSysfs(path.join(tmp, 'tree'), [
      { name: 'cciss!c0d0', dev: '104:0', size: 2048, partitions: [{ name: 'cciss!c0d0p1', dev: showDevice(device), start: 2048, size: 1024 }] },
    ]);
    const location = await resolveLocation(dest, { sysRoot, devRoot: '/devices' });
    assert.deepEqual(location, { path: dest, device, devicePath: '/devices/cciss/c0d0p1' });
    requireBlockDevice(location);
  });

  it('leaves the device path empty when sysfs does not know the device', async () => {
    const location = await resolveLocation(tmp, { sysRoot: fakeSysfs(path.join(tmp, 'empty'), []) });
    assert.equal(location.devicePath, '');
    assert.deepEqual(location.device, fileSystemDevice(tmp));
  });

  it('rejects a destination that does not exist', async () => {
    await assert.rejects(resolveLocation(path.join(tmp, 'missing')), { code: 'ENOENT' });
  });

  it('refuses anonymous devices (major 0) only when asked', () => {
    const location = { path: '/srv/btrfs', device: { major: 0, minor: 42 }, devicePath: '' };
    assert.throws(() => requireBlockDevice(location), { kind: 'invalid', code: 'ENOTBLK', message: /\/srv\/btrfs.*0:42/ });
  });

  it('reads capacity live and maps it to the wire JSON', async () => {
    const location = { path: tmp, device: { major: 8, minor: 0 }, devicePath: '/dev/sda' };
    const status = await locationStatus(location, () => 3 * 4096);
    assert.ok(status.totalBytes > 0 && status.availableBytes <= status.totalBytes);
    assert.deepEqual(locationToJSON(status), {
      available_capacity: status.availableBytes,
      allocated_capacity: 3 * 4096,
      total_capacity: status.totalBytes,
      path: tmp,
      device_path: '/dev/sda',
      major: 8,
      minor: 0, // minor 0 is a minor like any other
    });
  });
});
