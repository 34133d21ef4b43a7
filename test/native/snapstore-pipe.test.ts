// The snapstore pipe: golden bytes of its commands (spec §4.2, Appendix C), decoding of its
// events (spec §4.3, Appendix C), and the native reader thread, exercised on a FIFO standing
// in for /dev/veeamsnap. Hang checks run in child processes: the test only asks "did it exit".
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';

import { binding, isSystemError } from '../../src/native/binding';
import { SnapstorePipe, type SnapstorePipeEvent, type UnknownEvent } from '../../src/native/snapstore-pipe';

const u32 = (v: number) => Buffer.from(new Uint32Array([v]).buffer);
const i32 = (v: number) => Buffer.from(new Int32Array([v]).buffer);
const u64 = (v: bigint) => Buffer.from(new BigUint64Array([v]).buffer);
const devId = (major: number, minor: number) => Buffer.concat([i32(major), i32(minor)]);
const byteRange = (left: bigint, right: bigint) => Buffer.concat([u64(left), u64(right)]);
const encode = (name: string, args: object): Buffer => {
  const e = binding.veeamsnapEncode(name, args);
  assert.equal(e.blocks.length, 1);
  assert.deepEqual(e.pointers, []);
  return e.blocks[0];
};
const decodeEvent = (bytes: Buffer): SnapstorePipeEvent => binding.snapstorePipeDecodeEvent(bytes) as SnapstorePipeEvent;

const ID = Buffer.from('0f1e2d3c4b5a69788796a5b4c3d2e1f0', 'hex');
const PIPE_MODULE = path.resolve(__dirname, '../../src/native/snapstore-pipe.js');

describe('snapstore pipe commands (spec §4.2)', () => {
  it('INITIATE: code, id 4, empty_limit 8 bytes at 20, storage 28/32, dev_count 36, devices 40', () => {
    const bytes = encode('INITIATE', {
      id: ID,
      emptyLimit: 256n << 20n,
      storage: { major: 8, minor: 0 },
      devices: [{ major: 254, minor: 0 }],
    });
    // Appendix C: 48 bytes for one device.
    assert.deepEqual(bytes, Buffer.concat([u32(0x21), ID, u64(256n << 20n), i32(8), i32(0), u32(1), devId(254, 0)]));
    assert.equal(bytes.length, 48);
  });

  it('INITIATE: memory (0,0) and multi-device (-1,-1) storage, 40 + 8n bytes', () => {
    const devices = [{ major: 254, minor: 0 }, { major: 254, minor: 16 }];
    const memory = encode('INITIATE', { id: ID, emptyLimit: 0, storage: 'memory', devices });
    assert.deepEqual(memory, Buffer.concat([u32(0x21), ID, u64(0n), i32(0), i32(0), u32(2), devId(254, 0), devId(254, 16)]));
    const multi = encode('INITIATE', { id: ID, emptyLimit: 1 << 20, storage: 'multidev', devices });
    assert.deepEqual(multi.subarray(20, 40), Buffer.concat([u64(1n << 20n), i32(-1), i32(-1), u32(2)]));
    assert.equal(multi.length, 56);
  });

  it('NEXT_PORTION: code, id 4, range_count 20, ranges 24 (Appendix C: 40 bytes for one)', () => {
    const bytes = encode('NEXT_PORTION', { id: ID, ranges: [{ left: 1048576n, right: 5242880n }] });
    assert.deepEqual(bytes, Buffer.concat([u32(0x22), ID, u32(1), byteRange(1048576n, 5242880n)]));
    assert.equal(bytes.length, 40);
  });

  it('NEXT_PORTION_MULTIDEV: code 0x23 (not the Go agent 0x21), id 4, dev 20/24, count 28, ranges 32', () => {
    const bytes = encode('NEXT_PORTION_MULTIDEV', {
      id: ID,
      device: { major: 8, minor: 16 },
      ranges: [{ left: 0n, right: 16384n }, { left: 1n << 30n, right: (1n << 30n) + 32768n }],
    });
    assert.deepEqual(
      bytes,
      Buffer.concat([u32(0x23), ID, i32(8), i32(16), u32(2), byteRange(0n, 16384n), byteRange(1n << 30n, (1n << 30n) + 32768n)]),
    );
    assert.equal(bytes.length, 32 + 2 * 16);
  });
});

describe('snapstore pipe events (spec §4.3, Appendix C)', () => {
  it('ACK {0x01, 0}: success; a negative result is an errno', () => {
    assert.deepEqual(decodeEvent(Buffer.concat([u32(1), u32(0)])), { type: 'ack', errno: 0, code: null });
    assert.deepEqual(decodeEvent(Buffer.concat([u32(1), i32(-19)])), { type: 'ack', errno: 19, code: 'ENODEV' });
  });

  it('HALFFILL {0x41, lo, hi}: filled bytes', () => {
    assert.deepEqual(decodeEvent(Buffer.concat([u32(0x41), u32(16384), u32(0)])), { type: 'halffill', filledBytes: 16384n });
    assert.deepEqual(decodeEvent(Buffer.concat([u32(0x41), u32(0x00004000), u32(2)])), {
      type: 'halffill',
      filledBytes: (2n << 32n) | 0x4000n,
    });
  });

  it('OVERFLOW {0x42, (u32)-EINVAL, lo, hi}: errno and filled bytes', () => {
    assert.deepEqual(decodeEvent(Buffer.concat([u32(0x42), u32(0xffffffea), u32(6291456), u32(0)])), {
      type: 'overflow',
      errno: 22,
      code: 'EINVAL',
      filledBytes: 6291456n,
    });
  });

  it('TERMINATE {0x43, lo, hi}: the kernel sends 512-byte sectors; the event says bytes', () => {
    // Appendix C: 12288 sectors = 6 MiB.
    assert.deepEqual(decodeEvent(Buffer.concat([u32(0x43), u32(12288), u32(0)])), { type: 'terminate', filledBytes: 6291456n });
    assert.deepEqual(decodeEvent(Buffer.concat([u32(0x43), u32(0), u32(1)])), { type: 'terminate', filledBytes: (1n << 32n) * 512n });
  });

  it('anything else is passed on raw: INVALID 0xFF, a wrong size, a stub', () => {
    const invalid = u32(0xff);
    assert.deepEqual(decodeEvent(invalid), { type: 'unknown', code: 0xff, bytes: invalid });
    const longAck = Buffer.concat([u32(1), u32(0), u32(0)]);
    assert.deepEqual(decodeEvent(longAck), { type: 'unknown', code: 1, bytes: longAck });
    assert.deepEqual(decodeEvent(Buffer.from([1, 0])), { type: 'unknown', code: null, bytes: Buffer.from([1, 0]) });
  });
});

describe('snapstore pipe reader thread (on a FIFO)', () => {
  let dir: string;
  let counter = 0;
  const makeFifo = () => {
    const fifo = path.join(dir, `pipe-${counter++}`);
    execFileSync('mkfifo', [fifo]);
    return fifo;
  };

  before(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'snapstore-pipe-'));
  });
  after(() => {
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('delivers each event written to the device, decoded', async () => {
    const fifo = makeFifo();
    const pipe = await SnapstorePipe.open(fifo);
    const writer = fs.openSync(fifo, 'w'); // does not block: the pipe holds the read side
    try {
      const send = async <T>(event: string, bytes: Buffer): Promise<T> => {
        const received = once(pipe, event);
        fs.writeSync(writer, bytes);
        return ((await received) as [T])[0];
      };
      assert.deepEqual(await send('ack', Buffer.concat([u32(1), u32(0)])), { type: 'ack', errno: 0, code: null });
      assert.deepEqual(await send('halffill', Buffer.concat([u32(0x41), u32(0), u32(1)])), {
        type: 'halffill',
        filledBytes: 1n << 32n,
      });
      assert.deepEqual(await send('overflow', Buffer.concat([u32(0x42), u32(0xffffffea), u32(32768), u32(0)])), {
        type: 'overflow',
        errno: 22,
        code: 'EINVAL',
        filledBytes: 32768n,
      });
      assert.deepEqual(await send('terminate', Buffer.concat([u32(0x43), u32(12288), u32(0)])), {
        type: 'terminate',
        filledBytes: 6291456n,
      });
    } finally {
      await pipe.close();
      fs.closeSync(writer);
    }
  });

  it('writes each command whole, in one write(), on the pipe fd', async () => {
    const fifo = makeFifo();
    const pipe = await SnapstorePipe.open(fifo);
    // The FIFO loops the pipe's own writes back to its reader, as unknown events.
    const echoed = async (action: () => Promise<void>): Promise<Buffer> => {
      const received = once(pipe, 'unknown');
      await action();
      return ((await received) as [UnknownEvent])[0].bytes;
    };
    try {
      await assert.rejects(pipe.nextPortion([{ offset: 0, length: 16384 }]), /initiate\(\) first/);
      const device = { major: 8, minor: 16 };
      assert.deepEqual(
        await echoed(() => pipe.initiate(ID, { major: 8, minor: 0 }, [device], 64n << 20n)),
        encode('INITIATE', { id: ID, emptyLimit: 64n << 20n, storage: { major: 8, minor: 0 }, devices: [device] }),
      );
      assert.deepEqual(pipe.snapstoreId, ID);
      await assert.rejects(pipe.initiate(ID, 'memory', [device], 0), /one pipe per snapstore/);
      assert.deepEqual(
        await echoed(() => pipe.nextPortion([{ offset: 1 << 20, length: 4 << 20 }])),
        Buffer.concat([u32(0x22), ID, u32(1), byteRange(1048576n, 5242880n)]),
      );
      assert.deepEqual(
        await echoed(() => pipe.nextPortionMultidev({ major: 253, minor: 0 }, [{ offset: 0n, length: 16384n }])),
        Buffer.concat([u32(0x23), ID, i32(253), i32(0), u32(1), byteRange(0n, 16384n)]),
      );
      await assert.rejects(pipe.nextPortion([{ offset: 512, length: 100 }]), /aligned to 512/);
    } finally {
      await pipe.close();
    }
  });

  it('reports end of file as an error and stops reading', async () => {
    const pipe = await SnapstorePipe.open('/dev/null');
    const [err] = (await once(pipe, 'error')) as [Error];
    assert.ok(isSystemError(err, 'EOF'));
    assert.equal(err.syscall, 'read');
    await pipe.close();
  });

  it('rejects an open failure with the errno code', async () => {
    await assert.rejects(SnapstorePipe.open(path.join(dir, 'missing')), (err) => isSystemError(err, 'ENOENT') && err.syscall === 'open');
  });

  it('emits nothing once close() is called, and rejects later writes with EBADF', async () => {
    const fifo = makeFifo();
    const pipe = await SnapstorePipe.open(fifo);
    const writer = fs.openSync(fifo, 'w');
    pipe.on('ack', () => assert.fail('event after close()'));
    fs.writeSync(writer, Buffer.concat([u32(1), u32(0)])); // may already be read and queued
    const closed = pipe.close();
    fs.closeSync(writer);
    await closed;
    await new Promise((resolve) => setImmediate(resolve));
    await assert.rejects(pipe.initiate(ID, 'memory', [{ major: 8, minor: 0 }], 0), (err) => isSystemError(err, 'EBADF'));
  });

  // Each script must let its process exit by itself; a leaked thread, fd or TSFN would hang it.
  const runChild = (script: string, ...args: string[]) => {
    const result = spawnSync(process.execPath, ['-e', script, PIPE_MODULE, ...args], { timeout: 60_000, encoding: 'utf8' });
    assert.equal(result.signal, null, `child hung and was killed; stderr: ${result.stderr}`);
    assert.equal(result.status, 0, result.stderr);
    return result.stdout;
  };

  it('close() interrupts a read() blocked in the kernel and the process exits', () => {
    const fifo = makeFifo();
    const out = runChild(
      `const { SnapstorePipe } = require(process.argv[1]);
      (async () => {
        const pipe = await SnapstorePipe.open(process.argv[2]);
        await new Promise((r) => setTimeout(r, 200)); // let the reader block in read()
        await pipe.close();
        console.log('closed');
      })().catch((e) => { console.error(e); process.exit(1); });`,
      fifo,
    );
    assert.equal(out, 'closed\n');
  });

  it('survives many open/close cycles, closing before the reader reaches read()', () => {
    const fifo = makeFifo();
    const out = runChild(
      `const { SnapstorePipe } = require(process.argv[1]);
      (async () => {
        for (let i = 0; i < 300; i++) {
          const pipe = await SnapstorePipe.open(process.argv[2]);
          if (i % 3 === 1) await new Promise((r) => setImmediate(r));
          await pipe.close();
        }
        const pipes = await Promise.all(Array.from({ length: 16 }, () => SnapstorePipe.open(process.argv[2])));
        await Promise.all(pipes.map((p) => p.close()));
        console.log('done');
      })().catch((e) => { console.error(e); process.exit(1); });`,
      fifo,
    );
    assert.equal(out, 'done\n');
  });

  it('exits after events were delivered and the pipe closed', () => {
    const fifo = makeFifo();
    const out = runChild(
      `const fs = require('fs');
      const { SnapstorePipe } = require(process.argv[1]);
      (async () => {
        const pipe = await SnapstorePipe.open(process.argv[2]);
        const writer = fs.openSync(process.argv[2], 'w');
        const got = new Promise((r) => pipe.once('terminate', r));
        fs.writeSync(writer, Buffer.from([0x43, 0, 0, 0, 0, 0x30, 0, 0, 0, 0, 0, 0]));
        const event = await got;
        await pipe.close();
        fs.closeSync(writer);
        console.log(String(event.filledBytes));
      })().catch((e) => { console.error(e); process.exit(1); });`,
      fifo,
    );
    assert.equal(out, `${12288 * 512}\n`);
  });
});
