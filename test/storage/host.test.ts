// Discovery, exclusions and locations on this machine's real sysfs, with loop devices carrying a
// GPT table, an ext4 partition (mounted as a snapstore destination) and a swap partition.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { diskToJSON, locationToJSON } from '../../src/api/json';
import { DiskCatalog } from '../../src/storage/catalog';
import { locationStatus, requireBlockDevice, resolveLocation } from '../../src/storage/locations';
import { blockDeviceNumber, dfBytes, findCommand, loopDevicesUnavailable, mount, type Mount } from '../native/helpers/loop';
import { attachPartitionedLoop, partitionImage, recordingLogger, sh } from './helpers';

const MiB = 1024 * 1024;
const skip = loopDevicesUnavailable() ?? (findCommand('sfdisk') === undefined ? 'sfdisk is not installed (Debian package fdisk)' : false);

const PTUUID = '0c2d9a3e-97b1-4c6e-8c1b-1e2f3a4b5c6d';
const P1UUID = '5e6f7a8b-0000-4000-8000-000000000001';
const FSUUID = '2bc1143a-0000-4000-8000-000000000002';

let tmp: string;
let loop: ReturnType<typeof attachPartitionedLoop> | undefined;
let mounted: Mount | undefined;
let name: string;

describe('storage on real block devices', { skip }, () => {
  before(() => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'coriolis-storage-host-'));
    const file = path.join(tmp, 'disk.img');
    fs.writeFileSync(file, '');
    fs.truncateSync(file, 64 * MiB);
    partitionImage(file, [
      'label: gpt', `label-id: ${PTUUID}`,
      `start=2048, size=65536, uuid=${P1UUID}`,
      'start=67584, size=16384, type=0657FD6D-A4AB-43C4-84E5-0933C84B4F4F',
    ].join('\n'));
    loop = attachPartitionedLoop(file);
    name = path.basename(loop.path);
    sh('mkfs.ext4', ['-q', '-F', '-L', 'snapstores', '-U', FSUUID, `${loop.path}p1`]);
    sh('mkswap', ['-q', `${loop.path}p2`]);
  });

  after(() => {
    mounted?.unmount();
    loop?.detach();
    fs.rmSync(tmp, { recursive: true, force: true });
  });

  it('lists a loop device only with includeVirtual, with its partitions and their contents', async () => {
    const catalog = new DiskCatalog({ log: recordingLogger().log, destinations: [] });
    assert.ok(!(await catalog.list()).some((d) => d.name === name), 'loop devices are virtual');
    const disk = (await catalog.list({ includeVirtual: true })).find((d) => d.name === name);
    assert.ok(disk, `${name} listed with includeVirtual`);
    const json = diskToJSON(disk);
    assert.equal(json.path, loop!.path);
    assert.equal(json.size, 64 * MiB);
    assert.equal(json.device_major, loop!.major);
    assert.equal(json.device_minor, loop!.minor);
    assert.equal(json.partition_table_type, 'gpt');
    assert.equal(json.partition_table_uuid, PTUUID);
    assert.equal(json.is_virtual, true);
    const [p1, p2] = json.partitions!;
    const p1Device = blockDeviceNumber(`${loop!.path}p1`);
    assert.deepEqual(p1, {
      name: `${name}p1`, path: `${loop!.path}p1`, sectors: 65536, filesystem_uuid: FSUUID, partition_uuid: P1UUID,
      partition_type: '0fc63daf-8483-4772-8e79-3d69d8477de4', label: 'snapstores', filesystem_type: 'ext4',
      start_sector: 2048, end_sector: 67583, alignment_offset: 0, device_major: p1Device.major, device_minor: p1Device.minor,
    });
    assert.equal(p2.filesystem_type, 'swap');
    assert.equal(p2.partition_type, '0657fd6d-a4ab-43c4-84e5-0933c84b4f4f');
    assert.equal((await catalog.get(name))!.partitions.length, 2);
    assert.equal((await catalog.byDevice(loop!))!.name, name);
  });

  it('excludes the loop device once a destination is mounted from its first partition', async () => {
    mounted = mount(`${loop!.path}p1`);
    const destination = path.join(mounted.dir, 'snapstore_files');
    fs.mkdirSync(destination);
    const catalog = new DiskCatalog({ log: recordingLogger().log, destinations: [destination] });
    const excluded = await catalog.excludedDevices();
    assert.ok(excluded.has(name) && excluded.has(`${name}p1`), [...excluded].join(' '));
    assert.ok(!(await catalog.list({ includeVirtual: true, includeSwap: true })).some((d) => d.name === name));
    assert.equal(await catalog.get(name), undefined);
  });

  it('resolves the location on that partition, with live capacity', async () => {
    const destination = path.join(mounted!.dir, 'snapstore_files');
    const location = await resolveLocation(destination);
    assert.deepEqual(location, { path: destination, device: blockDeviceNumber(`${loop!.path}p1`), devicePath: `${loop!.path}p1` });
    requireBlockDevice(location);
    const before = locationToJSON(await locationStatus(location, 4096));
    const df = dfBytes(destination);
    assert.equal(before.total_capacity, df.size);
    assert.equal(before.allocated_capacity, 4096);
    assert.deepEqual(Object.keys(before), ['available_capacity', 'allocated_capacity', 'total_capacity', 'path', 'device_path', 'major', 'minor']);
    const fd = fs.openSync(path.join(destination, 'chunk'), 'w');
    fs.writeSync(fd, Buffer.alloc(4 * MiB, 1));
    fs.fdatasyncSync(fd);
    fs.closeSync(fd);
    const later = locationToJSON(await locationStatus(location, async (where) => (where === destination ? 4 * MiB : -1)));
    assert.ok(later.available_capacity <= before.available_capacity - 4 * MiB, `${later.available_capacity} < ${before.available_capacity}`);
    assert.equal(later.allocated_capacity, 4 * MiB);
  });

  it('refuses a destination on a filesystem without a block device, unless the caller skips the check', async () => {
    const shm = fs.mkdtempSync(path.join('/dev/shm', 'coriolis-loc-'));
    try {
      const location = await resolveLocation(shm);
      assert.equal(location.device.major, 0);
      assert.equal(location.devicePath, '');
      assert.throws(() => requireBlockDevice(location), { name: 'AgentError', kind: 'invalid', code: 'ENOTBLK', message: /without a block device/ });
      const json = locationToJSON(await locationStatus(location, 0));
      assert.ok(json.total_capacity > 0);
      assert.equal(json.device_path, '');
    } finally {
      fs.rmSync(shm, { recursive: true, force: true });
    }
  });
});
