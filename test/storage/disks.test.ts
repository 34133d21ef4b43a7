// Disk discovery against fake sysfs trees: layouts (nvme, 4Kn, dm, md, partitions), filters,
// exclusions through stacking, swap, malformed entries, blkid failures and the wire JSON.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { showDevice, type DeviceId } from '../../src/core/devices';
import { diskToJSON } from '../../src/api/json';
import { DiskCatalog } from '../../src/storage/catalog';
import { eligibleDisks, type Disk, type ListOptions } from '../../src/storage/disks';
import { fileSystemDevice } from '../../src/host/sysfs';
import { fakeBlkid, fakeSysfs, recordingLogger, type FakeDevice } from './helpers';
import type { BlkidValues } from '../../src/host/blkid';

let tmp: string;
let dest: string;
/** The real device of dest's filesystem: fake trees put a device with this number beneath it. */
let destDev: string;
let caseNo = 0;

before(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'coriolis-disks-'));
  dest = path.join(tmp, 'snapstores');
  fs.mkdirSync(dest);
  destDev = showDevice(fileSystemDevice(dest));
});

after(() => fs.rmSync(tmp, { recursive: true, force: true }));

interface Setup {
  devices: FakeDevice[];
  blkid?: Record<string, BlkidValues | Error>;
  destinations?: string[];
  swaps?: string[];
  isImage?: (device: DeviceId) => boolean;
}

function setup(options: Setup) {
  const root = path.join(tmp, `case${caseNo++}`);
  const sysRoot = fakeSysfs(root, options.devices);
  const devRoot = path.join(root, 'dev');
  const procRoot = path.join(root, 'proc');
  fs.mkdirSync(procRoot, { recursive: true });
  const swapLines = (options.swaps ?? []).map((name) => `${path.join(devRoot, name)}\tpartition\t1048572\t0\t-2`);
  fs.writeFileSync(path.join(procRoot, 'swaps'), ['Filename\tType\tSize\tUsed\tPriority', ...swapLines, ''].join('\n'));
  const blkid = fakeBlkid(Object.fromEntries(Object.entries(options.blkid ?? {}).map(([name, v]) => [path.join(devRoot, name), v])));
  const logger = recordingLogger();
  const catalog = new DiskCatalog({
    log: logger.log, destinations: options.destinations ?? [], sysRoot, devRoot, procRoot, blkid, isImage: options.isImage,
  });
  const names = async (list: ListOptions = {}): Promise<string[]> => (await catalog.list(list)).map((d) => d.name);
  return { catalog, blkid, logger, devRoot, names };
}

const disk = (name: string, dev: string, extra: Partial<FakeDevice> = {}): FakeDevice => ({ name, dev, size: 2048 * 1024, ...extra });

describe('disk discovery (fake sysfs)', () => {
  it('describes a GPT disk with its partitions, and maps it to the wire JSON', async () => {
    const { catalog, devRoot } = setup({
      devices: [disk('vda', '254:0', {
        size: 41943040,
        partitions: [
          { name: 'vda1', dev: '254:1', start: 2048, size: 2048 },
          { name: 'vda2', dev: '254:2', start: 4096, size: 41936896 },
        ],
      })],
      blkid: {
        vda: { PTTYPE: 'gpt', PTUUID: 'f1c4a6e0-5c8a-4d9a-9a0e-5b5a3c1d2e3f' },
        vda1: { PART_ENTRY_UUID: '11111111-0000-0000-0000-000000000001', PART_ENTRY_TYPE: '21686148-6449-6e6f-744e-656564454649' },
        vda2: { TYPE: 'ext4', UUID: '2bc1143a-0000-4000-8000-000000000002', LABEL: 'root', PART_ENTRY_UUID: '11111111-0000-0000-0000-000000000002', PART_ENTRY_TYPE: '0fc63daf-8483-4772-8e79-3d69d8477de4' },
      },
    });
    const [vda] = await catalog.list();
    assert.ok(vda);
    assert.deepEqual(diskToJSON(vda, 'vda'), {
      id: 'vda',
      path: path.join(devRoot, 'vda'),
      partition_table_type: 'gpt',
      partition_table_uuid: 'f1c4a6e0-5c8a-4d9a-9a0e-5b5a3c1d2e3f',
      name: 'vda',
      size: 41943040 * 512,
      logical_sector_size: 512,
      physical_sector_size: 512,
      partitions: [
        {
          name: 'vda1', path: path.join(devRoot, 'vda1'), sectors: 2048,
          partition_uuid: '11111111-0000-0000-0000-000000000001', partition_type: '21686148-6449-6e6f-744e-656564454649',
          start_sector: 2048, end_sector: 4095, alignment_offset: 0, device_major: 254, device_minor: 1,
        },
        {
          name: 'vda2', path: path.join(devRoot, 'vda2'), sectors: 41936896,
          filesystem_uuid: '2bc1143a-0000-4000-8000-000000000002', partition_uuid: '11111111-0000-0000-0000-000000000002',
          partition_type: '0fc63daf-8483-4772-8e79-3d69d8477de4', label: 'root', filesystem_type: 'ext4',
          start_sector: 4096, end_sector: 41940991, alignment_offset: 0, device_major: 254, device_minor: 2,
        },
      ],
      filesystem_type: '',
      alignment_offset: 0,
      device_major: 254,
      device_minor: 0, // kept: the Go agent dropped minor 0
      is_virtual: false,
    });
  });

  it('leaves out id when untracked, partitions and slaves when there are none, never numbers or sizes', async () => {
    const { catalog } = setup({ devices: [disk('sdb', '8:16')] });
    const json = diskToJSON((await catalog.get('sdb'))!);
    assert.deepEqual(Object.keys(json).sort(), [
      'alignment_offset', 'device_major', 'device_minor', 'filesystem_type', 'is_virtual', 'logical_sector_size', 'name',
      'path', 'physical_sector_size', 'size',
    ]);
    assert.equal(json.filesystem_type, '');
  });

  it('keeps sector counts in 512-byte units on a 4Kn nvme disk', async () => {
    const { catalog } = setup({
      devices: [disk('nvme0n1', '259:0', {
        size: 8 * 1024 * 1024, logical: 4096, physical: 4096,
        partitions: [{ name: 'nvme0n1p1', dev: '259:1', start: 2048, size: 8 * 1024 * 1024 - 4096 }],
      })],
    });
    const nvme = (await catalog.get('nvme0n1'))!;
    assert.equal(nvme.size, 4 * 1024 ** 3);
    assert.equal(nvme.logicalSectorSize, 4096);
    assert.equal(nvme.physicalSectorSize, 4096);
    assert.equal(nvme.partitions[0].startSector512, 2048);
    assert.equal(diskToJSON(nvme).partitions![0].end_sector, 8 * 1024 * 1024 - 2049);
  });

  it('orders partitions by number, not by name', async () => {
    const parts = [10, 2, 1].map((n) => ({ name: `sda${n}`, dev: `8:${n}`, start: n * 2048, size: 2048, number: n }));
    const { catalog } = setup({ devices: [disk('sda', '8:0', { partitions: parts })] });
    assert.deepEqual((await catalog.get('sda'))!.partitions.map((p) => p.name), ['sda1', 'sda2', 'sda10']);
  });

  it('names devices and partitions with a slash in their kernel name by their /dev path', async () => {
    const { catalog, devRoot } = setup({
      devices: [disk('cciss!c0d0', '104:0', { partitions: [{ name: 'cciss!c0d0p1', dev: '104:1', start: 2048, size: 2048 }] })],
    });
    const [cciss] = await catalog.list();
    assert.equal(cciss.name, 'cciss!c0d0');
    assert.equal(cciss.path, path.join(devRoot, 'cciss/c0d0'));
    assert.equal(cciss.partitions[0].path, path.join(devRoot, 'cciss/c0d0p1'));
  });

  it('hides virtual devices unless includeVirtual, and devices without a medium always', async () => {
    const { names, catalog, devRoot } = setup({
      devices: [
        disk('sda', '8:0', { partitions: [{ name: 'sda1', dev: '8:1', start: 2048, size: 4096 }] }),
        disk('loop0', '7:0', { virtual: true }),
        disk('loop1', '7:1', { virtual: true, size: 0 }),
        disk('dm-0', '253:0', { virtual: true, slaves: ['sda1'] }),
        disk('sdz', '8:240', { size: 0 }),
      ],
    });
    assert.deepEqual(await names(), ['sda']);
    assert.deepEqual(await names({ includeVirtual: true }), ['dm-0', 'loop0', 'sda']);
    const dm = (await catalog.get('dm-0'))!;
    assert.equal(dm.isVirtual, true);
    assert.deepEqual(dm.slaves, [path.join(devRoot, 'sda1')]);
    assert.deepEqual(diskToJSON(dm).device_slaves, [path.join(devRoot, 'sda1')]);
  });

  it('never lists removable, CD/DVD, floppy or snapshot image devices', async () => {
    const { names, blkid } = setup({
      devices: [
        disk('sda', '8:0'),
        disk('sdb', '8:16', { removable: '1' }),
        disk('sr0', '11:0', { scsiType: '5' }),
        disk('sdc', '8:32', { scsiType: '0' }),
        disk('fd0', '2:0'),
        disk('veeamimage0', '252:0', { virtual: true }),
        disk('nbd0', '43:0', { virtual: true }),
      ],
      isImage: (d) => d.major === 43 && d.minor === 0,
    });
    assert.deepEqual(await names({ includeVirtual: true, includeSwap: true }), ['sda', 'sdc']);
    assert.deepEqual(blkid.calls.map((c) => path.basename(c)).sort(), ['sda', 'sdc'], 'hidden devices are never probed');
  });

  it('excludes the disk of a destination on its second partition', async () => {
    const { names, catalog } = setup({
      devices: [
        disk('sda', '8:0'),
        disk('sdb', '8:16', { partitions: [{ name: 'sdb1', dev: '8:17', start: 2048, size: 2048 }, { name: 'sdb2', dev: destDev, start: 4096, size: 2048 }] }),
      ],
      destinations: [dest],
    });
    assert.deepEqual([...await catalog.excludedDevices()].sort(), ['sdb', 'sdb2']);
    assert.deepEqual(await names({ includeVirtual: true, includeSwap: true }), ['sda']);
    assert.equal(await catalog.get('sdb'), undefined);
    assert.equal(await catalog.byDevice({ major: 8, minor: 16 }), undefined);
  });

  it('excludes every disk beneath LVM on md on partitions', async () => {
    const { names, catalog } = setup({
      devices: [
        disk('sda', '8:0', { partitions: [{ name: 'sda1', dev: '8:1', start: 2048, size: 2048 }] }),
        disk('sdb', '8:16', { partitions: [{ name: 'sdb1', dev: '8:17', start: 2048, size: 2048 }] }),
        disk('sdc', '8:32', { partitions: [{ name: 'sdc1', dev: '8:33', start: 2048, size: 2048 }] }),
        disk('md0', '9:0', { virtual: true, slaves: ['sda1', 'sdb1'] }),
        disk('dm-0', destDev, { virtual: true, slaves: ['md0'] }),
        disk('dm-1', '253:1', { virtual: true, slaves: ['md0'] }),
        disk('dm-2', '253:2', { virtual: true, slaves: ['sdc1'] }),
      ],
      destinations: [dest],
    });
    assert.deepEqual([...await catalog.excludedDevices()].sort(), ['dm-0', 'md0', 'sda', 'sda1', 'sdb', 'sdb1']);
    assert.deepEqual(await names({ includeVirtual: true }), ['dm-1', 'dm-2', 'sdc']);
  });

  it('excludes nothing for a destination on a filesystem without a block device, and rejects a missing one', async () => {
    const { catalog } = setup({ devices: [disk('sda', '8:0')], destinations: ['/proc'] });
    assert.deepEqual([...await catalog.excludedDevices()], []);
    const missing = setup({ devices: [disk('sda', '8:0')], destinations: [path.join(tmp, 'nowhere')] });
    await assert.rejects(missing.catalog.list(), { code: 'ENOENT' });
  });

  it('hides disks that hold nothing but swap unless includeSwap', async () => {
    const swapPart = (disk: string, n: number): { name: string; dev: string; start: number; size: number } =>
      ({ name: `${disk}${n}`, dev: `8:${(disk.charCodeAt(2) - 97) * 16 + n}`, start: n * 2048, size: 2048 });
    const { names } = setup({
      devices: [
        disk('sda', '8:0', { partitions: [swapPart('sda', 1)] }),
        disk('sdb', '8:16'),
        disk('sdc', '8:32', { partitions: [swapPart('sdc', 1), swapPart('sdc', 2)] }),
        disk('sdd', '8:48', { partitions: [swapPart('sdd', 1), swapPart('sdd', 2)] }),
        disk('sde', '8:64', { partitions: [swapPart('sde', 1)] }),
        disk('sdf', '8:80', { partitions: [swapPart('sdf', 1)] }),
        disk('dm-0', '253:0', { virtual: true, slaves: ['sde1'] }),
        disk('dm-1', '253:1', { virtual: true, slaves: ['sdf1'] }),
        disk('zram0', '251:0', { virtual: true }),
      ],
      blkid: {
        sda: { PTTYPE: 'dos' }, sda1: { TYPE: 'ext4' }, // data: listed
        sdb: { TYPE: 'swap' }, // whole-disk swap
        sdc: { PTTYPE: 'gpt' }, sdc1: { TYPE: 'swap' }, sdc2: { TYPE: 'swap' }, // only swap partitions
        sdd: { PTTYPE: 'gpt' }, sdd1: { TYPE: 'swap' }, sdd2: { TYPE: 'xfs' }, // swap next to data: listed
        sde: { PTTYPE: 'gpt' }, sde1: { TYPE: 'crypto_LUKS' }, // encrypted swap: dm-0 is in /proc/swaps
        sdf: { PTTYPE: 'gpt' }, sdf1: { TYPE: 'crypto_LUKS' }, // an encrypted filesystem: listed
        zram0: { TYPE: 'swap' },
      },
      swaps: ['dm-0', 'zram0'],
    });
    assert.deepEqual(await names(), ['sda', 'sdd', 'sdf']);
    assert.deepEqual(await names({ includeSwap: true }), ['sda', 'sdb', 'sdc', 'sdd', 'sde', 'sdf']);
    assert.deepEqual(await names({ includeVirtual: true }), ['dm-1', 'sda', 'sdd', 'sdf']);
  });

  it('skips and logs a device with malformed or missing sysfs entries, and lists the others', async () => {
    const { names, logger } = setup({
      devices: [
        disk('sda', '8:0'),
        disk('sdb', '8:16', { size: 'garbage' }),
        disk('sdc', '8:32', { attrs: { 'queue/logical_block_size': null } }),
        disk('sdd', '8:48', { attrs: { dev: 'eight:48' } }),
        disk('sde', '8:64', { attrs: { removable: null } }),
        disk('sdf', '8:80', { partitions: [{ name: 'sdf1', dev: '8:81', start: 2048, size: 2048 }], attrs: { 'sdf1/start': '-1' } }),
        disk('sdg', '8:96', { size: '99999999999999999999999' }),
        disk('sdh', '8:112', { attrs: { 'alignment_offset': '' } }),
      ],
    });
    assert.deepEqual(await names(), ['sda']);
    const warned = logger.warnings().map((w) => w.split(':')[0]).sort();
    assert.deepEqual(warned, ['sdb', 'sdc', 'sdd', 'sde', 'sdf', 'sdg', 'sdh']);
  });

  it('lists a device whose blkid probe fails, with what sysfs knows', async () => {
    const { catalog, logger } = setup({
      devices: [
        disk('sda', '8:0', { partitions: [{ name: 'sda1', dev: '8:1', start: 2048, size: 2048 }] }),
        disk('sdb', '8:16', { partitions: [{ name: 'sdb1', dev: '8:17', start: 2048, size: 2048 }] }),
      ],
      blkid: {
        sda: new Error('blkid -p: exit status 8: ambivalent result'), sda1: { TYPE: 'ext4' },
        sdb: { PTTYPE: 'dos', PTUUID: '73ac85a2' }, sdb1: new Error('timed out'),
      },
    });
    const [sda, sdb] = await catalog.list();
    assert.equal(sda.partitionTableType, '');
    assert.equal(sda.partitions[0].filesystemType, 'ext4');
    assert.equal(sdb.partitionTableUuid, '73ac85a2');
    assert.equal(sdb.partitions[0].filesystemType, '');
    assert.equal(sdb.partitions[0].sectors512, 2048);
    assert.equal(logger.warnings().length, 2);
  });

  it('looks disks up by tracking id and by major:minor', async () => {
    const { catalog } = setup({
      devices: [
        disk('sda', '8:0', { partitions: [{ name: 'sda1', dev: '8:1', start: 2048, size: 2048 }] }),
        disk('loop0', '7:0', { virtual: true }),
        disk('sdb', '8:16'),
      ],
      blkid: { sdb: { TYPE: 'swap' } },
    });
    assert.equal((await catalog.get('sda'))!.device.minor, 0);
    assert.equal((await catalog.get('loop0'))!.isVirtual, true, 'get includes virtual disks');
    assert.equal((await catalog.get('sdb'))!.filesystemType, 'swap', 'get includes swap disks');
    for (const id of ['sda1', 'nope', '..', '../block/sda', '']) assert.equal(await catalog.get(id), undefined, id);
    assert.equal((await catalog.byDevice({ major: 8, minor: 0 }))!.name, 'sda');
    assert.equal((await catalog.byDevice({ major: 7, minor: 0 }))!.name, 'loop0');
    assert.equal(await catalog.byDevice({ major: 8, minor: 1 }), undefined, 'a partition is not a disk');
    assert.equal(await catalog.byDevice({ major: 8, minor: 99 }), undefined);
  });

  it('eligibleDisks is the default listing', async () => {
    const { catalog } = setup({
      devices: [disk('sda', '8:0'), disk('sdb', '8:16'), disk('loop0', '7:0', { virtual: true })],
      blkid: { sdb: { TYPE: 'swap' } },
    });
    assert.deepEqual((await eligibleDisks(catalog)).map((d: Disk) => d.name), ['sda']);
  });
});
