// Golden-byte tests of the veeamsnap ioctl ABI: request numbers, packed sizes and every
// argument layout the addon passes to the kernel, against numbers typed from the module's
// ioctl header (github.com/veeam/veeamsnap: request table and argument layouts) and checked on
// a running module. The addon's encoder is the one the real calls use; pointer fields hold
// veeamsnapPointerPlaceholder | <index of the block they point to>.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { binding, isSystemError } from '../../src/native/binding';
import {
  KERNEL_ENTRY_BASE_SYMBOL,
  VeeamsnapControl,
  findKernelSymbols,
  kernelEntriesFromKallsyms,
  toWireRanges,
} from '../../src/native/veeamsnap';

interface Encoded {
  request?: number;
  blocks: Buffer[];
  pointers: { block: number; offset: number; target: number }[];
}

const encode = (name: string, args: object = {}): Encoded => binding.veeamsnapEncode(name, args);
const decode = (name: string, blocks: Buffer[], returnValue?: number): unknown =>
  binding.veeamsnapDecode(name, blocks, returnValue);
const PTR: bigint = binding.veeamsnapPointerPlaceholder;

// Little-endian field writers: golden buffers are assembled field by field at spec offsets.
const u16 = (v: number) => Buffer.from(new Uint16Array([v]).buffer);
const u32 = (v: number) => Buffer.from(new Uint32Array([v]).buffer);
const i32 = (v: number) => Buffer.from(new Int32Array([v]).buffer);
const u64 = (v: bigint) => Buffer.from(new BigUint64Array([v]).buffer);
const ptr = (target: number) => u64(PTR | BigInt(target));
function layout(size: number, fields: [offset: number, bytes: Buffer][]): Buffer {
  const out = Buffer.alloc(size);
  for (const [offset, bytes] of fields) bytes.copy(out, offset);
  return out;
}
const devId = (major: number, minor: number) => Buffer.concat([i32(major), i32(minor)]);
const byteRange = (left: bigint, right: bigint) => Buffer.concat([u64(left), u64(right)]);

const ID = Buffer.from('00112233445566778899aabbccddeeff', 'hex');
const KERNEL_SNAPSHOT_ID = 0xffff88800b086cc0n; // the shape Appendix C saw: a kernel heap address

describe('veeamsnap request numbers (spec §2.0.1)', () => {
  const table: Record<string, number> = {
    IOCTL_COMPATIBILITY_FLAGS: 0x40085600,
    IOCTL_GETVERSION: 0x40085601,
    IOCTL_TRACKING_ADD: 0x40085602,
    IOCTL_TRACKING_REMOVE: 0x40085603,
    IOCTL_TRACKING_COLLECT: 0x400c5604,
    IOCTL_TRACKING_BLOCK_SIZE: 0x40045605,
    IOCTL_TRACKING_READ_CBT_BITMAP: 0x80185606,
    IOCTL_SET_KERNEL_ENTRIES: 0x400c5608,
    IOCTL_GET_UNRESOLVED_KERNEL_ENTRIES: 0x90005609,
    IOCTL_SNAPSHOT_CREATE: 0x40145610,
    IOCTL_SNAPSHOT_DESTROY: 0x80085611,
    IOCTL_SNAPSHOT_ERRNO: 0x400c5612,
    IOCTL_SNAPSTORE_CREATE: 0x80245628,
    IOCTL_SNAPSTORE_FILE: 0x801c5629,
    IOCTL_SNAPSTORE_MEMORY: 0x8018562a,
    IOCTL_SNAPSTORE_CLEANUP: 0x4018562b,
    IOCTL_SNAPSTORE_FILE_MULTIDEV: 0x8024562c,
    IOCTL_COLLECT_SNAPSHOT_IMAGES: 0x400c5630,
  };

  it('exports exactly the table values', () => {
    assert.deepEqual(binding.veeamsnapRequests, table);
  });

  it('each number carries type V and the packed argument size', () => {
    for (const [name, request] of Object.entries(table)) {
      assert.equal((request >>> 8) & 0xff, 0x56, name);
      assert.equal((request >>> 16) & 0x3fff, binding.veeamsnapSizes[name], name);
    }
  });

  it('the encoder reports the same number it is called with', () => {
    for (const [name, request] of Object.entries(table)) {
      if (name === 'IOCTL_SET_KERNEL_ENTRIES') continue; // needs entries; checked below
      const args = { device: { major: 8, minor: 0 }, devices: [], id: ID, storage: 'memory', ranges: [], size: 0, snapshotId: 1n, offset: 0, length: 0 };
      assert.equal(encode(name, args).request, request, name);
    }
  });
});

describe('veeamsnap packed sizes (spec §2, §4, Appendix C)', () => {
  it('matches every struct size', () => {
    assert.deepEqual(binding.veeamsnapSizes, {
      IOCTL_COMPATIBILITY_FLAGS: 8,
      IOCTL_GETVERSION: 8,
      IOCTL_TRACKING_ADD: 8,
      IOCTL_TRACKING_REMOVE: 8,
      IOCTL_TRACKING_COLLECT: 12,
      IOCTL_TRACKING_BLOCK_SIZE: 4,
      IOCTL_TRACKING_READ_CBT_BITMAP: 24,
      IOCTL_SET_KERNEL_ENTRIES: 12,
      IOCTL_GET_UNRESOLVED_KERNEL_ENTRIES: 4096,
      IOCTL_SNAPSHOT_CREATE: 20,
      IOCTL_SNAPSHOT_DESTROY: 8,
      IOCTL_SNAPSHOT_ERRNO: 12,
      IOCTL_SNAPSTORE_CREATE: 36,
      IOCTL_SNAPSTORE_FILE: 28,
      IOCTL_SNAPSTORE_MEMORY: 24,
      IOCTL_SNAPSTORE_CLEANUP: 24,
      IOCTL_SNAPSTORE_FILE_MULTIDEV: 36,
      IOCTL_COLLECT_SNAPSHOT_IMAGES: 12,
      DevId: 8,
      ByteRange: 16,
      CbtInfo: 37,
      ImageInfo: 16,
      KernelEntry: 16,
      INITIATE: 40,
      NEXT_PORTION: 24,
      NEXT_PORTION_MULTIDEV: 32,
      ACKNOWLEDGE: 8,
      HALFFILL: 12,
      OVERFLOW: 16,
      TERMINATE: 12,
    });
  });
});

describe('veeamsnap argument layouts', () => {
  it('IOCTL_COMPATIBILITY_FLAGS: 8 output bytes; 13.1 reports 0x0D', () => {
    const e = encode('IOCTL_COMPATIBILITY_FLAGS');
    assert.deepEqual(e.blocks, [Buffer.alloc(8)]);
    assert.deepEqual(e.pointers, []);
    assert.deepEqual(decode('IOCTL_COMPATIBILITY_FLAGS', [u64(0x0dn)]), {
      raw: 0x0dn,
      snapstore: true,
      btrfs: false,
      multidev: true,
      kernelEntries: true,
    });
  });

  it('IOCTL_GETVERSION: four u16 at 0, 2, 4, 6', () => {
    assert.deepEqual(encode('IOCTL_GETVERSION').blocks, [Buffer.alloc(8)]);
    const out = Buffer.concat([u16(13), u16(1), u16(0), u16(252)]);
    assert.deepEqual(decode('IOCTL_GETVERSION', [out]), { major: 13, minor: 1, revision: 0, build: 252 });
  });

  for (const name of ['IOCTL_TRACKING_ADD', 'IOCTL_TRACKING_REMOVE']) {
    it(`${name}: a DevId (int32 major, int32 minor)`, async () => {
      const e = encode(name, { device: { major: 8, minor: 16 } });
      assert.deepEqual(e.blocks, [devId(8, 16)]);
      assert.deepEqual(e.pointers, []);
      assert.equal(decode(name, [devId(8, 16)]), undefined);
    });
  }

  it('IOCTL_TRACKING_COLLECT: count query has a null pointer', () => {
    const e = encode('IOCTL_TRACKING_COLLECT', { capacity: 0 });
    assert.deepEqual(e.blocks, [Buffer.alloc(12)]);
    assert.deepEqual(e.pointers, []);
  });

  it('IOCTL_TRACKING_COLLECT: count at 0, pointer at 4 to capacity x 37 bytes', () => {
    const e = encode('IOCTL_TRACKING_COLLECT', { capacity: 3 });
    assert.deepEqual(e.blocks, [layout(12, [[0, u32(3)], [4, ptr(1)]]), Buffer.alloc(3 * 37)]);
    assert.deepEqual(e.pointers, [{ block: 0, offset: 4, target: 1 }]);
  });

  it('IOCTL_TRACKING_COLLECT: decodes 37-byte CbtInfo records, generation id at 21', () => {
    const genA = Buffer.from('a1a2a3a4a5a6a7a8a9aaabacadaeafb0', 'hex');
    const genB = Buffer.from('0102030405060708090a0b0c0d0e0f10', 'hex');
    const record = (major: number, minor: number, capacity: bigint, mapSize: number, snap: number, gen: Buffer) =>
      layout(37, [[0, i32(major)], [4, i32(minor)], [8, u64(capacity)], [16, u32(mapSize)], [20, Buffer.from([snap])], [21, gen]]);
    const records = Buffer.concat([
      record(254, 0, 64n << 20n, 256, 1, genA), // Appendix C: 64 MiB disk, 256-byte map, capacity in bytes
      record(8, 2, 10737418240n, 40960, 255, genB),
    ]);
    assert.equal(records.length, 74);
    const arg = layout(12, [[0, u32(2)], [4, u64(0x7f0000001000n)]]);
    assert.deepEqual(decode('IOCTL_TRACKING_COLLECT', [arg, records]), [
      { device: { major: 254, minor: 0 }, capacityBytes: 67108864n, cbtMapSize: 256, snapNumber: 1, generationId: genA },
      { device: { major: 8, minor: 2 }, capacityBytes: 10737418240n, cbtMapSize: 40960, snapNumber: 255, generationId: genB },
    ]);
    assert.throws(() => decode('IOCTL_TRACKING_COLLECT', [layout(12, [[0, u32(3)]]), records]), RangeError);
  });

  it('IOCTL_TRACKING_BLOCK_SIZE: one u32 output', () => {
    assert.deepEqual(encode('IOCTL_TRACKING_BLOCK_SIZE').blocks, [Buffer.alloc(4)]);
    assert.equal(decode('IOCTL_TRACKING_BLOCK_SIZE', [u32(262144)]), 262144);
  });

  it('IOCTL_TRACKING_READ_CBT_BITMAP: dev 0, offset 8, length 12, buffer pointer 16', () => {
    const e = encode('IOCTL_TRACKING_READ_CBT_BITMAP', { device: { major: 8, minor: 0 }, offset: 4096, length: 256 });
    assert.deepEqual(e.blocks, [
      layout(24, [[0, devId(8, 0)], [8, u32(4096)], [12, u32(256)], [16, ptr(1)]]),
      Buffer.alloc(256),
    ]);
    assert.deepEqual(e.pointers, [{ block: 0, offset: 16, target: 1 }]);
    // The return value is the byte count copied (Appendix C: 256, not 0).
    const map = Buffer.from([1, 1, 0, 2, 2, 2, 0, 0]);
    assert.deepEqual(decode('IOCTL_TRACKING_READ_CBT_BITMAP', [e.blocks[0], map], 5), map.subarray(0, 5));
  });

  it('IOCTL_SET_KERNEL_ENTRIES: count 0, pointer 4 to 16-byte {addr, name pointer} entries', () => {
    const e = encode('IOCTL_SET_KERNEL_ENTRIES', {
      entries: [
        { name: '__request_module', address: 0xffffffff810a1b20n },
        { name: 'blk_mq_submit_bio', address: 0xffffffff81623450n },
      ],
    });
    assert.deepEqual(e.blocks, [
      layout(12, [[0, u32(2)], [4, ptr(1)]]),
      Buffer.concat([u64(0xffffffff810a1b20n), ptr(2), u64(0xffffffff81623450n), ptr(3)]),
      Buffer.from('__request_module\0'),
      Buffer.from('blk_mq_submit_bio\0'),
    ]);
    assert.deepEqual(e.pointers, [
      { block: 0, offset: 4, target: 1 },
      { block: 1, offset: 8, target: 2 },
      { block: 1, offset: 24, target: 3 },
    ]);
  });

  it('IOCTL_SET_KERNEL_ENTRIES: refuses count 0 (a kernel crash) and names over 255 chars', () => {
    assert.throws(() => encode('IOCTL_SET_KERNEL_ENTRIES', { entries: [] }), RangeError);
    assert.throws(
      () => encode('IOCTL_SET_KERNEL_ENTRIES', { entries: [{ name: 'x'.repeat(256), address: 1n }] }),
      RangeError,
    );
  });

  it('IOCTL_GET_UNRESOLVED_KERNEL_ENTRIES: zeroed 4096 bytes; return value = bytes of NUL-terminated names', () => {
    assert.deepEqual(encode('IOCTL_GET_UNRESOLVED_KERNEL_ENTRIES').blocks, [Buffer.alloc(4096)]);
    const out = Buffer.alloc(4096);
    out.write('blk_mq_submit_bio\0blk_mq_make_request\0');
    assert.deepEqual(decode('IOCTL_GET_UNRESOLVED_KERNEL_ENTRIES', [out], 38), ['blk_mq_submit_bio', 'blk_mq_make_request']);
    assert.deepEqual(decode('IOCTL_GET_UNRESOLVED_KERNEL_ENTRIES', [Buffer.alloc(4096)], 0), []);
  });

  it('IOCTL_SNAPSHOT_CREATE: id out at 0, count 8, device array pointer 12', () => {
    const e = encode('IOCTL_SNAPSHOT_CREATE', { devices: [{ major: 8, minor: 0 }, { major: 8, minor: 16 }] });
    assert.deepEqual(e.blocks, [layout(20, [[8, u32(2)], [12, ptr(1)]]), Buffer.concat([devId(8, 0), devId(8, 16)])]);
    assert.deepEqual(e.pointers, [{ block: 0, offset: 12, target: 1 }]);
    const out = layout(20, [[0, u64(KERNEL_SNAPSHOT_ID)], [8, u32(2)]]);
    assert.equal(decode('IOCTL_SNAPSHOT_CREATE', [out]), KERNEL_SNAPSHOT_ID);
  });

  it('IOCTL_SNAPSHOT_DESTROY: the u64 id itself (above 2^53, and all-ones for destroy-all)', () => {
    assert.deepEqual(encode('IOCTL_SNAPSHOT_DESTROY', { snapshotId: KERNEL_SNAPSHOT_ID }).blocks, [u64(KERNEL_SNAPSHOT_ID)]);
    assert.deepEqual(encode('IOCTL_SNAPSHOT_DESTROY', { snapshotId: (1n << 64n) - 1n }).blocks, [Buffer.alloc(8, 0xff)]);
  });

  it('IOCTL_SNAPSHOT_ERRNO: dev at 0, int32 err_code out at 8', () => {
    assert.deepEqual(encode('IOCTL_SNAPSHOT_ERRNO', { device: { major: 254, minor: 16 } }).blocks, [
      layout(12, [[0, devId(254, 16)]]),
    ]);
    assert.equal(decode('IOCTL_SNAPSHOT_ERRNO', [layout(12, [[0, devId(254, 16)], [8, i32(-61)]])]), -61);
  });

  it('IOCTL_SNAPSTORE_CREATE: id 0, storage 16, count 24, device array pointer 28', () => {
    const devices = [{ major: 8, minor: 0 }, { major: 8, minor: 16 }];
    const array = Buffer.concat([devId(8, 0), devId(8, 16)]);
    const golden = (storage: Buffer) => layout(36, [[0, ID], [16, storage], [24, u32(2)], [28, ptr(1)]]);
    assert.deepEqual(encode('IOCTL_SNAPSTORE_CREATE', { id: ID, storage: 'memory', devices }).blocks, [golden(devId(0, 0)), array]);
    assert.deepEqual(encode('IOCTL_SNAPSTORE_CREATE', { id: ID, storage: 'multidev', devices }).blocks, [golden(Buffer.alloc(8, 0xff)), array]);
    // Appendix C: 8:0 is a valid store device, not "memory".
    const e = encode('IOCTL_SNAPSTORE_CREATE', { id: ID, storage: { major: 8, minor: 0 }, devices });
    assert.deepEqual(e.blocks, [golden(devId(8, 0)), array]);
    assert.deepEqual(e.pointers, [{ block: 0, offset: 28, target: 1 }]);
  });

  it('IOCTL_SNAPSTORE_FILE: id 0, range count 16, ByteRange array pointer 20', () => {
    const ranges = [{ left: 1048576n, right: 5242880n }, { left: 10n << 30n, right: (10n << 30n) + 16384n }];
    const e = encode('IOCTL_SNAPSTORE_FILE', { id: ID, ranges });
    assert.deepEqual(e.blocks, [
      layout(28, [[0, ID], [16, u32(2)], [20, ptr(1)]]),
      Buffer.concat([byteRange(1048576n, 5242880n), byteRange(10n << 30n, (10n << 30n) + 16384n)]),
    ]);
    assert.deepEqual(e.pointers, [{ block: 0, offset: 20, target: 1 }]);
  });

  it('IOCTL_SNAPSTORE_MEMORY: id 0, u64 size 16', () => {
    assert.deepEqual(encode('IOCTL_SNAPSTORE_MEMORY', { id: ID, size: 64n << 20n }).blocks, [
      layout(24, [[0, ID], [16, u64(64n << 20n)]]),
    ]);
    assert.deepEqual(encode('IOCTL_SNAPSTORE_MEMORY', { id: ID, size: 1 << 20 }).blocks, [
      layout(24, [[0, ID], [16, u64(1n << 20n)]]),
    ]);
  });

  it('IOCTL_SNAPSTORE_CLEANUP: id 0, filled bytes out at 16; all-ones = unknown id', () => {
    assert.deepEqual(encode('IOCTL_SNAPSTORE_CLEANUP', { id: ID }).blocks, [layout(24, [[0, ID]])]);
    assert.equal(decode('IOCTL_SNAPSTORE_CLEANUP', [layout(24, [[0, ID], [16, u64(6291456n)]])]), 6291456n);
    assert.equal(decode('IOCTL_SNAPSTORE_CLEANUP', [layout(24, [[0, ID], [16, Buffer.alloc(8, 0xff)]])]), null);
  });

  it('IOCTL_SNAPSTORE_FILE_MULTIDEV: id 0, dev 16, range count 24, ByteRange array pointer 28', () => {
    const e = encode('IOCTL_SNAPSTORE_FILE_MULTIDEV', {
      id: ID,
      device: { major: 253, minor: 1 },
      ranges: [{ left: 0n, right: 16384n }],
    });
    assert.deepEqual(e.blocks, [
      layout(36, [[0, ID], [16, devId(253, 1)], [24, u32(1)], [28, ptr(1)]]),
      byteRange(0n, 16384n),
    ]);
    assert.deepEqual(e.pointers, [{ block: 0, offset: 28, target: 1 }]);
  });

  it('IOCTL_COLLECT_SNAPSHOT_IMAGES: count probe is count 0 with a null pointer', () => {
    const e = encode('IOCTL_COLLECT_SNAPSHOT_IMAGES', { capacity: 0 });
    assert.deepEqual(e.blocks, [Buffer.alloc(12)]);
    assert.deepEqual(e.pointers, []);
  });

  it('IOCTL_COLLECT_SNAPSHOT_IMAGES: count 0, pointer 4 to capacity x 16 bytes', () => {
    const e = encode('IOCTL_COLLECT_SNAPSHOT_IMAGES', { capacity: 2048 });
    assert.deepEqual(e.blocks, [layout(12, [[0, i32(2048)], [4, ptr(1)]]), Buffer.alloc(2048 * 16)]);
    assert.deepEqual(e.pointers, [{ block: 0, offset: 4, target: 1 }]);
  });

  it('IOCTL_COLLECT_SNAPSHOT_IMAGES: decodes 16-byte ImageInfo records', () => {
    const records = Buffer.concat([devId(254, 0), devId(252, 0), devId(254, 16), devId(252, 1), Buffer.alloc(16)]);
    const arg = layout(12, [[0, i32(2)], [4, u64(0x7f0000002000n)]]);
    assert.deepEqual(decode('IOCTL_COLLECT_SNAPSHOT_IMAGES', [arg, records]), [
      { original: { major: 254, minor: 0 }, image: { major: 252, minor: 0 } },
      { original: { major: 254, minor: 16 }, image: { major: 252, minor: 1 } },
    ]);
    assert.deepEqual(decode('IOCTL_COLLECT_SNAPSHOT_IMAGES', [Buffer.alloc(12)]), []);
  });

  it('rejects values the kernel would misread', () => {
    const dev = (major: number, minor: number) => () => encode('IOCTL_TRACKING_ADD', { device: { major, minor } });
    assert.throws(dev(4096, 0), RangeError); // MKDEV would alias another device
    assert.throws(dev(0, 1 << 20), RangeError);
    assert.throws(dev(-1, 0), RangeError);
    assert.throws(dev(8.5, 0), RangeError);
    assert.throws(() => encode('IOCTL_SNAPSTORE_CLEANUP', { id: Buffer.alloc(15) }), TypeError);
    assert.throws(() => encode('IOCTL_SNAPSTORE_MEMORY', { id: ID, size: -1n }), RangeError);
    assert.throws(() => encode('IOCTL_SNAPSTORE_MEMORY', { id: ID, size: 2 ** 53 }), RangeError);
    assert.throws(() => encode('IOCTL_SNAPSHOT_DESTROY', { snapshotId: 1n << 64n }), RangeError);
    assert.throws(() => encode('IOCTL_SNAPSTORE_CREATE', { id: ID, storage: 'disk', devices: [] }), TypeError);
    assert.throws(() => encode('IOCTL_NOPE'), TypeError);
  });
});

describe('toWireRanges', () => {
  it('turns byte offset + length into [left, right) without the Go agent off-by-one', () => {
    assert.deepEqual(toWireRanges([{ offset: 1048576, length: 4194304 }, { offset: 10n << 40n, length: 512n }]), [
      { left: 1048576n, right: 5242880n },
      { left: 10n << 40n, right: (10n << 40n) + 512n },
    ]);
  });

  it('rejects ranges the kernel would truncate or misread', () => {
    assert.throws(() => toWireRanges([]), RangeError);
    assert.throws(() => toWireRanges([{ offset: 512, length: 0 }]), RangeError);
    assert.throws(() => toWireRanges([{ offset: 100, length: 512 }]), /aligned to 512/);
    assert.throws(() => toWireRanges([{ offset: 0, length: 4097 }]), /aligned to 512/);
    assert.throws(() => toWireRanges([{ offset: -512, length: 512 }]), RangeError);
    assert.throws(() => toWireRanges([{ offset: 2 ** 53, length: 512 }]), RangeError);
    assert.throws(() => toWireRanges([{ offset: (1n << 64n) - 512n, length: 1024n }]), RangeError);
  });
});

describe('kallsyms helpers', () => {
  const kallsyms = [
    'ffffffff81000000 T _stext',
    'ffffffff810a1b20 T __request_module',
    'ffffffff81623450 t blk_mq_submit_bio',
    'ffffffffc0a01000 t blk_mq_submit_bio\t[some_module]',
    'ffffffff82000000 D blk_mq_make_request',
    'ffffffffc0b02000 T foreign_symbol\t[other]',
    '',
  ].join('\n');

  it('finds core-kernel text symbols (T or t) and skips module and data lines', () => {
    const found = findKernelSymbols(kallsyms, ['__request_module', 'blk_mq_submit_bio', 'blk_mq_make_request', 'foreign_symbol']);
    assert.deepEqual(
      found,
      new Map([
        ['__request_module', 0xffffffff810a1b20n],
        ['blk_mq_submit_bio', 0xffffffff81623450n],
      ]),
    );
  });

  it('builds the entry list with __request_module first', () => {
    assert.equal(KERNEL_ENTRY_BASE_SYMBOL, '__request_module');
    assert.deepEqual(kernelEntriesFromKallsyms(kallsyms, ['blk_mq_submit_bio']), [
      { name: '__request_module', address: 0xffffffff810a1b20n },
      { name: 'blk_mq_submit_bio', address: 0xffffffff81623450n },
    ]);
  });

  it('refuses missing symbols and hidden (zero) addresses', () => {
    assert.throws(() => kernelEntriesFromKallsyms(kallsyms, ['blk_mq_make_request']), /not found/);
    const hidden = '0000000000000000 T __request_module\n0000000000000000 T blk_mq_submit_bio\n';
    assert.throws(() => kernelEntriesFromKallsyms(hidden, ['blk_mq_submit_bio']), /address 0/);
  });
});

describe('VeeamsnapControl on a device that is not veeamsnap', () => {
  it('rejects open failures with the open syscall and errno code', async () => {
    await assert.rejects(VeeamsnapControl.open('/nonexistent/veeamsnap'), (err) => {
      assert.ok(isSystemError(err, 'ENOENT'));
      assert.equal(err.syscall, 'open');
      assert.equal(err.path, '/nonexistent/veeamsnap');
      return true;
    });
  });

  it('reports each ioctl failure with the ioctl name as syscall (ENOTTY on /dev/null)', async () => {
    const control = await VeeamsnapControl.open('/dev/null');
    try {
      const calls: [string, () => Promise<unknown>][] = [
        ['IOCTL_GETVERSION', () => control.version()],
        ['IOCTL_COMPATIBILITY_FLAGS', () => control.compatibilityFlags()],
        ['IOCTL_GET_UNRESOLVED_KERNEL_ENTRIES', () => control.unresolvedKernelEntries()],
        ['IOCTL_SET_KERNEL_ENTRIES', () => control.setKernelEntries([{ name: '__request_module', address: 1n }])],
        ['IOCTL_TRACKING_ADD', () => control.trackingAdd({ major: 7, minor: 0 })],
        ['IOCTL_TRACKING_REMOVE', () => control.trackingRemove({ major: 7, minor: 0 })],
        ['IOCTL_TRACKING_COLLECT', () => control.trackingCollect()],
        ['IOCTL_TRACKING_BLOCK_SIZE', () => control.trackingBlockSize()],
        ['IOCTL_TRACKING_READ_CBT_BITMAP', () => control.readCbtMap({ major: 7, minor: 0 }, 0, 16)],
        ['IOCTL_SNAPSTORE_CREATE', () => control.snapstoreCreate(ID, 'memory', [{ major: 7, minor: 0 }])],
        ['IOCTL_SNAPSTORE_MEMORY', () => control.snapstoreMemory(ID, 1n << 20n)],
        ['IOCTL_SNAPSTORE_FILE', () => control.snapstoreFile(ID, [{ offset: 0, length: 16384 }])],
        ['IOCTL_SNAPSTORE_FILE_MULTIDEV', () => control.snapstoreFileMultidev(ID, { major: 7, minor: 1 }, [{ offset: 0, length: 16384 }])],
        ['IOCTL_SNAPSTORE_CLEANUP', () => control.snapstoreCleanup(ID)],
        ['IOCTL_SNAPSHOT_CREATE', () => control.snapshotCreate([{ major: 7, minor: 0 }])],
        ['IOCTL_SNAPSHOT_DESTROY', () => control.snapshotDestroy(KERNEL_SNAPSHOT_ID)],
        ['IOCTL_SNAPSHOT_ERRNO', () => control.snapshotErrno({ major: 7, minor: 0 })],
        ['IOCTL_COLLECT_SNAPSHOT_IMAGES', () => control.collectSnapshotImages()],
      ];
      for (const [syscall, call] of calls) {
        await assert.rejects(call(), (err) => {
          assert.ok(isSystemError(err, 'ENOTTY'), syscall);
          assert.equal(err.syscall, syscall);
          assert.equal(err.errno, 25);
          assert.equal(err.path, '/dev/null');
          return true;
        });
      }
    } finally {
      control.close();
    }
  });

  it('turns bad arguments into rejections, and calls after close into EBADF', async () => {
    const control = await VeeamsnapControl.open('/dev/null');
    await assert.rejects(control.trackingAdd({ major: 1 << 12, minor: 0 }), RangeError);
    await assert.rejects(control.snapstoreFile(ID, [{ offset: 1, length: 512 }]), /aligned/);
    control.close();
    await assert.rejects(control.version(), (err) => isSystemError(err, 'EBADF') && err.syscall === 'IOCTL_GETVERSION');
  });
});
