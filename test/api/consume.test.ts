import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import https from 'node:https';
import path from 'node:path';
import { promisify } from 'node:util';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, beforeEach, describe, test } from 'node:test';
import { layoutResponse, selectRanges } from '../../src/api/consume';
import { HttpError } from '../../src/api/errors';
import { FakeAgentService } from './helpers/fake-service';
import { json, randomFile, startServer, tempDir, type Response, type TestServer } from './helpers/server';

const KiB = 1024;
const MiB = 1024 * KiB;
// Odd, so the last chunk is short and unaligned.
const SIZE = 3 * MiB + 12345;
const BIG_SIZE = 128 * MiB;
const CHUNK = 64 * KiB;
const READ_AHEAD = 4;

let dir: string;
let data: Buffer;
let big: Buffer;
let service: FakeAgentService;
let server: TestServer;
let snapshotId: string;

before(async () => {
  dir = tempDir('csa-api-consume-');
  const small = randomFile(dir, 'vda.img', SIZE);
  data = small.data;
  const large = randomFile(dir, 'vdc.img', BIG_SIZE);
  big = large.data;
  service = new FakeAgentService([
    { name: 'vda', file: small.file, size: SIZE, tracked: true, mapped: true },
    { name: 'vdc', file: large.file, size: BIG_SIZE, tracked: true, mapped: true },
  ]);
  snapshotId = (await service.createSnapshot(['vda', 'vdc'])).id;
  server = await startServer({ service, consume: { chunkSize: CHUNK, firstChunkSize: 16 * KiB, readAhead: READ_AHEAD, maxRanges: 8 } });
});

after(async () => {
  await server.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

beforeEach(() => {
  service.failReadsAfter = undefined;
  for (const snapshot of service.snapshots.values()) snapshot.state = { status: 'ok' };
});

const consumePath = (disk = 'vda', slash = ''): string => `/api/v1/snapshots/${snapshotId}/consume/${disk}${slash}`;
const fetchImage = (headers: Record<string, string> = {}, method = 'GET', disk = 'vda'): Promise<Response> =>
  server.request(consumePath(disk), { method, headers });

/** Waits until every reader the service handed out has been closed. */
async function readersClosed(): Promise<void> {
  for (let i = 0; i < 200 && service.openReaders !== 0; i++) await sleep(10);
  assert.equal(service.openReaders, 0, 'every image reader is closed');
}

function assertSingle(response: Response, start: number, end: number): void {
  assert.equal(response.status, 206, response.body.toString().slice(0, 200));
  assert.equal(response.headers['content-range'], `bytes ${start}-${end}/${SIZE}`);
  assert.equal(response.headers['content-length'], String(end - start + 1));
  assert.equal(response.headers['content-type'], 'application/octet-stream');
  assert.equal(response.headers['accept-ranges'], 'bytes');
  assert.ok(response.body.equals(data.subarray(start, end + 1)), `bytes ${start}-${end} match the image`);
}

interface Part {
  headers: Record<string, string>;
  body: Buffer;
}

/** A strict multipart/byteranges parser: any framing error fails the test. */
function parseMultipart(response: Response): Part[] {
  const match = /^multipart\/byteranges; boundary=(\S+)$/.exec(String(response.headers['content-type']));
  assert.ok(match, `multipart content type, got ${String(response.headers['content-type'])}`);
  const delimiter = Buffer.from(`--${match[1]}`);
  const body = response.body;
  const parts: Part[] = [];
  let position = body.indexOf(delimiter);
  assert.equal(position, 0, 'the body starts with the first delimiter');
  for (;;) {
    position += delimiter.length;
    if (body.subarray(position, position + 4).toString() === '--\r\n') {
      assert.equal(position + 4, body.length, 'nothing after the closing delimiter');
      return parts;
    }
    assert.equal(body.subarray(position, position + 2).toString(), '\r\n');
    const headerEnd: number = body.indexOf('\r\n\r\n', position);
    const headers: Record<string, string> = {};
    for (const line of body.subarray(position + 2, headerEnd).toString().split('\r\n')) {
      const colon = line.indexOf(':');
      headers[line.slice(0, colon).toLowerCase()] = line.slice(colon + 1).trim();
    }
    const range = /^bytes (\d+)-(\d+)\/(\d+)$/.exec(headers['content-range'] ?? '');
    assert.ok(range, 'each part has a Content-Range');
    const start: number = headerEnd + 4;
    const length = Number(range[2]) - Number(range[1]) + 1;
    parts.push({ headers, body: body.subarray(start, start + length) });
    assert.equal(body.subarray(start + length, start + length + 2).toString(), '\r\n');
    position = start + length + 2;
    assert.equal(body.indexOf(delimiter, position), position, 'the next delimiter follows the part');
  }
}

describe('range selection', () => {
  const select = (range?: string, ifRange?: string, size = 1000): ReturnType<typeof selectRanges> => selectRanges(size, range, ifRange, 4);
  const refused = (fn: () => unknown, details: RegExp, size = 1000): void => {
    assert.throws(fn, (err: unknown) => {
      assert.ok(err instanceof HttpError);
      assert.equal(err.status, 416);
      assert.equal(err.headers['Content-Range'], `bytes */${size}`);
      assert.match(err.message, details);
      return true;
    });
  };

  test('whole image: no Range, empty Range, another unit, any If-Range', () => {
    assert.deepEqual(select(undefined), { kind: 'whole' });
    assert.deepEqual(select(''), { kind: 'whole' });
    assert.deepEqual(select('items=0-5'), { kind: 'whole' });
    assert.deepEqual(select('bytes=0-5', '"etag"'), { kind: 'whole' });
  });

  test('single, open-ended, suffix, clamped, case-insensitive unit, several in order', () => {
    assert.deepEqual(select('bytes=0-0'), { kind: 'ranges', ranges: [{ start: 0, end: 0 }] });
    assert.deepEqual(select('bytes=990-'), { kind: 'ranges', ranges: [{ start: 990, end: 999 }] });
    assert.deepEqual(select('bytes=-10'), { kind: 'ranges', ranges: [{ start: 990, end: 999 }] });
    assert.deepEqual(select('bytes=-5000'), { kind: 'ranges', ranges: [{ start: 0, end: 999 }] });
    assert.deepEqual(select('bytes=500-99999'), { kind: 'ranges', ranges: [{ start: 500, end: 999 }] });
    assert.deepEqual(select('Bytes=1-2'), { kind: 'ranges', ranges: [{ start: 1, end: 2 }] });
    assert.deepEqual(select('bytes=10-19, 0-4,15-30'), { kind: 'ranges', ranges: [{ start: 10, end: 19 }, { start: 0, end: 4 }, { start: 15, end: 30 }] });
  });

  test('416: nothing satisfiable, malformed, too many, empty image', () => {
    refused(() => select('bytes=1000-'), /no range/);
    refused(() => select('bytes=5000-6000'), /no range/);
    refused(() => select('bytes=5-2'), /no range/);
    refused(() => select('bytes=-0'), /no range/);
    refused(() => select('bytes=abc'), /malformed/);
    refused(() => select('bytes=1-2,x'), /malformed/);
    refused(() => select('bytes=-'), /malformed/);
    refused(() => select('bytes=0-1,2-3,4-5,6-7,8-9'), /5 ranges in one request; at most 4/);
    refused(() => select('bytes=0-0', undefined, 0), /no range/, 0);
  });

  test('layout: exact Content-Length for the whole, a range, and multipart framing', () => {
    const whole = layoutResponse({ kind: 'whole' }, 1000);
    assert.equal(whole.status, 200);
    assert.equal(whole.headers['Content-Length'], '1000');
    const multi = layoutResponse({ kind: 'ranges', ranges: [{ start: 0, end: 9 }, { start: 990, end: 999 }] }, 1000);
    const framing = multi.pieces.filter((piece) => Buffer.isBuffer(piece)).reduce((sum, piece) => sum + piece.length, 0);
    assert.equal(Number(multi.headers['Content-Length']), framing + 20);
  });
});

describe('consume over HTTPS', () => {
  test('no Range: 200 with the whole image, with and without the trailing slash', async () => {
    for (const slash of ['', '/']) {
      const response = await server.request(consumePath('vda', slash));
      assert.equal(response.status, 200);
      assert.equal(response.headers['content-length'], String(SIZE));
      assert.equal(response.headers['accept-ranges'], 'bytes');
      assert.equal(response.headers['content-type'], 'application/octet-stream');
      assert.ok(response.body.equals(data));
    }
    await readersClosed();
  });

  test('single ranges: first byte, unaligned spans across chunks, open-ended, suffix, clamped end', async () => {
    assertSingle(await fetchImage({ Range: 'bytes=0-0' }), 0, 0);
    assertSingle(await fetchImage({ Range: 'bytes=100-199' }), 100, 199);
    assertSingle(await fetchImage({ Range: `bytes=${CHUNK - 7}-${5 * CHUNK + 3}` }), CHUNK - 7, 5 * CHUNK + 3);
    assertSingle(await fetchImage({ Range: `bytes=${CHUNK}-${2 * CHUNK - 1}` }), CHUNK, 2 * CHUNK - 1);
    assertSingle(await fetchImage({ Range: 'bytes=3000000-' }), 3000000, SIZE - 1);
    assertSingle(await fetchImage({ Range: 'bytes=-1000' }), SIZE - 1000, SIZE - 1);
    assertSingle(await fetchImage({ Range: `bytes=-${SIZE + 5}` }), 0, SIZE - 1);
    assertSingle(await fetchImage({ Range: `bytes=${SIZE - 10}-${SIZE + 1000}` }), SIZE - 10, SIZE - 1);
    await readersClosed();
  });

  test('several ranges: multipart/byteranges in the order asked, overlaps honoured', async () => {
    const ranges: Array<[number, number]> = [[SIZE - 10, SIZE - 1], [0, 9], [CHUNK - 100, CHUNK + 100], [5, 14], [1000, 2 * MiB]];
    const response = await fetchImage({ Range: `bytes=${ranges.map(([start, end]) => `${start}-${end}`).join(',')}` });
    assert.equal(response.status, 206);
    assert.equal(Number(response.headers['content-length']), response.body.length);
    const parts = parseMultipart(response);
    assert.equal(parts.length, ranges.length);
    parts.forEach((part, index) => {
      const [start, end] = ranges[index];
      assert.equal(part.headers['content-range'], `bytes ${start}-${end}/${SIZE}`);
      assert.equal(part.headers['content-type'], 'application/octet-stream');
      assert.ok(part.body.equals(data.subarray(start, end + 1)), `part ${index}`);
    });
    await readersClosed();
  });

  test('unsatisfiable or malformed ranges: 416 with Content-Range */SIZE and a JSON reason', async () => {
    for (const range of [`bytes=${SIZE}-`, 'bytes=abc', 'bytes=5-2', 'bytes=0-1,2-3,4-5,6-7,8-9,10-11,12-13,14-15,16-17']) {
      const response = await fetchImage({ Range: range });
      assert.equal(response.status, 416, range);
      assert.equal(response.headers['content-range'], `bytes */${SIZE}`);
      assert.equal((json(response) as { error: string }).error, 'Range Not Satisfiable');
    }
    await readersClosed();
  });

  test('another unit or If-Range: the whole image', async () => {
    const variants: Array<Record<string, string>> = [{ Range: 'items=0-5' }, { Range: 'bytes=0-5', 'If-Range': 'Wed, 21 Oct 2015 07:28:00 GMT' }];
    for (const headers of variants) {
      const response = await fetchImage(headers);
      assert.equal(response.status, 200);
      assert.ok(response.body.equals(data));
    }
  });

  test('HEAD: the same status and exact Content-Length, no body, no reads', async () => {
    const before = service.bytesRequested;
    const whole = await fetchImage({}, 'HEAD');
    assert.equal(whole.status, 200);
    assert.equal(whole.headers['content-length'], String(SIZE));
    assert.equal(whole.body.length, 0);
    const range = await fetchImage({ Range: 'bytes=10-19' }, 'HEAD');
    assert.equal(range.status, 206);
    assert.equal(range.headers['content-range'], `bytes 10-19/${SIZE}`);
    assert.equal(range.headers['content-length'], '10');
    const multi = await fetchImage({ Range: 'bytes=0-1,5-6' }, 'HEAD');
    assert.equal(multi.status, 206);
    assert.ok(Number(multi.headers['content-length']) > 4);
    assert.equal(service.bytesRequested, before);
    await readersClosed();
  });

  test('a failed snapshot is a 409 before any byte; unknown snapshot or disk 404', async () => {
    service.failSnapshot(snapshotId, 'snapstore of vda overflowed');
    for (const method of ['GET', 'HEAD']) {
      const response = await fetchImage({ Range: 'bytes=0-99' }, method);
      assert.equal(response.status, 409, method);
      if (method === 'GET') assert.deepEqual(json(response), { error: 'Conflict', details: `snapshot ${snapshotId} has failed: snapstore of vda overflowed` });
    }
    assert.equal((await server.request(`/api/v1/snapshots/1/consume/vda`)).status, 404);
    assert.equal((await server.request(`/api/v1/snapshots/${snapshotId}/consume/vdz`)).status, 404);
    await readersClosed();
  });

  test('a read error before the first byte is a clean 500 JSON', async () => {
    service.failReadsAfter = 0;
    const response = await fetchImage({ Range: 'bytes=0-99' });
    assert.equal(response.status, 500);
    assert.deepEqual(json(response), { error: 'Server error', details: 'reading the snapshot image at offset 0 failed: EIO' });
    await readersClosed();
  });

  test('a read error after the headers destroys the connection: never a complete 200 or 206', async () => {
    service.failReadsAfter = 10 * CHUNK;
    const variants: Array<Record<string, string>> = [{}, { Range: `bytes=100-${20 * CHUNK}` }, { Range: `bytes=0-9,${20 * CHUNK}-${21 * CHUNK}` }];
    for (const headers of variants) {
      await assert.rejects(fetchImage(headers), (err: NodeJS.ErrnoException) => {
        assert.match(`${err.code} ${err.message}`, /ECONNRESET|aborted/);
        return true;
      }, JSON.stringify(headers));
    }
    // Bytes before the failure are still served.
    assertSingle(await fetchImage({ Range: `bytes=0-${5 * CHUNK}` }), 0, 5 * CHUNK);
    await readersClosed();
  });

  test('curl downloads a range and the whole image', { skip: !fs.existsSync('/usr/bin/curl') }, async () => {
    const output = path.join(dir, 'curl.out');
    // Asynchronously: the server runs in this process.
    const curl = (extra: string[]): Promise<unknown> => promisify(execFile)('curl', ['-sS', '--fail', '--max-time', '30', '--cacert', server.certs.caCert, '--cert', server.certs.clientCert, '--key', server.certs.clientKey,
      '-o', output, ...extra, `https://localhost:${server.port}${consumePath('vda', '/')}`]);
    await curl(['-r', '20000-1048575']);
    assert.ok(fs.readFileSync(output).equals(data.subarray(20000, 1048576)));
    await curl([]);
    assert.ok(fs.readFileSync(output).equals(data));
  });
});

describe('streaming: backpressure, aborts, parallel downloads', () => {
  test('a client that stops reading stops the reads; resuming delivers every byte', async () => {
    const before = service.bytesRequested;
    const received: Buffer[] = [];
    let resume!: () => void;
    const done = new Promise<void>((resolve, reject) => {
      const req = https.request({
        host: '127.0.0.1', servername: 'localhost', port: server.port, path: consumePath('vdc'), ca: server.ca,
        cert: fs.readFileSync(server.certs.clientCert), key: fs.readFileSync(server.certs.clientKey), agent: false,
      }, (res) => {
        res.pause();
        resume = () => {
          res.on('data', (chunk: Buffer) => received.push(chunk));
          res.on('end', resolve);
          res.resume();
        };
      });
      req.on('error', reject);
      req.end();
    });
    await sleep(500);
    const readWhilePaused = service.bytesRequested - before;
    // The window plus what the kernel's socket buffers and TLS hold; far from the whole image.
    assert.ok(readWhilePaused < 32 * MiB, `read ${readWhilePaused} bytes while the client was paused`);
    resume();
    await done;
    assert.ok(Buffer.concat(received).equals(big));
    await readersClosed();
  });

  test('each chunk goes back to the reader pool as soon as it is written, without waiting for the collector', async () => {
    const lent: Buffer[] = [];
    const openImage = service.openImage.bind(service);
    service.openImage = async (id, disk) => {
      const reader = await openImage(id, disk);
      return {
        path: reader.path, size: reader.size, logicalBlockSize: reader.logicalBlockSize, close: () => reader.close(),
        digest: (offset: number, length: number) => reader.digest(offset, length),
        read: async (offset: number, length: number) => {
          const chunk = await reader.read(offset, length);
          lent.push(chunk);
          return chunk;
        },
      };
    };
    try {
      const response = await fetchImage({ Range: 'bytes=100-1000000' });
      assert.ok(response.body.equals(data.subarray(100, 1000001)));
      assert.ok(lent.length > READ_AHEAD, `${lent.length} reads`);
      // Held here, so only recycling can have emptied them.
      for (let i = 0; i < 100 && lent.some((chunk) => chunk.length > 0); i++) await sleep(10);
      assert.deepEqual(lent.filter((chunk) => chunk.length > 0).map((chunk) => chunk.length), []);
    } finally {
      service.openImage = openImage;
    }
  });

  test('a client that goes away mid-download: the reader is closed, nothing leaks', async () => {
    await new Promise<void>((resolve, reject) => {
      const req = https.request({
        host: '127.0.0.1', servername: 'localhost', port: server.port, path: consumePath('vdc'), ca: server.ca,
        cert: fs.readFileSync(server.certs.clientCert), key: fs.readFileSync(server.certs.clientKey), agent: false,
      }, (res) => {
        let got = 0;
        res.on('data', (chunk: Buffer) => {
          got += chunk.length;
          if (got > 2 * MiB) {
            req.destroy();
            resolve();
          }
        });
      });
      req.on('error', (err) => (err.message.includes('socket hang up') || (err as NodeJS.ErrnoException).code === 'ECONNRESET' ? resolve() : reject(err)));
      req.end();
    });
    await readersClosed();
    // The server still serves.
    assertSingle(await fetchImage({ Range: 'bytes=0-99' }), 0, 99);
  });

  test('parallel downloads proceed together, and other requests are answered meanwhile', async () => {
    const agent = new https.Agent({ keepAlive: true, maxSockets: 8 });
    const slice = BIG_SIZE / 8;
    const downloads = Array.from({ length: 8 }, (_, index) => server.request(consumePath('vdc'), {
      headers: { Range: `bytes=${index * slice}-${(index + 1) * slice - 1}` }, agent,
    }));
    const listed = await server.request('/api/v1/snapshots');
    assert.equal(listed.status, 200);
    const responses = await Promise.all(downloads);
    responses.forEach((response, index) => {
      assert.equal(response.status, 206);
      assert.ok(response.body.equals(big.subarray(index * slice, (index + 1) * slice)), `download ${index}`);
    });
    agent.destroy();
    await readersClosed();
  });
});
