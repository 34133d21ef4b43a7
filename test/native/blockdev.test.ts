import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';

import { allocateFile, fileExtents, fsStats, punchHole, queryBlockDevice, type FileExtents } from '../../src/native/blockdev';
import { DirectReader } from '../../src/native/reader';
import {
  attachLoopDevice,
  dfBytes,
  fileSystemDeviceNumber,
  findCommand,
  fragmentFreeSpace,
  loopDevicesUnavailable,
  scratchFilesystem,
  type FilesystemType,
  type LoopDevice,
  type ScratchFilesystem,
} from './helpers/loop';

const MiB = 1024 * 1024;
const loopUnavailable = loopDevicesUnavailable();

let tmpDir: string;

before(() => {
  tmpDir = fs.mkdtempSync(path.join(os.tmpdir(), 'coriolis-blockdev-'));
});

after(() => {
  fs.rmSync(tmpDir, { recursive: true, force: true });
});

function skipReason(type: FilesystemType): string | undefined {
  if (loopUnavailable !== undefined) return loopUnavailable;
  if (findCommand(`mkfs.${type}`) === undefined) return `mkfs.${type} is not installed`;
  return undefined;
}

/** Writes `content` over the start of an existing file, durably, without truncating it. */
function overwrite(filePath: string, content: Buffer): void {
  const fd = fs.openSync(filePath, 'r+');
  try {
    fs.writeSync(fd, content, 0, content.length, 0);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/** Reads the ranges back from the device beneath the file, concatenated, trimmed to `length`. */
async function readRanges(devicePath: string, extents: FileExtents, length: number): Promise<Buffer> {
  const reader = await DirectReader.open(devicePath);
  try {
    const parts = await Promise.all(extents.ranges.map((range) => reader.read(range.offset, range.length)));
    return Buffer.concat(parts).subarray(0, length);
  } finally {
    await reader.close();
  }
}

describe('queryBlockDevice', () => {
  it('describes a regular file by its filesystem', () => {
    const file = path.join(tmpDir, 'query.bin');
    fs.writeFileSync(file, Buffer.alloc(12345));
    const info = queryBlockDevice(file);
    const stat = fs.statSync(file);
    assert.equal(info.kind, 'file');
    assert.equal(info.size, 12345);
    assert.equal(info.physicalBlockSize, stat.blksize);
    assert.ok([512, 1024, 2048, 4096].includes(info.logicalBlockSize), `logical ${info.logicalBlockSize}`);
    assert.deepEqual({ major: info.major, minor: info.minor }, fileSystemDeviceNumber(file));
  });

  describe('on loop devices', { skip: loopUnavailable }, () => {
    let backing: string;
    const devices: LoopDevice[] = [];
    before(() => {
      backing = path.join(tmpDir, 'loop-backing.bin');
      fs.writeFileSync(backing, '');
      fs.truncateSync(backing, 16 * MiB);
    });
    after(() => devices.forEach((device) => device.detach()));

    for (const sectorSize of [512, 4096]) {
      it(`reports size, ${sectorSize}-byte sectors and the device's own major:minor`, () => {
        const device = attachLoopDevice(backing, { sectorSize });
        devices.push(device);
        const info = queryBlockDevice(device.path);
        assert.deepEqual(info, {
          kind: 'block',
          size: 16 * MiB,
          logicalBlockSize: sectorSize,
          physicalBlockSize: sectorSize,
          major: device.major,
          minor: device.minor,
        });
      });
    }
  });

  it('fails with the errno of what is wrong with the path', () => {
    assert.throws(() => queryBlockDevice(path.join(tmpDir, 'missing')), { code: 'ENOENT', syscall: 'open' });
    assert.throws(() => queryBlockDevice(tmpDir), { code: 'EISDIR' });
    assert.throws(() => queryBlockDevice('/dev/null'), { code: 'ENOTBLK' });
    assert.throws(() => queryBlockDevice(''), TypeError);
  });
});

describe('allocateFile', () => {
  it('creates a new, fully allocated file of the exact size, mode 0600', async () => {
    const file = path.join(tmpDir, 'allocated.bin');
    const size = 10 * MiB + 123;
    await allocateFile(file, size);
    const stat = fs.statSync(file);
    assert.equal(stat.size, size);
    assert.ok(stat.blocks * 512 >= size, `allocated ${stat.blocks * 512} bytes of ${size}: sparse`);
    assert.equal(stat.mode & 0o777, 0o600);
  });

  it('refuses to overwrite an existing file and leaves it untouched', async () => {
    const file = path.join(tmpDir, 'existing.bin');
    fs.writeFileSync(file, 'keep me');
    await assert.rejects(allocateFile(file, MiB), { code: 'EEXIST', syscall: 'open' });
    assert.equal(fs.readFileSync(file, 'utf8'), 'keep me');
  });

  it('rejects bad sizes and paths before touching the filesystem', async () => {
    const file = path.join(tmpDir, 'never.bin');
    await assert.rejects(allocateFile(file, 0), RangeError);
    await assert.rejects(allocateFile(file, -1), RangeError);
    await assert.rejects(allocateFile(file, 1.5), TypeError);
    await assert.rejects(allocateFile(file, 2 ** 53), RangeError);
    await assert.rejects(allocateFile('', 1), TypeError);
    await assert.rejects(allocateFile(path.join(tmpDir, 'no-such-dir', 'x'), 1), { code: 'ENOENT' });
    assert.equal(fs.existsSync(file), false);
  });

  describe('on a small ext2 filesystem', { skip: skipReason('ext2') }, () => {
    let scratch: ScratchFilesystem | undefined;
    before(() => {
      scratch = scratchFilesystem('ext2', 64 * MiB);
    });
    after(() => scratch?.cleanup());

    it('fails with EOPNOTSUPP where fallocate is unsupported, and removes the file', async () => {
      const file = path.join(scratch!.mount.dir, 'no-fallocate.bin');
      await assert.rejects(allocateFile(file, MiB), {
        code: 'EOPNOTSUPP',
        syscall: 'fallocate',
        message: /cannot preallocate.*sparse file is refused/,
      });
      assert.equal(fs.existsSync(file), false);
    });
  });

  describe('on a small ext4 filesystem', { skip: skipReason('ext4') }, () => {
    let scratch: ScratchFilesystem | undefined;
    before(() => {
      scratch = scratchFilesystem('ext4', 64 * MiB);
    });
    after(() => scratch?.cleanup());

    it('fails with ENOSPC when the space is not there, and removes the file', async () => {
      const file = path.join(scratch!.mount.dir, 'too-big.bin');
      await assert.rejects(allocateFile(file, 128 * MiB), { code: 'ENOSPC', syscall: 'fallocate' });
      assert.equal(fs.existsSync(file), false);
    });
  });
});

describe('fileExtents', () => {
  for (const type of ['ext4', 'xfs'] as const) {
    describe(`on ${type} over a loop device`, { skip: skipReason(type) }, () => {
      let scratch: ScratchFilesystem | undefined;
      before(() => {
        scratch = scratchFilesystem(type, 512 * MiB);
      });
      after(() => scratch?.cleanup());

      it('gives device byte ranges that hold the file\'s bytes', async () => {
        const file = path.join(scratch!.mount.dir, 'store.bin');
        const size = 40 * MiB + 777;
        await allocateFile(file, size);
        const unwritten = await fileExtents(file);
        assert.ok(unwritten.ranges.length > 0, 'preallocated (unwritten) extents are listed');

        const content = randomBytes(size);
        overwrite(file, content);
        const extents = await fileExtents(file);
        const device = scratch!.device;
        assert.deepEqual(extents.device, { major: device.major, minor: device.minor });
        const mapped = extents.ranges.reduce((sum, range) => sum + range.length, 0);
        assert.ok(mapped >= size && mapped < size + 64 * 1024, `ranges cover ${mapped} bytes for a file of ${size}`);
        const fromDevice = await readRanges(device.path, extents, size);
        assert.ok(fromDevice.equals(content), 'the device ranges hold the file content');
      });
    });
  }

  describe('on ext4 with scattered free space', { skip: skipReason('ext4') }, () => {
    let scratch: ScratchFilesystem | undefined;
    before(() => {
      scratch = scratchFilesystem('ext4', 64 * MiB, { extraArgs: ['-m', '0', '-O', 'inline_data'] });
    });
    after(() => scratch?.cleanup());

    it('follows a file through more extents than one FIEMAP call returns', async () => {
      fragmentFreeSpace(scratch!.mount.dir);
      const file = path.join(scratch!.mount.dir, 'fragmented.bin');
      const size = 4 * MiB;
      await allocateFile(file, size);
      const content = randomBytes(size);
      overwrite(file, content);
      const extents = await fileExtents(file);
      assert.ok(extents.ranges.length > 512, `only ${extents.ranges.length} ranges`);
      assert.equal(extents.ranges.reduce((sum, range) => sum + range.length, 0), size);
      assert.ok((await readRanges(scratch!.device.path, extents, size)).equals(content));
    });

    it('refuses extents stored inline in the inode', async () => {
      const file = path.join(scratch!.mount.dir, 'tiny.txt');
      fs.writeFileSync(file, 'tiny');
      await assert.rejects(fileExtents(file), { code: 'EOPNOTSUPP', message: /DATA_INLINE/ });
    });
  });

  describe('on btrfs', { skip: skipReason('btrfs') }, () => {
    let scratch: ScratchFilesystem | undefined;
    before(() => {
      scratch = scratchFilesystem('btrfs', 512 * MiB);
    });
    after(() => scratch?.cleanup());

    it('refuses a filesystem whose extent addresses are not device offsets', async () => {
      const file = path.join(scratch!.mount.dir, 'store.bin');
      await allocateFile(file, MiB);
      await assert.rejects(fileExtents(file), { code: 'ENOTBLK' });
    });
  });

  it('lists no ranges for an empty file', async () => {
    const file = path.join(tmpDir, 'empty.bin');
    fs.writeFileSync(file, '');
    assert.deepEqual((await fileExtents(file)).ranges, []);
  });

  it('fails on missing paths and directories', async () => {
    await assert.rejects(fileExtents(path.join(tmpDir, 'missing')), { code: 'ENOENT' });
    await assert.rejects(fileExtents(tmpDir), { code: 'EISDIR' });
  });
});

describe('fsStats', () => {
  it('matches df on the root filesystem', () => {
    const stats = fsStats('/');
    const df = dfBytes('/');
    assert.equal(stats.totalBytes, df.size);
    assert.ok(stats.availableBytes <= stats.freeBytes && stats.freeBytes <= stats.totalBytes);
  });

  describe('on a quiet ext4 filesystem', { skip: skipReason('ext4') }, () => {
    let scratch: ScratchFilesystem | undefined;
    before(() => {
      scratch = scratchFilesystem('ext4', 64 * MiB);
    });
    after(() => scratch?.cleanup());

    it('matches df exactly, and sees an allocation', async () => {
      const dir = scratch!.mount.dir;
      const before = fsStats(dir);
      const df = dfBytes(dir);
      assert.deepEqual(before, { totalBytes: df.size, freeBytes: df.size - df.used, availableBytes: df.avail });
      await allocateFile(path.join(dir, 'eight.bin'), 8 * MiB);
      const afterAllocation = fsStats(dir);
      assert.ok(before.freeBytes - afterAllocation.freeBytes >= 8 * MiB);
    });
  });

  it('fails on a missing path', () => {
    assert.throws(() => fsStats(path.join(tmpDir, 'missing')), { code: 'ENOENT', syscall: 'statvfs' });
  });
});

describe('punchHole', () => {
  it('turns a range into a hole that reads as zeros, keeping the size; refuses what is not a file', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'coriolis-punch-'));
    try {
      const file = path.join(dir, 'data.bin');
      const data = randomBytes(8 * 1024 * 1024);
      const fd = fs.openSync(file, 'w');
      fs.writeSync(fd, data);
      fs.fsyncSync(fd);
      fs.closeSync(fd);
      const before = fs.statSync(file).blocks * 512;
      await punchHole(file, 1024 * 1024, 4 * 1024 * 1024);
      const after = fs.statSync(file);
      assert.equal(after.size, data.length);
      assert.ok(after.blocks * 512 <= before - 4 * 1024 * 1024, `${after.blocks * 512} bytes allocated, ${before} before`);
      const expected = Buffer.from(data);
      expected.fill(0, 1024 * 1024, 5 * 1024 * 1024);
      assert.ok(fs.readFileSync(file).equals(expected));
      await punchHole(file, 0, 0);
      await assert.rejects(punchHole(path.join(dir, 'missing'), 0, 4096), { code: 'ENOENT' });
      await assert.rejects(punchHole(dir, 0, 4096), { code: 'EISDIR' });
      await assert.rejects(punchHole(file, -1, 4096), RangeError);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
