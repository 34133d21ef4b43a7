import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { setImmediate as nextTurn } from 'node:timers/promises';
import v8 from 'node:v8';
import vm from 'node:vm';

import { DirectReader, MAX_READ_LENGTH, configureReaderPool, readerPoolStats, recycleReadBuffer } from '../../src/native/reader';
import { attachLoopDevice, loopDevicesUnavailable, type LoopDevice } from './helpers/loop';

v8.setFlagsFromString('--expose-gc');
const gc = vm.runInNewContext('gc') as () => void;

const DEFAULT_MAX_POOLED_BYTES = 128 * 1024 * 1024;
// Not a multiple of any block size, so the last block is partial.
const FILE_SIZE = 8 * 1024 * 1024 + 1234;

let tmpDir: string;
let filePath: string;
let content: Buffer;

before(() => {
  tmpDir = fs.mkdtempSync(path.join(os.tmpdir(), 'coriolis-reader-'));
  filePath = path.join(tmpDir, 'data.bin');
  content = randomBytes(FILE_SIZE);
  fs.writeFileSync(filePath, content);
});

after(() => {
  fs.rmSync(tmpDir, { recursive: true, force: true });
});

// Deterministic, so that a failing case can be replayed.
function randomSource(seed: number): (below: number) => number {
  let state = seed >>> 0;
  return (below) => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return Math.floor((((t ^ (t >>> 14)) >>> 0) / 4294967296) * below);
  };
}

async function expectRead(reader: DirectReader, expected: Buffer, offset: number, length: number): Promise<void> {
  const got = await reader.read(offset, length);
  assert.equal(got.length, length, `length of read(${offset}, ${length})`);
  assert.ok(got.equals(expected.subarray(offset, offset + length)), `bytes of read(${offset}, ${length})`);
}

function openDescriptorsOf(target: string): number {
  return fs.readdirSync('/proc/self/fd').filter((fd) => {
    try {
      return fs.readlinkSync(`/proc/self/fd/${fd}`) === target;
    } catch {
      return false; // closed since the listing
    }
  }).length;
}

// Finalizers of external buffers run after the collection, on a later turn of the event loop.
async function collectGarbageUntil(done: () => boolean): Promise<boolean> {
  for (let attempt = 0; attempt < 100; attempt++) {
    gc();
    await nextTurn();
    if (done()) return true;
  }
  return false;
}

async function settledBuffersInUse(): Promise<number> {
  let previous = -1;
  await collectGarbageUntil(() => {
    const current = readerPoolStats().buffersInUse;
    const stable = current === previous;
    previous = current;
    return stable;
  });
  return previous;
}

/** The cases every target must pass; `expected` holds the target's bytes from offset 0. */
function readCases(open: () => Promise<DirectReader>, expected: () => Buffer): void {
  let reader: DirectReader;
  before(async () => {
    reader = await open();
  });
  after(async () => {
    await reader?.close();
  });

  it('reads aligned ranges', async () => {
    const block = reader.logicalBlockSize;
    for (const [offset, length] of [[0, block], [block, 8 * block], [0, 1024 * 1024], [4 * 1024 * 1024, 4 * 1024 * 1024]]) {
      await expectRead(reader, expected(), offset, length);
    }
  });

  it('reads unaligned offsets and lengths, exactly the bytes asked for', async () => {
    const block = reader.logicalBlockSize;
    const cases = [[1, 1], [block - 1, 2], [block + 3, block], [7, 3 * block - 11], [12345, 678901], [block - 1, 1]];
    for (const [offset, length] of cases) await expectRead(reader, expected(), offset, length);
  });

  it('reads up to the very end, including a partial last block', async () => {
    const size = reader.size;
    await expectRead(reader, expected(), size - 1, 1);
    await expectRead(reader, expected(), size - 1000, 1000);
    await expectRead(reader, expected(), size - 3 * reader.logicalBlockSize - 5, 3 * reader.logicalBlockSize + 5);
  });

  it('returns an empty buffer for length 0, even at the end', async () => {
    assert.equal((await reader.read(0, 0)).length, 0);
    assert.equal((await reader.read(reader.size, 0)).length, 0);
  });

  it('rejects reads past the end with ERANGE', async () => {
    await assert.rejects(reader.read(reader.size - 10, 11), { name: 'RangeError', code: 'ERANGE', message: /past the end/ });
    await assert.rejects(reader.read(reader.size + 4096, 1), { code: 'ERANGE' });
  });

  it('serves 200 concurrent random reads correctly', async () => {
    const random = randomSource(reader.size);
    const reads: Promise<void>[] = [];
    for (let i = 0; i < 200; i++) {
      const offset = random(reader.size);
      const length = Math.min(1 + random(256 * 1024), reader.size - offset);
      reads.push(expectRead(reader, expected(), offset, length));
    }
    await Promise.all(reads);
  });
}

describe('DirectReader on a regular file', () => {
  describe('reads', () => {
    readCases(() => DirectReader.open(filePath), () => content);
  });

  it('reports the size and block sizes', async () => {
    const reader = await DirectReader.open(filePath);
    try {
      assert.equal(reader.kind, 'file');
      assert.equal(reader.path, filePath);
      assert.equal(reader.size, FILE_SIZE);
      assert.ok([512, 1024, 2048, 4096].includes(reader.logicalBlockSize), `logical ${reader.logicalBlockSize}`);
      assert.equal(reader.physicalBlockSize, fs.statSync(filePath).blksize);
    } finally {
      await reader.close();
    }
  });

  it('rejects bad arguments before reading', async () => {
    const reader = await DirectReader.open(filePath);
    try {
      await assert.rejects(reader.read(-1, 10), RangeError);
      await assert.rejects(reader.read(0, -5), RangeError);
      await assert.rejects(reader.read(1.5, 10), TypeError);
      await assert.rejects(reader.read(0, Number.NaN), TypeError);
      await assert.rejects(reader.read('0' as unknown as number, 10), TypeError);
      await assert.rejects(reader.read(2 ** 53, 1), RangeError);
      await assert.rejects(reader.read(0, MAX_READ_LENGTH + 1), { name: 'RangeError', message: /maximum single read/ });
    } finally {
      await reader.close();
    }
  });

  it('reads the maximum length in one request, unaligned', async () => {
    const sparse = path.join(tmpDir, 'sparse.bin');
    const markers = [[1, randomBytes(4096)], [MAX_READ_LENGTH - 4096, randomBytes(4097)]] as const;
    const fd = fs.openSync(sparse, 'w');
    try {
      for (const [offset, bytes] of markers) fs.writeSync(fd, bytes, 0, bytes.length, offset);
    } finally {
      fs.closeSync(fd);
    }
    const reader = await DirectReader.open(sparse);
    try {
      assert.equal(reader.size, MAX_READ_LENGTH + 1);
      const got = await reader.read(1, MAX_READ_LENGTH);
      assert.equal(got.length, MAX_READ_LENGTH);
      assert.ok(got.equals(fs.readFileSync(sparse).subarray(1)));
    } finally {
      await reader.close();
      fs.rmSync(sparse);
    }
  });

  it('fails to open missing paths, directories and character devices', async () => {
    await assert.rejects(DirectReader.open(path.join(tmpDir, 'missing')), { code: 'ENOENT', syscall: 'open' });
    await assert.rejects(DirectReader.open(tmpDir), { code: 'EISDIR' });
    await assert.rejects(DirectReader.open('/dev/null'), { code: 'ENOTBLK' });
    await assert.rejects(DirectReader.open(''), TypeError);
  });

  it('closes only after the reads in flight, which all complete', async () => {
    const reader = await DirectReader.open(filePath);
    assert.equal(openDescriptorsOf(filePath), 1);
    const length = 1024 * 1024;
    const reads = Array.from({ length: 32 }, (_, i) => reader.read((i * 97 * 4096) % (FILE_SIZE - length), length));
    const closed = reader.close();
    assert.equal(reader.close(), closed, 'a second close() shares the first');
    assert.equal(openDescriptorsOf(filePath), 1, 'still open while reads are in flight');
    await assert.rejects(reader.read(0, 10), { code: 'ESHUTDOWN', message: /closed/ });
    const buffers = await Promise.all(reads);
    buffers.forEach((buffer, i) => {
      const offset = (i * 97 * 4096) % (FILE_SIZE - length);
      assert.ok(buffer.equals(content.subarray(offset, offset + length)), `read ${i}`);
    });
    await closed;
    assert.equal(openDescriptorsOf(filePath), 0);
    await assert.rejects(reader.read(0, 0), { code: 'ESHUTDOWN' });
  });

  describe('buffer pool', () => {
    const chunk = 64 * 1024;

    after(() => configureReaderPool({ maxPooledBytes: DEFAULT_MAX_POOLED_BYTES }));

    it('lends its memory to live buffers and takes it back after they are collected', async () => {
      const reader = await DirectReader.open(filePath);
      try {
        const baseline = await settledBuffersInUse();
        configureReaderPool({ maxPooledBytes: 0 });
        configureReaderPool({ maxPooledBytes: 16 * chunk });
        assert.equal(readerPoolStats().buffersPooled, 0);

        let buffers: Buffer[] = await Promise.all(Array.from({ length: 16 }, () => reader.read(0, chunk)));
        let stats = readerPoolStats();
        assert.equal(stats.buffersInUse, baseline + 16, 'each live buffer holds a chunk: no copy was made');
        assert.ok(buffers.every((buffer) => buffer.equals(content.subarray(0, chunk))));

        buffers = [];
        assert.ok(await collectGarbageUntil(() => readerPoolStats().buffersInUse === baseline), 'chunks come back after GC');
        stats = readerPoolStats();
        assert.equal(stats.buffersPooled, 16);
        assert.equal(stats.bytesPooled, 16 * chunk);

        buffers = await Promise.all(Array.from({ length: 16 }, () => reader.read(0, chunk)));
        assert.equal(readerPoolStats().buffersPooled, 0, 'the next reads reuse the pooled chunks');
        assert.equal(buffers.length, 16);
      } finally {
        await reader.close();
      }
    });

    it('keeps no more than its cap', async () => {
      const reader = await DirectReader.open(filePath);
      try {
        const baseline = await settledBuffersInUse();
        configureReaderPool({ maxPooledBytes: 0 });
        configureReaderPool({ maxPooledBytes: 3 * chunk });
        let buffers: Buffer[] = await Promise.all(Array.from({ length: 10 }, () => reader.read(chunk, chunk)));
        assert.equal(buffers.length, 10);
        buffers = [];
        assert.ok(await collectGarbageUntil(() => readerPoolStats().buffersInUse === baseline));
        assert.deepEqual(
          { buffersPooled: readerPoolStats().buffersPooled, bytesPooled: readerPoolStats().bytesPooled },
          { buffersPooled: 3, bytesPooled: 3 * chunk },
        );
        configureReaderPool({ maxPooledBytes: chunk });
        assert.equal(readerPoolStats().bytesPooled, chunk, 'lowering the cap frees the surplus');
      } finally {
        await reader.close();
      }
    });

    it('gives room to the size being read now, dropping chunks released longest ago', async () => {
      const reader = await DirectReader.open(filePath);
      try {
        const baseline = await settledBuffersInUse();
        configureReaderPool({ maxPooledBytes: 0 });
        configureReaderPool({ maxPooledBytes: 4 * chunk });
        let buffers: Buffer[] = await Promise.all(Array.from({ length: 4 }, () => reader.read(0, chunk)));
        buffers = [];
        assert.ok(await collectGarbageUntil(() => readerPoolStats().buffersInUse === baseline));
        assert.equal(readerPoolStats().bytesPooled, 4 * chunk, 'the pool is full of small chunks');

        buffers = await Promise.all(Array.from({ length: 2 }, () => reader.read(0, 2 * chunk)));
        assert.equal(buffers.length, 2);
        buffers = [];
        assert.ok(await collectGarbageUntil(() => readerPoolStats().buffersInUse === baseline));
        const stats = readerPoolStats();
        assert.deepEqual({ buffersPooled: stats.buffersPooled, bytesPooled: stats.bytesPooled }, { buffersPooled: 2, bytesPooled: 4 * chunk });
      } finally {
        await reader.close();
      }
    });

    it('takes a recycled buffer back at once and empties it, so a late use sees no other read\'s bytes', async () => {
      const reader = await DirectReader.open(filePath);
      try {
        const baseline = await settledBuffersInUse();
        configureReaderPool({ maxPooledBytes: 0 });
        configureReaderPool({ maxPooledBytes: 4 * chunk });
        const first = await reader.read(3, chunk - 3);
        const view = first.subarray(10, 20);
        assert.equal(readerPoolStats().buffersInUse, baseline + 1);

        assert.equal(recycleReadBuffer(first), true);
        assert.equal(first.length, 0, 'the recycled buffer is empty');
        assert.equal(view.length, 0, 'and so is every view of its memory');
        assert.deepEqual(
          { inUse: readerPoolStats().buffersInUse, pooled: readerPoolStats().buffersPooled },
          { inUse: baseline, pooled: 1 },
          'its chunk is back in the pool without a collection',
        );

        const second = await reader.read(chunk, chunk);
        assert.equal(readerPoolStats().buffersPooled, 0, 'the next read reuses the chunk');
        assert.ok(second.equals(content.subarray(chunk, 2 * chunk)));
        assert.equal(recycleReadBuffer(first), false, 'a buffer is recycled once');

        // The recycled buffer's collection must not hand the chunk, now lent to `second`, back.
        assert.ok(await collectGarbageUntil(() => readerPoolStats().buffersInUse === baseline + 1));
        await nextTurn();
        assert.equal(readerPoolStats().buffersInUse, baseline + 1);
        assert.ok(second.equals(content.subarray(chunk, 2 * chunk)), 'the live buffer still holds its bytes');
      } finally {
        await reader.close();
      }
    });

    it('leaves buffers it did not lend alone', async () => {
      const reader = await DirectReader.open(filePath);
      try {
        const own = Buffer.from('not from the reader');
        assert.equal(recycleReadBuffer(own), false);
        assert.equal(own.toString(), 'not from the reader');
        const read = await reader.read(0, chunk);
        assert.equal(recycleReadBuffer(read.subarray(1)), false, 'a slice is not the buffer that was lent');
        assert.equal(read.length, chunk);
        assert.equal(recycleReadBuffer(Buffer.alloc(0)), false);
        assert.throws(() => recycleReadBuffer('text' as unknown as Buffer), TypeError);
      } finally {
        await reader.close();
      }
    });

    it('validates its options', () => {
      assert.throws(() => configureReaderPool({ ioThreads: 0 }), RangeError);
      assert.throws(() => configureReaderPool({ ioThreads: 2.5 }), TypeError);
      assert.throws(() => configureReaderPool({ maxPooledBytes: -1 }), RangeError);
    });
  });
});

describe('DirectReader on loop devices', () => {
  const unavailable = loopDevicesUnavailable();
  const variants = [
    { name: 'direct-io loop device', options: { directIo: true } },
    { name: 'buffered loop device', options: { directIo: false } },
    { name: 'loop device with 4096-byte sectors', options: { directIo: true, sectorSize: 4096 } },
  ];

  for (const variant of variants) {
    describe(variant.name, { skip: unavailable }, () => {
      let device: LoopDevice | undefined;
      before(() => {
        device = attachLoopDevice(filePath, variant.options);
      });
      after(() => device?.detach());

      it('reports a block device of the backing file\'s whole sectors', async () => {
        const reader = await DirectReader.open(device!.path);
        try {
          const sector = variant.options.sectorSize ?? 512;
          assert.equal(reader.kind, 'block');
          assert.equal(reader.logicalBlockSize, sector);
          assert.equal(reader.size, Math.floor(FILE_SIZE / sector) * sector);
        } finally {
          await reader.close();
        }
      });

      describe('reads', () => {
        readCases(() => DirectReader.open(device!.path), () => content);
      });
    });
  }
});

describe('DirectReader.digest', () => {
  const sha256 = (data: Buffer): string => createHash('sha256').update(data).digest('hex');
  let file: string;
  let data: Buffer;
  before(() => {
    // Random bytes with zero stretches: whole blocks, parts of blocks, and the short tail.
    data = randomBytes(3 * 1024 * 1024 + 777);
    for (const [start, end] of [[65536, 262144], [1048576 + 100, 1048576 + 5000], [3 * 1024 * 1024, data.length]]) data.fill(0, start, end);
    file = path.join(tmpDir, 'digest.bin');
    fs.writeFileSync(file, data);
  });

  it('answers SHA-256 of the range, or zero, without handing the bytes over', async () => {
    const reader = await DirectReader.open(file);
    try {
      const cases: Array<[number, number]> = [[0, 65536], [65536, 196608], [65536, 196609], [1048576 + 100, 4900], [1048576 + 99, 4902],
        [3 * 1024 * 1024, 777], [3 * 1024 * 1024 - 1, 778], [0, data.length], [12345, 1]];
      for (const [offset, length] of cases) {
        const bytes = data.subarray(offset, offset + length);
        const summary = await reader.digest(offset, length);
        const zero = bytes.every((byte) => byte === 0);
        assert.equal(summary.zero, zero, `[${offset}, +${length})`);
        assert.equal(summary.sha256?.toString('hex') ?? null, zero ? null : sha256(bytes), `[${offset}, +${length})`);
      }
    } finally {
      await reader.close();
    }
  });

  it('refuses what read() refuses, and an empty range', async () => {
    const reader = await DirectReader.open(file);
    await assert.rejects(reader.digest(0, 0), RangeError);
    await assert.rejects(reader.digest(data.length - 1, 2), { code: 'ERANGE' });
    await assert.rejects(reader.digest(-1, 10), RangeError);
    await reader.close();
    await assert.rejects(reader.digest(0, 10), { code: 'ESHUTDOWN' });
  });
});
