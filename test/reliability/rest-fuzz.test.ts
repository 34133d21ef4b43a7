// A REST fuzzer with a fixed seed against a whole agent (simulated engine) over mTLS: malformed
// paths, methods, query parameters, headers, bodies and Range headers, sent as raw bytes over
// TLS (HTTP client libraries refuse to send most of them), several at a time.
//
// For every case: an answer arrives (no hang, no dropped connection), it is not a 5xx, a 4xx
// carries the {error, details} JSON body, and the answer conforms to the OpenAPI description.
// Afterwards no connection is left open and the agent still serves a correct download.
// FUZZ_CASES and FUZZ_SEED change the run; a failure names the seed and the case.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import tls from 'node:tls';
import { after, before, test } from 'node:test';
import { startE2eAgent, type E2eAgent } from '../e2e/helpers';
import { openApiProblems } from '../api/helpers/openapi';
import { agentClient, type Send } from '../api/helpers/server';
import { seeded } from '../helpers/seeded';

const MiB = 1024 * 1024;
const CASES = Number(process.env.FUZZ_CASES ?? 2000);
const SEED = Number(process.env.FUZZ_SEED ?? 0x5eed2026);
const PARALLEL = 6;
// A hang detector, not a performance bound: the agent's own request timeout is 60 s.
const ANSWER_TIMEOUT_MS = 45_000;

let e2e: E2eAgent;
let send: Send;
let tlsOptions: tls.ConnectionOptions;

before(async () => {
  e2e = await startE2eAgent({ diskSize: 4 * MiB });
  send = agentClient(e2e.agent.apiUrl, e2e.certs);
  const read = (name: string): string => fs.readFileSync(path.join(e2e.certs, name), 'utf8');
  const { port } = new URL(e2e.agent.apiUrl);
  tlsOptions = { host: '127.0.0.1', servername: 'localhost', port: Number(port), ca: read('ca-cert.pem'), cert: read('client-cert.pem'), key: read('client-key.pem') };
});

after(() => e2e.stop());

interface Case {
  method: string;
  target: string;
  headers: Array<[string, string]>;
  body: Buffer;
}

interface Answer {
  status: number;
  headers: Map<string, string>;
  body: Buffer;
}

function generator(random: () => number, ids: { snapshot: string; generation: string }) {
  const pick = <T>(items: readonly T[]): T => items[Math.floor(random() * items.length)];
  const chance = (p: number): boolean => random() < p;
  const int = (max: number): number => Math.floor(random() * max);

  const segments = (): string => pick([
    'disk0', 'disk1', 'nosuch', '123', '..', '.', '%00', '%2F', '%ZZ', '%', '%E0%A4%A', '%F0%9F%92%BE', 'a'.repeat(1 + int(3000)),
    '-1', '18446744073709551616', ' ', '%20', 'disk0%00', '__proto__', 'constructor', '{snapshotId}', ':diskId', '*', '%2e%2e',
  ]);
  const templates = [
    '/disks', '/disks/{d}', '/snapshots', '/snapshots/{s}', '/snapshots/{s}/changes/{d}', '/snapshots/{s}/changes/{d}',
    '/snapshots/{s}/consume/{d}', '/snapshots/{s}/consume/{d}', '/snapshots/{s}/consume/{d}', '/snapshots/{s}/consume/{d}',
    '/snapshots/{s}/digests/{d}', '/snapshots/{s}/digests/{d}', '/snapstores', '/snapstorelocations', '/snapstoremappings', '/systeminfo', '/health', '/metrics', '/openapi.json',
    '', '/', '/nothing', '/snapshots/{s}/consume', '/snapshots/{s}/changes/{d}/extra', '/snapshots/{s}/digests',
  ];
  const queryValue = (): string => pick([
    'true', 'True', '1', '0', 'false', '', 'yes', '%', '%ZZ', '%00', '-1', '4294967295', '4294967296', '1e3', '0x10', ' 1',
    ids.generation, ids.generation.toUpperCase(), `{${ids.generation}}`, 'not-a-uuid', '2', '3', '255', '99999999999999999999',
    '65536', '67108864', '134217728', '4194304', '1048576', '4095',
  ]);
  const query = (): string => {
    if (!chance(0.4)) return '';
    const names = ['includeVirtual', 'includeSwap', 'previousGenerationID', 'previousNumber', 'x', '__proto__', '', 'previousnumber',
      'markZeroRanges', 'block_size', 'start', 'length'];
    const pairs = Array.from({ length: 1 + int(4) }, () => (chance(0.1) ? pick(names) : `${pick(names)}=${queryValue()}`));
    return `?${pairs.join(pick(['&', '&&', ';']))}${chance(0.05) ? '#frag' : ''}`;
  };
  /** The live snapshot stays: a DELETE never names it, so later cases can still read it. */
  const nextTarget = (method: string): string => {
    if (chance(0.03)) return pick(['*', 'https://localhost/api/v1/disks', '/api/v1/disks with space', '/api/v1/\u00e9', '//api/v1/disks', '/api/v1//disks', '/API/V1/DISKS', '/api/v2/disks']);
    const route = pick(templates).replace('{s}', () => (method !== 'DELETE' && chance(0.7) ? ids.snapshot : segments())).replace('{d}', () => (chance(0.6) ? pick(['disk0', 'disk1']) : segments()));
    return `/api/v1${route}${chance(0.3) ? '/' : ''}${query()}`;
  };
  const range = (): string => pick([
    'bytes=0-0', 'bytes=0-511', 'bytes=-0', 'bytes=5-1', 'bytes=0-', 'bytes=-1', 'bytes=-999999999', 'bytes=4194303-', 'bytes=4194304-',
    'bytes=abc', 'bytes= 0 - 1', 'bytes=18446744073709551615-', 'bytes=0-1,,', 'bytes=-', '', 'items=0-1', 'bytes=0-1, 2-3, 0-1',
    `bytes=${Array.from({ length: 257 }, (_, i) => `${i}-${i}`).join(',')}`, 'bytes=0-1,-5', 'bytes=1-0,2-1', 'BYTES=0-1', 'bytes=0x10-0x20',
  ]);
  const jsonBody = (): string => pick([
    '{"tracked_disk_ids": ["disk1"]}', '{"tracked_disk_ids": []}', '{"tracked_disk_ids": "disk0"}', '{"tracked_disk_ids": [1]}',
    '{"tracked_disk_ids": ["disk0", "disk0"]}', '{"TRACKED_DISK_IDS": ["nosuch"]}', '{"tracked_disk_ids": null}', '[]', 'null', '1', '"x"',
    '{', '{"a":', '{"tracked_disk_id": "disk0", "snapstore_location_id": "/tmp"}', '{"tracked_disk_id": "", "snapstore_location_id": ""}',
    '{"__proto__": {"tracked_disk_ids": ["disk1"]}}', `{"tracked_disk_ids": [${'"x",'.repeat(2000)}"y"]}`, '\ufeff{}', '{"a": "\\ud800"}',
    'tracked_disk_id=disk0&snapstore_location_id=%ZZ', 'a=1&a=2', '',
  ]);
  const body = (): Buffer => {
    if (chance(0.05)) return Buffer.from([0xff, 0xfe, 0x00, 0x80, 0xc3]);
    if (chance(0.02)) return Buffer.alloc(70 * 1024, 0x20);
    return Buffer.from(jsonBody());
  };

  return (): Case => {
    const method = chance(0.9)
      ? pick(['GET', 'GET', 'GET', 'HEAD', 'POST', 'POST', 'DELETE', 'PUT', 'PATCH', 'OPTIONS'])
      : pick(['get', 'BREW', 'PROPFIND', 'TRACE', 'SEARCH', 'PURGE', 'M-SEARCH', 'CONNECT', 'LINK', '']);
    const headers: Array<[string, string]> = [];
    if (!chance(0.03)) headers.push(['Host', chance(0.9) ? 'localhost' : pick(['', 'a b', 'x'.repeat(300)])]);
    let payload: Buffer = Buffer.alloc(0);
    if (method === 'POST' || method === 'PUT' || chance(0.1)) {
      payload = body();
      headers.push(['Content-Type', pick(['application/json', 'application/json; charset=utf-8', 'application/json; charset=latin1',
        'application/x-www-form-urlencoded', 'text/plain', 'multipart/form-data; boundary=x', 'application/json; charset=', ';;', ''])]);
    }
    if (chance(0.05)) headers.push(['Content-Encoding', pick(['gzip', 'identity', 'br', ''])]);
    const target = nextTarget(method);
    if (chance(target.includes('/consume/') ? 0.8 : 0.1)) headers.push(['Range', range()]);
    if (chance(0.05)) headers.push(['If-Range', pick(['"etag"', 'Wed, 21 Oct 2015 07:28:00 GMT', ''])]);
    if (chance(0.03)) headers.push(['Expect', pick(['100-continue', 'teapot'])]);
    if (chance(0.03)) headers.push(['X-Long', 'x'.repeat(pick([100, 9000, 17000]))]);
    if (chance(0.02)) headers.push(['Bad Header', '1']);
    if (chance(0.02)) headers.push(['Content-Length', '1'], ['Content-Length', '2']);
    if (chance(0.03)) headers.push(['Transfer-Encoding', pick(['gzip', 'chunked, identity', 'identity'])]);
    if (chance(0.02)) headers.push(['Accept', '\u0001']);
    if (chance(target.includes('/digests/') ? 0.5 : 0.02)) {
      headers.push(['Accept', pick(['application/x-ndjson', 'application/vnd.coriolis.digests', 'application/json', '*/*', 'text/*;q=0', ',,;q=x', ''])]);
    }
    let framed: Buffer = payload;
    if (chance(0.1) && !headers.some(([name]) => name === 'Transfer-Encoding')) {
      headers.push(['Transfer-Encoding', 'chunked']);
      framed = Buffer.concat([Buffer.from(chance(0.9) ? payload.length.toString(16) : 'zz'), Buffer.from('\r\n'), payload, Buffer.from('\r\n0\r\n\r\n')]);
    } else if (!headers.some(([name]) => name === 'Content-Length')) {
      // Never more than sent: a body that never comes is a timeout (408), not a fuzz case.
      if (payload.length > 0 || chance(0.5)) headers.push(['Content-Length', String(chance(0.95) ? payload.length : int(payload.length + 1))]);
    }
    headers.push(['Connection', 'close']);
    return { method, target, headers, body: framed };
  };
}

function encode(request: Case): Buffer {
  const head = `${request.method} ${request.target} HTTP/1.1\r\n${request.headers.map(([name, value]) => `${name}: ${value}\r\n`).join('')}\r\n`;
  return Buffer.concat([Buffer.from(head, 'latin1'), request.body]);
}

/** The final (non-1xx) response of what the server sent, or a description of what is wrong. */
function parseAnswer(bytes: Buffer, method: string): Answer | string {
  let rest = bytes;
  for (;;) {
    const end = rest.indexOf('\r\n\r\n');
    if (end < 0) return `no complete response head in ${JSON.stringify(rest.subarray(0, 200).toString('latin1'))}`;
    const [statusLine, ...lines] = rest.subarray(0, end).toString('latin1').split('\r\n');
    const match = /^HTTP\/1\.1 (\d{3}) /.exec(statusLine);
    if (match === null) return `bad status line ${JSON.stringify(statusLine)}`;
    const headers = new Map(lines.map((line) => {
      const colon = line.indexOf(':');
      return [line.slice(0, colon).trim().toLowerCase(), line.slice(colon + 1).trim()] as [string, string];
    }));
    const status = Number(match[1]);
    rest = rest.subarray(end + 4);
    if (status < 200) continue;
    const length = headers.get('content-length');
    if (method === 'HEAD' || status === 204 || status === 304) return { status, headers, body: Buffer.alloc(0) };
    if (length === undefined) return { status, headers, body: rest };
    if (rest.length < Number(length)) return `short body: ${rest.length} of ${length} bytes`;
    return { status, headers, body: rest.subarray(0, Number(length)) };
  }
}

function exchange(request: Case): Promise<Answer | string> {
  return new Promise((resolve) => {
    const received: Buffer[] = [];
    const socket = tls.connect(tlsOptions, () => socket.end(encode(request)));
    const timer = setTimeout(() => {
      socket.destroy();
      resolve(`no answer within ${ANSWER_TIMEOUT_MS} ms`);
    }, ANSWER_TIMEOUT_MS);
    socket.on('data', (chunk: Buffer) => received.push(chunk));
    socket.on('error', () => undefined);
    socket.on('close', () => {
      clearTimeout(timer);
      resolve(parseAnswer(Buffer.concat(received), request.method));
    });
  });
}

/** What is wrong with the answer to one case; empty when nothing. */
function problemsOf(request: Case, answer: Answer | string): string[] {
  if (typeof answer === 'string') return [answer];
  const problems: string[] = [];
  if (answer.status >= 500) problems.push(`status ${answer.status}: ${answer.body.toString('utf8')}`);
  if (answer.status >= 400 && request.method !== 'HEAD') {
    const type = answer.headers.get('content-type') ?? '';
    let body: unknown;
    try {
      body = JSON.parse(answer.body.toString('utf8'));
    } catch {
      body = undefined;
    }
    const fields = body !== null && typeof body === 'object' ? Object.keys(body) : [];
    if (!type.startsWith('application/json') || fields.join() !== 'error,details') {
      problems.push(`status ${answer.status} without the JSON error body: ${type} ${JSON.stringify(answer.body.subarray(0, 200).toString('latin1'))}`);
    }
  }
  if (answer.status === 405 && answer.headers.get('allow') === undefined) problems.push('405 without Allow');
  // An absolute-form target (RFC 9112 3.2.2) names the same path.
  const pathOnly = request.target.replace(/^https?:\/\/[^/]*/, '').split(/[?#]/)[0];
  problems.push(...openApiProblems({ method: request.method, path: pathOnly, status: answer.status, contentType: answer.headers.get('content-type'), body: answer.body }));
  return problems;
}

async function httpConnections(): Promise<number> {
  const response = await send('GET', '/metrics');
  const line = /^coriolis_agent_connections\{protocol="http"\} (\d+)$/m.exec(response.body.toString('utf8'));
  assert.ok(line !== null);
  return Number(line[1]);
}

test(`${CASES} fuzzed requests (seed ${SEED}): every one answered, no 5xx, JSON errors; then no leaked connection and a correct download`, { timeout: 900_000 }, async (t) => {
  const created = await send('POST', '/snapshots/', JSON.stringify({ tracked_disk_ids: ['disk0'] }), { 'content-type': 'application/json' });
  assert.equal(created.status, 200);
  const snapshot = JSON.parse(created.body.toString()) as { snapshot_id: string; volume_snapshots: Array<{ generation_id: string }> };
  const next = generator(seeded(SEED), { snapshot: snapshot.snapshot_id, generation: snapshot.volume_snapshots[0].generation_id });
  const cases = Array.from({ length: CASES }, next);

  const failures: string[] = [];
  const statuses = new Map<number, number>();
  let index = 0;
  await Promise.all(Array.from({ length: PARALLEL }, async () => {
    while (index < cases.length) {
      const number = index++;
      const request = cases[number];
      const answer = await exchange(request);
      if (typeof answer !== 'string') statuses.set(answer.status, (statuses.get(answer.status) ?? 0) + 1);
      for (const problem of problemsOf(request, answer)) {
        failures.push(`case ${number}: ${JSON.stringify(encode(request).subarray(0, 300).toString('latin1'))}: ${problem}`);
      }
    }
  }));
  const summary = [...statuses.entries()].sort(([a], [b]) => a - b).map(([status, count]) => `${status}×${count}`).join(' ');
  t.diagnostic(`statuses: ${summary}`);
  assert.deepEqual(failures.slice(0, 20), [], `seed ${SEED}: ${failures.length} failing cases; statuses ${summary}`);
  assert.ok(statuses.size >= 8, `the cases reach many answers: ${summary}`);

  // Every fuzz connection was closed by its client: the agent holds only the one asking.
  let open = await httpConnections();
  while (open !== 1) {
    await new Promise((resolve) => setTimeout(resolve, 100));
    open = await httpConnections();
  }

  // The agent still takes a snapshot and serves its exact bytes.
  for (const listed of JSON.parse((await send('GET', '/snapshots')).body.toString()) as Array<{ snapshot_id: string }>) {
    assert.equal((await send('DELETE', `/snapshots/${listed.snapshot_id}`)).status, 200);
  }
  const fresh = await send('POST', '/snapshots/', JSON.stringify({ tracked_disk_ids: ['disk0', 'disk1'] }), { 'content-type': 'application/json' });
  assert.equal(fresh.status, 200, fresh.body.toString());
  const id = (JSON.parse(fresh.body.toString()) as { snapshot_id: string }).snapshot_id;
  for (const [disk, file] of [['disk0', e2e.disks[0]], ['disk1', e2e.disks[1]]] as const) {
    const download = await send('GET', `/snapshots/${id}/consume/${disk}`);
    assert.equal(download.status, 200);
    assert.ok(download.body.equals(fs.readFileSync(file)), `${disk}: the image is the disk`);
  }
});
