// The digests route and the changes route's zero marking over HTTPS, against an image whose
// digests and zero blocks are computed here independently (node:crypto's streaming SHA-256,
// byte loops), through the real O_DIRECT reader.
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import https from 'node:https';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, beforeEach, describe, test } from 'node:test';
import { FakeAgentService } from './helpers/fake-service';
import { json, randomFile, startServer, tempDir, type Response, type TestServer } from './helpers/server';
import { guardReads } from '../../src/core/image';

const KiB = 1024;
const MiB = 1024 * KiB;
// Odd, so the last block of any size is short and unaligned.
const SIZE = 5 * MiB + 12345;
/** Zero stretches of the image: whole 64 KiB blocks, whole 256 KiB CBT blocks, and parts of blocks. */
const ZERO_STRETCHES: Array<[number, number]> = [[256 * KiB, MiB], [2 * MiB, 2 * MiB + 64 * KiB], [4 * MiB, 5 * MiB], [3 * MiB + 100, 3 * MiB + 200]];
const BIG_SIZE = 128 * MiB;
const TIMEOUT = { timeout: 60_000 };

let dir: string;
let data: Buffer;
let service: FakeAgentService;
let server: TestServer;
let snapshotId: string;

before(async () => {
  dir = tempDir('csa-api-digests-');
  const image = randomFile(dir, 'vda.img', SIZE);
  data = image.data;
  for (const [start, end] of ZERO_STRETCHES) data.fill(0, start, end);
  fs.writeFileSync(image.file, data);
  const large = randomFile(dir, 'vdc.img', BIG_SIZE);
  service = new FakeAgentService([
    { name: 'vda', file: image.file, size: SIZE, tracked: true, mapped: true },
    { name: 'vdc', file: large.file, size: BIG_SIZE, tracked: true, mapped: true },
  ]);
  snapshotId = (await service.createSnapshot(['vda', 'vdc'])).id;
  server = await startServer({ service });
});

after(async () => {
  await server.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

beforeEach(() => {
  service.failReadsAfter = undefined;
  service.zeros.clear();
  for (const snapshot of service.snapshots.values()) snapshot.state = { status: 'ok' };
});

const digestPath = (query = '', disk = 'vda', slash = ''): string => `/api/v1/snapshots/${snapshotId}/digests/${disk}${slash}${query === '' ? '' : `?${query}`}`;
const fetchDigests = (query = '', headers: Record<string, string> = {}, method = 'GET', disk = 'vda'): Promise<Response> =>
  server.request(digestPath(query, disk), { method, headers });

interface Line {
  offset: number;
  length: number;
  digest: string;
  zero: boolean;
}

/** What the route must say for blocks of `blockSize` over [start, start + length), from the bytes themselves. */
function expected(blockSize: number, start = 0, length = SIZE - start): Line[] {
  const lines: Line[] = [];
  for (let offset = start; offset < start + length; offset += blockSize) {
    const block = data.subarray(offset, Math.min(offset + blockSize, start + length));
    lines.push({
      offset, length: block.length,
      digest: crypto.createHash('sha256').update(block).digest('hex'),
      zero: block.every((byte) => byte === 0),
    });
  }
  return lines;
}

function parseNdjson(response: Response): { header: Record<string, unknown>; lines: Line[] } {
  assert.equal(response.status, 200, response.body.toString().slice(0, 300));
  assert.equal(response.headers['content-type'], 'application/x-ndjson');
  const text = response.body.toString();
  assert.ok(text.endsWith('\n'), 'every line ends with a newline');
  const [header, ...lines] = text.slice(0, -1).split('\n').map((line) => JSON.parse(line) as Record<string, unknown>);
  return { header, lines: lines as unknown as Line[] };
}

function parseBinary(response: Response): { header: Record<string, unknown>; lines: Line[] } {
  assert.equal(response.status, 200);
  assert.equal(response.headers['content-type'], 'application/vnd.coriolis.digests');
  const newline = response.body.indexOf(0x0a);
  const header = JSON.parse(response.body.subarray(0, newline).toString()) as { block_size: number; start: number; length: number };
  const records = response.body.subarray(newline + 1);
  assert.equal(records.length % 33, 0, 'whole 33-byte records');
  const lines: Line[] = [];
  for (let at = 0; at < records.length; at += 33) {
    const offset = header.start + (at / 33) * header.block_size;
    const flags = records[at + 32];
    assert.equal(flags & ~1, 0, 'only bit 0 is used');
    lines.push({ offset, length: Math.min(header.block_size, header.start + header.length - offset), digest: records.subarray(at, at + 32).toString('hex'), zero: flags === 1 });
  }
  return { header, lines };
}

const headerOf = (blockSize: number, start: number, length: number): Record<string, unknown> => ({
  snapshot_id: snapshotId, tracked_disk_id: 'vda', algorithm: 'sha256', block_size: blockSize, start, length, image_size: SIZE,
});

async function readersClosed(): Promise<void> {
  for (let i = 0; i < 500 && service.openReaders !== 0; i++) await sleep(10);
  assert.equal(service.openReaders, 0, 'every image reader is closed');
}

function assertError(response: Response, status: number, error: string, details: RegExp): void {
  assert.equal(response.status, status, response.body.toString());
  const body = json(response) as { error: string; details: string };
  assert.equal(body.error, error);
  assert.match(body.details, details);
}

describe('digests: formats and windows', () => {
  test('ndjson by default, for */* and when asked: the header, then every block with its SHA-256 and zero flag', TIMEOUT, async () => {
    for (const headers of [{}, { Accept: '*/*' }, { Accept: 'application/x-ndjson' }, { Accept: 'application/*' }, { Accept: 'text/html, application/x-ndjson;q=0.5' }] as Array<Record<string, string>>) {
      const { header, lines } = parseNdjson(await fetchDigests('', headers));
      assert.deepEqual(header, headerOf(4 * MiB, 0, SIZE), JSON.stringify(headers));
      assert.deepEqual(lines, expected(4 * MiB));
    }
    const { lines } = parseNdjson(await fetchDigests('block_size=65536'));
    assert.deepEqual(lines, expected(64 * KiB));
    assert.ok(lines.some((line) => line.zero) && lines.some((line) => !line.zero), 'the image has both kinds of blocks');
    // The short last block: 12345 bytes.
    assert.equal(lines.at(-1)!.length, 12345);
    await readersClosed();
  });

  test('the binary format: the same header line, then 33 bytes per block', TIMEOUT, async () => {
    for (const blockSize of [64 * KiB, MiB, 4 * MiB]) {
      const { header, lines } = parseBinary(await fetchDigests(`block_size=${blockSize}`, { Accept: 'application/vnd.coriolis.digests' }));
      assert.deepEqual(header, headerOf(blockSize, 0, SIZE));
      assert.deepEqual(lines, expected(blockSize));
    }
    // Preferred by quality over ndjson.
    const preferred = await fetchDigests('', { Accept: 'application/x-ndjson;q=0.1, application/vnd.coriolis.digests' });
    assert.equal(preferred.headers['content-type'], 'application/vnd.coriolis.digests');
    await readersClosed();
  });

  test('windows: start and length, a window ending inside a block, the trailing slash', TIMEOUT, async () => {
    const cases: Array<[string, number, number, number]> = [
      ['block_size=65536&start=1048576&length=1048581', 64 * KiB, MiB, MiB + 5],
      ['block_size=1048576&start=2097152', MiB, 2 * MiB, SIZE - 2 * MiB],
      [`block_size=1048576&start=5242880&length=${SIZE - 5 * MiB}`, MiB, 5 * MiB, SIZE - 5 * MiB],
      ['length=1', 4 * MiB, 0, 1],
      [`start=4194304&length=${SIZE - 4 * MiB}`, 4 * MiB, 4 * MiB, SIZE - 4 * MiB],
    ];
    for (const [query, blockSize, start, length] of cases) {
      const { header, lines } = parseNdjson(await fetchDigests(query));
      assert.deepEqual(header, headerOf(blockSize, start, length), query);
      assert.deepEqual(lines, expected(blockSize, start, length), query);
    }
    const slashed = await server.request(digestPath('block_size=65536&length=65536', 'vda', '/'));
    assert.deepEqual(parseNdjson(slashed).lines, expected(64 * KiB, 0, 64 * KiB));
    await readersClosed();
  });

  test('HEAD: the status and type of the GET, no body, no reads', TIMEOUT, async () => {
    const before = service.bytesRequested;
    const head = await fetchDigests('block_size=65536', { Accept: 'application/vnd.coriolis.digests' }, 'HEAD');
    assert.equal(head.status, 200);
    assert.equal(head.headers['content-type'], 'application/vnd.coriolis.digests');
    assert.equal(head.body.length, 0);
    assertError(await fetchDigests('start=1', {}, 'GET'), 400, 'Bad Request', /multiple of block_size/);
    assert.equal((await fetchDigests('start=1', {}, 'HEAD')).status, 400);
    assert.equal(service.bytesRequested, before);
    await readersClosed();
  });

  test('the zero blocks found are kept with the export', TIMEOUT, async () => {
    parseNdjson(await fetchDigests('block_size=65536'));
    const zeroBlocks = expected(64 * KiB).filter((line) => line.zero);
    const known = service.zeros.get(`${snapshotId}/vda`)!.ranges;
    assert.equal(known.reduce((sum, range) => sum + range.length, 0), zeroBlocks.reduce((sum, line) => sum + line.length, 0));
    for (const line of zeroBlocks) assert.ok(known.some((range) => range.offset <= line.offset && range.offset + range.length >= line.offset + line.length));
  });
});

describe('digests: refusals', () => {
  test('every malformed or out-of-range parameter is a 400 naming it', TIMEOUT, async () => {
    const cases: Array<[string, RegExp]> = [
      ['block_size=0', /block_size must be a power of two/],
      ['block_size=1000', /block_size must be a power of two/],
      ['block_size=32768', /block_size must be a power of two from 65536 to 67108864/],
      ['block_size=65535', /block_size must be a power of two/],
      ['block_size=98304', /block_size must be a power of two/],
      ['block_size=134217728', /block_size must be a power of two/],
      ['block_size=abc', /block_size must be an integer/],
      ['block_size=-65536', /block_size must be an integer/],
      ['block_size=6.5e4', /block_size must be an integer/],
      ['block_size=0x10000', /block_size must be an integer/],
      ['block_size=65536&block_size=65536', /block_size is given 2 times/],
      ['block_size=99999999999999999999', /block_size must be an integer/],
      ['start=4096', /start 4096 is not a multiple of block_size 4194304/],
      ['block_size=65536&start=100', /not a multiple/],
      ['start=-1', /start must be an integer/],
      ['start=x', /start must be an integer/],
      [`start=${8 * MiB}`, /not within the image/],
      ['start=1&start=2', /start is given 2 times/],
      ['length=0', /length must be an integer number of bytes from 1/],
      ['length=-5', /length must be an integer/],
      ['length=1.5', /length must be an integer/],
      [`length=${SIZE + 1}`, /passes the end of the image/],
      [`start=4194304&length=${SIZE}`, /passes the end of the image/],
    ];
    for (const [query, details] of cases) assertError(await fetchDigests(query), 400, 'Bad Request', details);
    await readersClosed();
  });

  test('an Accept that allows neither type is a 406 naming both', TIMEOUT, async () => {
    for (const accept of ['application/json', 'text/plain', 'application/octet-stream', 'application/x-ndjson;q=0']) {
      assertError(await fetchDigests('', { Accept: accept }), 406, 'Not Acceptable', /application\/x-ndjson or application\/vnd\.coriolis\.digests/);
    }
    await readersClosed();
  });

  test('unknown snapshot or disk: 404; a failed snapshot: 409, before any byte', TIMEOUT, async () => {
    assertError(await server.request('/api/v1/snapshots/1/digests/vda'), 404, 'Not Found', /snapshot 1 not found/);
    assertError(await fetchDigests('', {}, 'GET', 'vdz'), 404, 'Not Found', /vdz/);
    service.failSnapshot(snapshotId, 'snapstore of vda overflowed');
    assertError(await fetchDigests(), 409, 'Conflict', /has failed: snapstore of vda overflowed/);
    assert.equal((await fetchDigests('', {}, 'HEAD')).status, 409);
    await readersClosed();
  });

  test('a read error on the first block is a clean 500; after the first byte it cuts the connection', TIMEOUT, async () => {
    service.failReadsAfter = 0;
    assertError(await fetchDigests(), 500, 'Server error', /reading|internal error/);
    // 1024 blocks (well over a batch of lines) go out before the failure.
    service.failReadsAfter = 64 * MiB;
    await assert.rejects(fetchDigests('block_size=65536', {}, 'GET', 'vdc'), (err: NodeJS.ErrnoException) => {
      assert.match(`${err.code} ${err.message}`, /ECONNRESET|aborted/);
      return true;
    });
    await readersClosed();
  });
});

describe('digests: streaming', () => {
  test('a client that goes away stops the reads', TIMEOUT, async () => {
    const openImage = service.openImage.bind(service);
    // Slow reads, so the pass is far from done when the client leaves.
    service.openImage = async (id, disk) => {
      const reader = await openImage(id, disk);
      return guardReads(reader, async (_offset, _length, use) => {
        await sleep(20);
        return use();
      });
    };
    try {
      const before = service.bytesRequested;
      await new Promise<void>((resolve, reject) => {
        const req = https.request({
          host: '127.0.0.1', servername: 'localhost', port: server.port, path: digestPath('block_size=65536', 'vdc'), ca: server.ca,
          cert: fs.readFileSync(server.certs.clientCert), key: fs.readFileSync(server.certs.clientKey), agent: false,
        }, (res) => {
          res.once('data', () => {
            req.destroy();
            resolve();
          });
        });
        req.on('error', (err) => (err.message.includes('socket hang up') || (err as NodeJS.ErrnoException).code === 'ECONNRESET' ? resolve() : reject(err)));
        req.end();
      });
      await readersClosed();
      const read = service.bytesRequested - before;
      // A window of reads in flight, not the 128 MiB image.
      assert.ok(read < 16 * MiB, `read ${read} bytes`);
      await sleep(200);
      assert.equal(service.bytesRequested - before, read, 'no read after the reader closed');
    } finally {
      service.openImage = openImage;
    }
  });

  test('a whole large image at the smallest block size: every line, in order', TIMEOUT, async () => {
    const response = await fetchDigests('block_size=65536', { Accept: 'application/vnd.coriolis.digests' }, 'GET', 'vdc');
    const big = fs.readFileSync(path.join(dir, 'vdc.img'));
    const { lines } = parseBinary(response);
    assert.equal(lines.length, BIG_SIZE / (64 * KiB));
    lines.forEach((line, index) => {
      assert.equal(line.digest, crypto.createHash('sha256').update(big.subarray(index * 64 * KiB, (index + 1) * 64 * KiB)).digest('hex'), `block ${index}`);
    });
    await readersClosed();
  });
});

describe('changes?markZeroRanges', () => {
  const changesPath = (query: string): string => `/api/v1/snapshots/${snapshotId}/changes/vda?${query}`;
  const CBT = 256 * KiB;

  /** The ranges split at CBT blocks where the bytes switch between all zeros and not, from the bytes. */
  function marked(ranges: Array<{ offset: number; length: number }>): Array<{ start_offset: number; length: number; zero: boolean }> {
    const out: Array<{ start_offset: number; length: number; zero: boolean }> = [];
    for (const range of ranges) {
      let first = true;
      for (let offset = range.offset; offset < range.offset + range.length; offset += CBT) {
        const length = Math.min(CBT, range.offset + range.length - offset);
        const zero = data.subarray(offset, offset + length).every((byte) => byte === 0);
        const last = out.at(-1);
        if (!first && last!.zero === zero) last!.length += length;
        else out.push({ start_offset: offset, length, zero });
        first = false;
      }
    }
    return out;
  }

  test('full and incremental answers are split where the image switches between zeros and data', TIMEOUT, async () => {
    const full = json(await server.request(changesPath('markZeroRanges=true'))) as { ranges: unknown[]; backup_type: string };
    assert.equal(full.backup_type, 'full');
    assert.deepEqual(full.ranges, marked([{ offset: 0, length: SIZE }]));
    assert.equal(full.ranges.length, 5);
    const incremental = json(await server.request(changesPath('markZeroRanges=True&previousGenerationID=80564045-085a-4b1c-82d4-7410bce63d4a&previousNumber=2'))) as { ranges: unknown[] };
    // The fake's ranges: [0, 256 KiB) data and [1 MiB, 1.5 MiB) data.
    assert.deepEqual(incremental.ranges, marked([{ offset: 0, length: CBT }, { offset: MiB, length: 2 * CBT }]));
    await readersClosed();
  });

  test('a pass records its zeros with the export, and the next pass does not read them again', TIMEOUT, async () => {
    json(await server.request(changesPath('markZeroRanges=1')));
    const known = service.zeros.get(`${snapshotId}/vda`)!.ranges;
    assert.deepEqual(known, marked([{ offset: 0, length: SIZE }]).filter((range) => range.zero).map((range) => ({ offset: range.start_offset, length: range.length })));
    const before = service.bytesRequested;
    json(await server.request(changesPath('markZeroRanges=1')));
    const zeroBytes = known.reduce((sum, range) => sum + range.length, 0);
    assert.equal(service.bytesRequested - before, SIZE - zeroBytes);
  });

  test('without the flag (or with it false) the answer is exactly the old one, and nothing is read', TIMEOUT, async () => {
    const before = service.bytesRequested;
    for (const query of ['', 'markZeroRanges=false', 'markZeroRanges=0', 'markZeroRanges=']) {
      const response = await server.request(changesPath(query));
      assert.equal(response.body.toString(), JSON.stringify({
        tracked_disk_id: 'vda', snapshot_id: snapshotId, cbt_block_size_bytes: CBT, backup_type: 'full', ranges: [{ start_offset: 0, length: SIZE }],
      }), query);
    }
    assert.equal(service.bytesRequested, before);
  });

  test('a malformed flag is a 400; a failed snapshot a 409', TIMEOUT, async () => {
    for (const value of ['yes', 'on', '2', 'truee']) {
      assertError(await server.request(changesPath(`markZeroRanges=${value}`)), 400, 'Bad Request', /markZeroRanges must be a boolean/);
    }
    assertError(await server.request(changesPath('markZeroRanges=true&markZeroRanges=false')), 400, 'Bad Request', /given 2 times/);
    service.failSnapshot(snapshotId, 'overflow');
    assertError(await server.request(changesPath('markZeroRanges=true')), 409, 'Conflict', /has failed/);
    await readersClosed();
  });
});
