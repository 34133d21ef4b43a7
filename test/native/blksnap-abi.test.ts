// Golden-byte tests of the blksnap v1 ioctl ABI (docs/blksnap.md): request numbers, struct
// sizes and every argument layout the addon hands the kernel, against numbers computed from
// the module's own header (natural alignment, not packed). The encoder is the one the real
// calls use; pointer fields hold blksnapPointerPlaceholder | <index of the block they point to>.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { binding } from '../../src/native/binding';
import { BlksnapEventWaiter, toSectorRanges } from '../../src/native/blksnap';

interface Encoded {
  request: number;
  blocks: Buffer[];
  pointers: { block: number; offset: number; target: number }[];
}

const encode = (name: string, args: object = {}): Encoded => binding.blksnapEncode(name, args);
const decode = (name: string, blocks: Buffer[], returnValue?: number): unknown => binding.blksnapDecode(name, blocks, returnValue);
const PTR: bigint = binding.blksnapPointerPlaceholder;

const u16 = (v: number) => Buffer.from(new Uint16Array([v]).buffer);
const u32 = (v: number) => Buffer.from(new Uint32Array([v]).buffer);
const i32 = (v: number) => Buffer.from(new Int32Array([v]).buffer);
const u64 = (v: bigint) => Buffer.from(new BigUint64Array([v]).buffer);
const i64 = (v: bigint) => Buffer.from(new BigInt64Array([v]).buffer);
const ptr = (target: number) => u64(PTR | BigInt(target));
function layout(size: number, fields: [offset: number, bytes: Buffer][]): Buffer {
  const out = Buffer.alloc(size);
  for (const [offset, bytes] of fields) bytes.copy(out, offset);
  return out;
}
const devId = (major: number, minor: number) => Buffer.concat([u32(major), u32(minor)]);
const ID = Buffer.from('00112233445566778899aabbccddeeff', 'hex');
const GEN = Buffer.from('34316aa92a864865bae38b044a8e224a', 'hex');

describe('blksnap request numbers', () => {
  const table: Record<string, number> = {
    IOCTL_BLK_SNAP_VERSION: 0x40085600,
    IOCTL_BLK_SNAP_TRACKER_REMOVE: 0x40085601,
    IOCTL_BLK_SNAP_TRACKER_COLLECT: 0x40105602,
    IOCTL_BLK_SNAP_TRACKER_READ_CBT_MAP: 0x80185603,
    IOCTL_BLK_SNAP_SNAPSHOT_CREATE: 0x40205605,
    IOCTL_BLK_SNAP_SNAPSHOT_DESTROY: 0x80105606,
    IOCTL_BLK_SNAP_SNAPSHOT_APPEND_STORAGE: 0x40285607,
    IOCTL_BLK_SNAP_SNAPSHOT_TAKE: 0x80105608,
    IOCTL_BLK_SNAP_SNAPSHOT_COLLECT: 0x40105609,
    IOCTL_BLK_SNAP_SNAPSHOT_COLLECT_IMAGES: 0x4020560a,
    IOCTL_BLK_SNAP_SNAPSHOT_WAIT_EVENT: 0x5000560b,
    IOCTL_BLK_SNAP_MOD: 0x40285620,
  };

  it('exports exactly the table values, each with type V and its argument size', () => {
    assert.deepEqual(binding.blksnapRequests, table);
    for (const [name, request] of Object.entries(table)) {
      assert.equal((request >>> 8) & 0xff, 0x56, name);
      assert.equal((request >>> 16) & 0x3fff, binding.blksnapSizes[name], name);
    }
  });

  it('never uses number 12, past the end of the module\'s table', () => {
    assert.ok(Object.values(table).every((request) => (request & 0xff) !== 12));
  });

  it('the natural-alignment sizes of the module header', () => {
    assert.deepEqual(binding.blksnapSizes, {
      IOCTL_BLK_SNAP_VERSION: 8, IOCTL_BLK_SNAP_TRACKER_REMOVE: 8, IOCTL_BLK_SNAP_TRACKER_COLLECT: 16,
      IOCTL_BLK_SNAP_TRACKER_READ_CBT_MAP: 24, IOCTL_BLK_SNAP_SNAPSHOT_CREATE: 32, IOCTL_BLK_SNAP_SNAPSHOT_DESTROY: 16,
      IOCTL_BLK_SNAP_SNAPSHOT_APPEND_STORAGE: 40, IOCTL_BLK_SNAP_SNAPSHOT_TAKE: 16, IOCTL_BLK_SNAP_SNAPSHOT_COLLECT: 16,
      IOCTL_BLK_SNAP_SNAPSHOT_COLLECT_IMAGES: 32, IOCTL_BLK_SNAP_SNAPSHOT_WAIT_EVENT: 4096, IOCTL_BLK_SNAP_MOD: 40,
      DevId: 8, SectorRange: 16, CbtInfo: 48, ImageInfo: 16, LowFreeSpaceData: 8, CorruptedData: 12,
    });
  });
});

describe('blksnap argument layouts', () => {
  it('VERSION: four u16; MOD: u64 flags then a 32-byte name', () => {
    assert.deepEqual(encode('IOCTL_BLK_SNAP_VERSION').blocks, [Buffer.alloc(8)]);
    assert.deepEqual(decode('IOCTL_BLK_SNAP_VERSION', [Buffer.concat([u16(1), u16(0), u16(0), u16(0)])]),
      { major: 1, minor: 0, revision: 0, build: 0 });
    const mod = layout(40, [[0, u64(2n)], [8, Buffer.from('standalone')]]);
    assert.deepEqual(decode('IOCTL_BLK_SNAP_MOD', [mod]), { compatibilityFlags: 2n, name: 'standalone' });
  });

  it('TRACKER_REMOVE: the device as two u32', () => {
    assert.deepEqual(encode('IOCTL_BLK_SNAP_TRACKER_REMOVE', { device: { major: 254, minor: 16 } }).blocks, [devId(254, 16)]);
  });

  it('TRACKER_COLLECT: the count query has a null array; records are 48 bytes with padding at 12 and 45', () => {
    const probe = encode('IOCTL_BLK_SNAP_TRACKER_COLLECT');
    assert.deepEqual(probe.blocks, [Buffer.alloc(16)]);
    assert.deepEqual(probe.pointers, []);
    const fetch = encode('IOCTL_BLK_SNAP_TRACKER_COLLECT', { capacity: 2 });
    assert.deepEqual(fetch.blocks, [layout(16, [[0, u32(2)], [8, ptr(1)]]), Buffer.alloc(96)]);
    const record = layout(48, [[0, devId(254, 0)], [8, u32(65536)], [16, u64(268435456n)], [24, u32(4096)], [28, GEN], [44, Buffer.from([7])]]);
    assert.deepEqual(decode('IOCTL_BLK_SNAP_TRACKER_COLLECT', [layout(16, [[0, u32(1)]]), record]), [
      { device: { major: 254, minor: 0 }, blockSize: 65536, capacityBytes: 268435456n, blockCount: 4096, generationId: GEN, snapNumber: 7 },
    ]);
  });

  it('TRACKER_READ_CBT_MAP: device, offset, length, buffer pointer; the return value is the bytes copied', () => {
    const e = encode('IOCTL_BLK_SNAP_TRACKER_READ_CBT_MAP', { device: { major: 254, minor: 0 }, offset: 4096, length: 8 });
    assert.deepEqual(e.blocks, [layout(24, [[0, devId(254, 0)], [8, u32(4096)], [12, u32(8)], [16, ptr(1)]]), Buffer.alloc(8)]);
    assert.deepEqual(decode('IOCTL_BLK_SNAP_TRACKER_READ_CBT_MAP', [e.blocks[0], Buffer.from([1, 2, 3, 4, 5, 6, 7, 8])], 3), Buffer.from([1, 2, 3]));
  });

  it('SNAPSHOT_CREATE: count, device array pointer at 8, the id comes back at 16', () => {
    const e = encode('IOCTL_BLK_SNAP_SNAPSHOT_CREATE', { devices: [{ major: 254, minor: 0 }, { major: 254, minor: 16 }] });
    assert.deepEqual(e.blocks, [layout(32, [[0, u32(2)], [8, ptr(1)]]), Buffer.concat([devId(254, 0), devId(254, 16)])]);
    assert.deepEqual(decode('IOCTL_BLK_SNAP_SNAPSHOT_CREATE', [layout(32, [[16, ID]])]), ID);
  });

  for (const name of ['IOCTL_BLK_SNAP_SNAPSHOT_DESTROY', 'IOCTL_BLK_SNAP_SNAPSHOT_TAKE']) {
    it(`${name}: the 16-byte id alone`, () => {
      assert.deepEqual(encode(name, { id: ID }).blocks, [ID]);
    });
  }

  it('SNAPSHOT_APPEND_STORAGE: id, device at 16, count at 24, sector ranges pointer at 32', () => {
    const e = encode('IOCTL_BLK_SNAP_SNAPSHOT_APPEND_STORAGE', {
      id: ID, device: { major: 254, minor: 32 }, ranges: toSectorRanges([{ offset: 1024 * 1024, length: 4096 }]),
    });
    assert.deepEqual(e.blocks, [layout(40, [[0, ID], [16, devId(254, 32)], [24, u32(1)], [32, ptr(1)]]), Buffer.concat([u64(2048n), u64(8n)])]);
    const rearm = encode('IOCTL_BLK_SNAP_SNAPSHOT_APPEND_STORAGE', { id: ID, device: { major: 254, minor: 32 }, ranges: [] });
    assert.deepEqual(rearm.blocks[0], layout(40, [[0, ID], [16, devId(254, 32)], [32, ptr(1)]]), 'no ranges: count 0');
  });

  it('SNAPSHOT_COLLECT and COLLECT_IMAGES: null arrays count, then 16-byte ids and 16-byte image records', () => {
    assert.deepEqual(encode('IOCTL_BLK_SNAP_SNAPSHOT_COLLECT').blocks, [Buffer.alloc(16)]);
    assert.deepEqual(decode('IOCTL_BLK_SNAP_SNAPSHOT_COLLECT', [layout(16, [[0, u32(1)]]), ID]), [ID]);
    const images = encode('IOCTL_BLK_SNAP_SNAPSHOT_COLLECT_IMAGES', { id: ID, capacity: 1 });
    assert.deepEqual(images.blocks, [layout(32, [[0, ID], [16, u32(1)], [24, ptr(1)]]), Buffer.alloc(16)]);
    assert.deepEqual(decode('IOCTL_BLK_SNAP_SNAPSHOT_COLLECT_IMAGES', [images.blocks[0], Buffer.concat([devId(254, 0), devId(253, 0)])]),
      [{ original: { major: 254, minor: 0 }, image: { major: 253, minor: 0 } }]);
  });

  it('SNAPSHOT_WAIT_EVENT: one page; timeout at 16, code at 20, time at 24, data at 32', () => {
    const e = encode('IOCTL_BLK_SNAP_SNAPSHOT_WAIT_EVENT', { id: ID, timeoutMs: 250 });
    assert.deepEqual(e.blocks, [layout(4096, [[0, ID], [16, u32(250)]])]);
    const low = layout(4096, [[0, ID], [20, u32(0)], [24, i64(10496222630n)], [32, u64(2048n)]]);
    assert.deepEqual(decode('IOCTL_BLK_SNAP_SNAPSHOT_WAIT_EVENT', [low]), { timeLabel: 10496222630n, type: 'low-free-space', requestedSectors: 2048n });
    const corrupted = layout(4096, [[0, ID], [20, u32(1)], [24, i64(5n)], [32, devId(254, 0)], [40, i32(-28)]]);
    assert.deepEqual(decode('IOCTL_BLK_SNAP_SNAPSHOT_WAIT_EVENT', [corrupted]),
      { timeLabel: 5n, type: 'corrupted', device: { major: 254, minor: 0 }, errno: 28, code: 'ENOSPC' });
    // What the running module sent on an overflow: the errno positive, not as its header says.
    const sent = layout(4096, [[0, ID], [20, u32(1)], [24, i64(5n)], [32, devId(254, 0)], [40, i32(28)]]);
    assert.deepEqual(decode('IOCTL_BLK_SNAP_SNAPSHOT_WAIT_EVENT', [sent]),
      { timeLabel: 5n, type: 'corrupted', device: { major: 254, minor: 0 }, errno: 28, code: 'ENOSPC' });
  });
});

describe('blksnap bad input is refused before the kernel sees it', () => {
  it('ids, devices and ranges', () => {
    assert.throws(() => encode('IOCTL_BLK_SNAP_SNAPSHOT_TAKE', { id: Buffer.alloc(15) }), TypeError);
    assert.throws(() => encode('IOCTL_BLK_SNAP_TRACKER_REMOVE', { device: { major: 4096, minor: 0 } }), RangeError);
    assert.throws(() => encode('IOCTL_BLK_SNAP_TRACKER_REMOVE', { device: { major: 8, minor: 1 << 20 } }), RangeError);
    assert.throws(() => encode('IOCTL_BLK_SNAP_SNAPSHOT_APPEND_STORAGE', { id: ID, device: { major: 8, minor: 0 }, ranges: [{ sectorOffset: 0n, sectorCount: 0n }] }), RangeError);
    assert.throws(() => encode('IOCTL_BLK_SNAP_SNAPSHOT_APPEND_STORAGE', { id: ID, device: { major: 8, minor: 0 }, ranges: [{ sectorOffset: 2n ** 64n - 1n, sectorCount: 2n }] }), RangeError);
    assert.throws(() => encode('IOCTL_BLK_SNAP_VERSION_NOPE'), TypeError);
    assert.throws(() => toSectorRanges([{ offset: 100, length: 512 }]), RangeError);
    assert.throws(() => toSectorRanges([{ offset: 0, length: 0 }]), RangeError);
  });

  it('an event waiter on a missing device reports the error once and stops', { timeout: 10_000 }, async () => {
    const errors: Error[] = [];
    const waiter = new BlksnapEventWaiter('/nonexistent/veeamblksnap', ID, 50, { major: 8, minor: 0 }, (err) => { if (err) errors.push(err); });
    await waiter.stop();
    assert.equal(errors.length, 1);
    assert.equal((errors[0] as NodeJS.ErrnoException).code, 'ENOENT');
  });

  it('a waiter whose wait fails reports it once, ends by itself, and stop() still resolves', { timeout: 10_000 }, async () => {
    // /dev/null answers the ioctl with ENOTTY.
    const errors: string[] = [];
    let waiter!: BlksnapEventWaiter;
    await new Promise<void>((resolve) => {
      waiter = new BlksnapEventWaiter('/dev/null', ID, 50, { major: 8, minor: 0 }, (err) => { errors.push((err as NodeJS.ErrnoException).code!); resolve(); });
    });
    await waiter.stop();
    await waiter.stop();
    assert.deepEqual(errors, ['ENOTTY']);
  });
});
