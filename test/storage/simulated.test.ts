// Simulated mode: the configured image files (or loop devices) are the disks.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { SIMULATED_DISK_MAJOR } from '../../src/engine/simulated/model';
import { diskToJSON } from '../../src/api/json';
import { eligibleDisks } from '../../src/storage/disks';
import { SimulatedDiskCatalog, simulatedDisks, type SimulatedDiskEntry } from '../../src/storage/simulated-catalog';
import { attachLoopDevice, findCommand, loopDevicesUnavailable } from '../native/helpers/loop';
import { partitionImage, recordingLogger, sh } from './helpers';

const MiB = 1024 * 1024;
let tmp: string;

before(() => { tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'coriolis-simdisks-')); });
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

function image(relative: string, size = 64 * MiB): string {
  const file = path.join(tmp, relative);
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, '');
  fs.truncateSync(file, size);
  return file;
}

/** Copies a small swap area made by mkswap into `file` at `offset`. */
function writeSwapAt(file: string, offset: number, size: number): void {
  const swap = image(`swap-${offset}.tmp`, size);
  sh('mkswap', ['-q', '-U', '9b3f1b9e-0ad2-40a1-aa79-2a65891ff0d1', swap]);
  const fd = fs.openSync(file, 'r+');
  fs.writeSync(fd, fs.readFileSync(swap), 0, size, offset);
  fs.closeSync(fd);
}

const entries = (files: string[]): SimulatedDiskEntry[] =>
  files.map((file, minor) => ({ path: file, device: { major: SIMULATED_DISK_MAJOR, minor } }));

const noSfdisk = findCommand('sfdisk') === undefined ? 'sfdisk is not installed (Debian package fdisk)' : false;

describe('simulated disks', () => {
  it('describes a partitioned image file like a disk, partitions without device numbers', { skip: noSfdisk }, async () => {
    const file = image('root/disk0.img');
    partitionImage(file, [
      'label: gpt',
      'label-id: 0C2D9A3E-97B1-4C6E-8C1B-1E2F3A4B5C6D',
      'start=2048, size=20480, uuid=5E6F7A8B-0000-4000-8000-000000000001',
      'start=22528, size=8192, type=0657FD6D-A4AB-43C4-84E5-0933C84B4F4F, uuid=5E6F7A8B-0000-4000-8000-000000000002',
    ].join('\n'));
    sh('mkfs.ext4', ['-q', '-F', '-L', 'data', '-U', '2bc1143a-0000-4000-8000-000000000002', '-E', `offset=${2048 * 512}`, file, '10M']);
    writeSwapAt(file, 22528 * 512, 8192 * 512);
    const [disk0] = await simulatedDisks(entries([file]), { log: recordingLogger().log });
    assert.ok(disk0);
    const json = diskToJSON(disk0, 'disk0');
    assert.equal(json.id, 'disk0');
    assert.equal(json.name, 'disk0');
    assert.equal(json.path, file);
    assert.equal(json.size, 64 * MiB);
    assert.equal(json.device_major, SIMULATED_DISK_MAJOR);
    assert.equal(json.device_minor, 0);
    assert.equal(json.partition_table_type, 'gpt');
    assert.equal(json.partition_table_uuid, '0c2d9a3e-97b1-4c6e-8c1b-1e2f3a4b5c6d');
    assert.equal(json.is_virtual, false);
    assert.ok(json.logical_sector_size >= 512 && json.physical_sector_size >= 512);
    assert.deepEqual(json.partitions, [
      {
        name: 'disk0p1', sectors: 20480, filesystem_uuid: '2bc1143a-0000-4000-8000-000000000002',
        partition_uuid: '5e6f7a8b-0000-4000-8000-000000000001', partition_type: '0fc63daf-8483-4772-8e79-3d69d8477de4',
        label: 'data', filesystem_type: 'ext4', start_sector: 2048, end_sector: 22527, alignment_offset: 0,
      },
      {
        name: 'disk0p2', sectors: 8192, filesystem_uuid: '9b3f1b9e-0ad2-40a1-aa79-2a65891ff0d1', partition_uuid: '5e6f7a8b-0000-4000-8000-000000000002',
        partition_type: '0657fd6d-a4ab-43c4-84e5-0933c84b4f4f', filesystem_type: 'swap',
        start_sector: 22528, end_sector: 30719, alignment_offset: 0,
      },
    ]);
  });

  it('names files after their base name, suffixing the minor where names collide', async () => {
    const files = [image('a/data.img', MiB), image('b/data.img', MiB), image('c/sda', MiB), image('d/data.raw', MiB)];
    const disks = await simulatedDisks(entries(files), { log: recordingLogger().log });
    assert.deepEqual(disks.map((d) => d.name), ['data-0', 'data-1', 'sda', 'data-3']);
  });

  it('hides an all-swap image unless includeSwap, and finds disks by id and by number', async () => {
    const swapDisk = image('swapdisk.img', 8 * MiB);
    sh('mkswap', ['-q', swapDisk]);
    const fsDisk = image('fsdisk.img', 16 * MiB);
    sh('mkfs.ext4', ['-q', '-F', fsDisk]);
    const catalog = new SimulatedDiskCatalog(entries([swapDisk, fsDisk]), { log: recordingLogger().log });
    assert.deepEqual((await eligibleDisks(catalog)).map((d) => d.name), ['fsdisk']);
    assert.deepEqual((await catalog.list({ includeSwap: true })).map((d) => d.name), ['swapdisk', 'fsdisk']);
    assert.equal((await catalog.get('fsdisk'))!.filesystemType, 'ext4');
    assert.equal((await catalog.get('swapdisk'))!.filesystemType, 'swap');
    assert.equal(await catalog.get('nope'), undefined);
    assert.equal((await catalog.byDevice({ major: SIMULATED_DISK_MAJOR, minor: 1 }))!.name, 'fsdisk');
    assert.equal(await catalog.byDevice({ major: SIMULATED_DISK_MAJOR, minor: 7 }), undefined);
  });

  it('skips and logs a disk file that cannot be read, and lists the others', async () => {
    const good = image('good.img', MiB);
    const logger = recordingLogger();
    const disks = await simulatedDisks(entries([path.join(tmp, 'gone.img'), good]), { log: logger.log });
    assert.deepEqual(disks.map((d) => d.name), ['good']);
    assert.equal(logger.warnings().length, 1);
  });

  it('lists a disk whose probes fail, without content details', async () => {
    const file = image('probe.img', MiB);
    const logger = recordingLogger();
    const disks = await simulatedDisks(entries([file]), { log: logger.log, blkid: async () => { throw new Error('blkid broke'); } });
    assert.equal(disks[0].name, 'probe');
    assert.equal(disks[0].partitionTableType, '');
    assert.equal(logger.warnings().length, 1);
  });

  it('describes a configured loop device from sysfs, as a physical disk', { skip: loopDevicesUnavailable() ?? false }, async () => {
    const loop = attachLoopDevice(image('loop.img', 8 * MiB));
    try {
      const [disk] = await simulatedDisks([{ path: loop.path, device: { major: loop.major, minor: loop.minor } }], { log: recordingLogger().log });
      assert.equal(disk.name, path.basename(loop.path));
      assert.equal(disk.path, loop.path);
      assert.deepEqual(disk.device, { major: loop.major, minor: loop.minor });
      assert.equal(disk.size, 8 * MiB);
      assert.equal(disk.isVirtual, false);
    } finally {
      loop.detach();
    }
  });
});
