// What reaches the server below koa: requests Node's HTTP parser refuses, timeouts, CONNECT,
// Expect, a missing Host. Each must get the {error, details} JSON body, never an empty one or a
// dropped connection. Sent over raw TLS, since HTTP clients refuse to send most of these.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { after, before, describe, test } from 'node:test';
import type { AddressInfo } from 'node:net';
import tls from 'node:tls';
import bunyan from 'bunyan';
import { createApp } from '../../src/api/app';
import { createApiServer, listenApiServer } from '../../src/api/server';
import { silentLogger } from '../../src/core/log';
import { FakeAgentService, HEALTHY_PROBES } from './helpers/fake-service';
import { closeApiServer, randomFile, startServer, tempDir, testCerts, type TestServer } from './helpers/server';

let dir: string;
let service: FakeAgentService;
let server: TestServer;

before(async () => {
  dir = tempDir('csa-api-protocol-');
  const vda = randomFile(dir, 'vda.img', 4096);
  service = new FakeAgentService([{ name: 'vda', file: vda.file, size: 4096, tracked: true, mapped: true }]);
  server = await startServer({ service });
});

after(async () => {
  await server.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

interface RawResponse {
  status: number;
  headers: Record<string, string>;
  body: string;
}

/** The responses in `text`, in order (100 Continue included). */
function parseResponses(text: string): RawResponse[] {
  const responses: RawResponse[] = [];
  let rest = text;
  while (rest.startsWith('HTTP/1.1 ')) {
    const end = rest.indexOf('\r\n\r\n');
    assert.ok(end > 0, `incomplete head in ${JSON.stringify(rest)}`);
    const [statusLine, ...lines] = rest.slice(0, end).split('\r\n');
    const headers = Object.fromEntries(lines.map((line) => {
      const colon = line.indexOf(':');
      return [line.slice(0, colon).toLowerCase(), line.slice(colon + 1).trim()];
    }));
    const length = Number(headers['content-length'] ?? 0);
    responses.push({ status: Number(statusLine.split(' ')[1]), headers, body: rest.slice(end + 4, end + 4 + length) });
    rest = rest.slice(end + 4 + length);
  }
  assert.equal(rest, '', 'nothing but whole responses');
  return responses;
}

/** The one response to `bytes`: a JSON error with this status and details. */
async function assertRawError(bytes: string, status: number, details: RegExp): Promise<void> {
  const responses = parseResponses(await server.raw(bytes));
  assert.equal(responses.length, 1, JSON.stringify(bytes.slice(0, 80)));
  const [response] = responses;
  assert.equal(response.status, status, `${JSON.stringify(bytes.slice(0, 80))}: ${response.body}`);
  assert.match(response.headers['content-type'], /^application\/json/);
  const body = JSON.parse(response.body) as { error: string; details: string };
  assert.deepEqual(Object.keys(body), ['error', 'details']);
  assert.match(body.details, details);
}

describe('requests the HTTP parser refuses', () => {
  test('a malformed request line, unknown method, bad Content-Length or chunk size: JSON 400 saying what is wrong', async () => {
    await assertRawError('GARBAGE\r\n\r\n', 400, /malformed HTTP request: Invalid method/);
    await assertRawError('BREW /api/v1/disks HTTP/1.1\r\nHost: x\r\n\r\n', 400, /malformed HTTP request: Invalid method/);
    await assertRawError('POST /api/v1/snapshots HTTP/1.1\r\nHost: x\r\nContent-Length: ten\r\n\r\n', 400, /Content-Length/);
    await assertRawError('POST /api/v1/snapshots HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n', 400, /malformed HTTP request/);
    await assertRawError('POST /api/v1/snapshots HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n', 400, /chunk size/);
    await assertRawError('GET /api/v1/disks HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n', 400, /malformed HTTP request/);
  });

  test('a request line or headers over the 16 KiB limit: JSON 431', async () => {
    await assertRawError(`GET /api/v1/disks/${'a'.repeat(20_000)} HTTP/1.1\r\nHost: x\r\n\r\n`, 431, /larger than 16384 bytes/);
    await assertRawError(`GET /api/v1/disks HTTP/1.1\r\nHost: x\r\nX-Padding: ${'a'.repeat(20_000)}\r\n\r\n`, 431, /larger than 16384 bytes/);
  });

  test('CONNECT is the JSON 404 of any unserved method, not a dropped connection', async () => {
    await assertRawError('CONNECT localhost:443 HTTP/1.1\r\nHost: localhost:443\r\n\r\n', 404, /^Resource not found$/);
  });
});

describe('headers Node answers before the app', () => {
  const body = '{"tracked_disk_ids": ["vda"]}';
  const post = (extra: string): string =>
    `POST /api/v1/snapshots HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n${extra}\r\n${body}`;

  test('Expect other than 100-continue: JSON 417; 100-continue: 100, then the answer', async () => {
    service.snapshots.clear();
    await assertRawError(post('Expect: teapot\r\n'), 417, /only "Expect: 100-continue" is supported, got "teapot"/);
    assert.equal(service.snapshots.size, 0);
    const responses = parseResponses(await server.raw(post('Expect: 100-continue\r\n')));
    assert.deepEqual(responses.map((response) => response.status), [100, 200]);
    service.snapshots.clear();
  });

  test('HTTP/1.1 without Host: JSON 400; an empty Host, or HTTP/1.0 without one, is served', async () => {
    await assertRawError('GET /api/v1/disks HTTP/1.1\r\nConnection: close\r\n\r\n', 400, /must have a Host header/);
    for (const request of ['GET /api/v1/snapshots HTTP/1.1\r\nHost:\r\nConnection: close\r\n\r\n', 'GET /api/v1/snapshots HTTP/1.0\r\n\r\n']) {
      const responses = parseResponses(await server.raw(request));
      assert.deepEqual(responses.map((response) => [response.status, response.body]), [[200, '[]']], request);
    }
  });
});

describe('bytes after a request that closes the connection', () => {
  test('are ignored: the request still gets its own answer, with or without Expect: 100-continue', async () => {
    for (const expect of ['', 'Expect: 100-continue\r\n']) {
      const request = `PUT /api/v1/snapshots HTTP/1.1\r\nHost: x\r\n${expect}Content-Length: 2\r\nConnection: close\r\n\r\n{}trailing bytes`;
      const responses = parseResponses(await server.raw(request)).filter((response) => response.status !== 100);
      assert.deepEqual(responses.map((response) => [response.status, (JSON.parse(response.body) as { error: string }).error]), [[405, 'Method Not Allowed']], expect);
    }
  });
});

describe('bodies that stop arriving', () => {
  test('the request timeout answers a JSON 408, logged as a closed connection, not as a failure', async () => {
    const records = new bunyan.RingBuffer({ limit: 100 });
    const log = bunyan.createLogger({ name: 'test', streams: [{ type: 'raw', stream: records, level: 'debug' }] });
    const slow = await startServer({ service, log, timeouts: { headersMs: 400, requestMs: 400 } });
    try {
      const text = await slow.raw('POST /api/v1/snapshots HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"tracked');
      const [response] = parseResponses(text);
      assert.equal(response.status, 408);
      assert.deepEqual(JSON.parse(response.body), { error: 'Request Timeout', details: 'the request did not arrive in time' });
      // The handler that was reading the body learns of it too; wait for its access-log line.
      for (let i = 0; i < 100 && !records.records.some((record) => (record as { msg: string }).msg === 'request'); i++) {
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
      const lines = records.records as Array<{ level: number; msg: string }>;
      assert.ok(lines.some((line) => line.msg === 'request'), 'the request was logged');
      assert.deepEqual(lines.filter((line) => line.level >= bunyan.ERROR).map((line) => line.msg), [], 'no error logged');
    } finally {
      await slow.close();
    }
  });
});

describe('clients that half-close', () => {
  test('a client that shuts down its sending side after the request still gets the whole answer', async () => {
    // The answer is held until the server has seen the client's end of stream.
    let release!: () => void;
    const seenEnd = new Promise<void>((resolve) => { release = resolve; });
    class HeldService extends FakeAgentService {
      override async listSnapshots(): ReturnType<FakeAgentService['listSnapshots']> {
        await seenEnd;
        return super.listSnapshots();
      }
    }
    const certs = testCerts();
    const read = (file: string): string => fs.readFileSync(file, 'utf8');
    const handle = createApp({ service: new HeldService([]), log: silentLogger(), health: HEALTHY_PROBES }).callback();
    const held = createApiServer({
      tls: { certificate: read(certs.serverCert), key: read(certs.serverKey), caCertificate: read(certs.caCert) },
      handler: (req, res) => {
        req.socket.once('end', release);
        void handle(req, res);
      },
      log: silentLogger(),
    });
    await listenApiServer(held, 0, '127.0.0.1');
    try {
      const text = await new Promise<string>((resolve, reject) => {
        const received: Buffer[] = [];
        const socket = tls.connect({
          host: '127.0.0.1', servername: 'localhost', port: (held.address() as AddressInfo).port, ca: read(certs.caCert),
          cert: read(certs.clientCert), key: read(certs.clientKey),
        }, () => socket.end('GET /api/v1/snapshots HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n'));
        socket.on('data', (chunk: Buffer) => received.push(chunk));
        socket.on('error', reject);
        socket.on('close', () => resolve(Buffer.concat(received).toString('utf8')));
      });
      assert.deepEqual(parseResponses(text).map((response) => [response.status, response.body]), [[200, '[]']]);
    } finally {
      await closeApiServer(held, 100);
    }
  });
});
