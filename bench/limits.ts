// Benchmark of the read-rate limits: HTTPS Range downloads and NBD reads of one image run in
// parallel against the real API and NBD servers, and the rate their clients receive is measured
// over a window after a warm-up, against the limit:
//   1. no limit, to show that the clients ask for more than the limits below;
//   2. one agent-wide limit (read_bytes_per_second) shared by both doors: each door's rate and
//      their sum, as a ratio of the limit (target: the sum within 5%);
//   3. a per-connection limit (connection_read_bytes_per_second) and no agent-wide one: each
//      connection's rate as a ratio of it;
//   4. the agent-wide limit again, with the real clients: curl downloads and nbdcopy of the whole
//      image at once, rates from their bytes and running times. The budget is shared fairly by
//      connection, so each door's part follows the connections reading at once (nbdcopy reads
//      over one connection per 128 MiB of image it copies, up to --connections).
// In 1-3 the clients run in this process (Node's https, and a raw NBD client keeping reads in
// flight as nbdcopy does), so the bytes are counted as they arrive over a window.
//
//   npm run build && node dist/bench/limits.js [--limit-mib N] [--connection-limit-mib N] [--seconds N] [--size-mib N]
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import { createApp } from '../src/api/app';
import { createApiServer, listenApiServer } from '../src/api/server';
import { silentLogger } from '../src/core/log';
import { createNbdServer } from '../src/nbd/server';
import { Command } from '../src/nbd/wire';
import { ReadLimits, type ReadLimitSettings } from '../src/doors/limits';
import { FakeAgentService, HEALTHY_PROBES } from '../test/api/helpers/fake-service';
import { makeTestCerts, type TestCerts } from '../test/helpers/certs';
import { FakeExportRegistry } from '../test/nbd/helpers/fake-registry';
import { connectReady } from '../test/nbd/helpers/server';
import { closeApiServer } from '../test/api/helpers/server';

const MiB = 1024 * 1024;
const EXPORT_NAME = '1001/vda';

const { values: args } = parseArgs({
  options: {
    'limit-mib': { type: 'string', default: '20' },
    'connection-limit-mib': { type: 'string', default: '4' },
    seconds: { type: 'string', default: '30' },
    'warmup-seconds': { type: 'string', default: '3' },
    'size-mib': { type: 'string', default: '256' },
    'http-downloads': { type: 'string', default: '3' },
    'nbd-connections': { type: 'string', default: '2' },
  },
});
const LIMIT = Number(args['limit-mib']) * MiB;
const CONNECTION_LIMIT = Number(args['connection-limit-mib']) * MiB;
const SECONDS = Number(args.seconds);
const WARMUP_SECONDS = Number(args['warmup-seconds']);
const SIZE = Number(args['size-mib']) * MiB;
const HTTP_DOWNLOADS = Number(args['http-downloads']);
const NBD_CONNECTIONS = Number(args['nbd-connections']);
/** Each HTTP request asks for this much, at a random offset; each NBD connection keeps NBD_IN_FLIGHT reads of NBD_READ. */
const HTTP_RANGE = 16 * MiB;
const NBD_READ = 256 * 1024;
const NBD_IN_FLIGHT = 16;

function makeImage(file: string): void {
  const fd = fs.openSync(file, 'w');
  for (let offset = 0; offset < SIZE; offset += 4 * MiB) fs.writeSync(fd, crypto.randomBytes(Math.min(4 * MiB, SIZE - offset)));
  fs.fsyncSync(fd);
  fs.closeSync(fd);
}

interface Client {
  door: 'HTTP' | 'NBD';
  /** Payload bytes received so far. */
  bytes: number;
}

interface Servers {
  apiPort: number;
  nbdPort: number;
  snapshotId: string;
  close(): Promise<void>;
}

async function startServers(image: string, certs: TestCerts, settings: ReadLimitSettings): Promise<Servers> {
  const pem = (file: string): string => fs.readFileSync(file, 'utf8');
  const limits = new ReadLimits(settings);
  const log = silentLogger();
  const service = new FakeAgentService([{ name: 'vda', file: image, size: SIZE, tracked: true, mapped: true }]);
  const snapshotId = (await service.createSnapshot(['vda'])).id;
  const api = createApiServer({
    tls: { certificate: pem(certs.serverCert), key: pem(certs.serverKey), caCertificate: pem(certs.caCert) },
    handler: createApp({ service, log, consume: { limits }, health: HEALTHY_PROBES }).callback(),
    log,
  });
  await listenApiServer(api, 0, '127.0.0.1');
  const registry = new FakeExportRegistry();
  registry.add({ name: EXPORT_NAME, file: image });
  const nbd = createNbdServer({
    registry, log, bind: '127.0.0.1', port: 0, maxConnections: 64, limits,
    tls: { mode: 'require', certificate: pem(certs.serverCert), key: pem(certs.serverKey), caCertificate: pem(certs.caCert) },
  });
  const { port: nbdPort } = await nbd.listen();
  return {
    apiPort: (api.address() as AddressInfo).port,
    nbdPort,
    snapshotId,
    close: async () => {
      await closeApiServer(api, 100);
      await nbd.close();
    },
  };
}

/** Range downloads one after the other on one keep-alive connection, until `stopped()`. */
async function httpDownloader(servers: Servers, certs: TestCerts, client: Client, stopped: () => boolean): Promise<void> {
  const agent = new https.Agent({ keepAlive: true, maxSockets: 1 });
  try {
    while (!stopped()) {
      const start = Math.floor(Math.random() * ((SIZE - HTTP_RANGE) / MiB)) * MiB;
      await new Promise<void>((resolve, reject) => {
        const request = https.get({
          host: '127.0.0.1', servername: 'localhost', port: servers.apiPort, agent,
          path: `/api/v1/snapshots/${servers.snapshotId}/consume/vda`,
          headers: { Range: `bytes=${start}-${start + HTTP_RANGE - 1}` },
          ca: fs.readFileSync(certs.caCert), cert: fs.readFileSync(certs.clientCert), key: fs.readFileSync(certs.clientKey),
        }, (response) => {
          if (response.statusCode !== 206) reject(new Error(`HTTP ${response.statusCode}`));
          response.on('data', (chunk: Buffer) => { client.bytes += chunk.length; });
          response.on('end', resolve);
          response.on('error', reject);
        });
        request.on('error', reject);
      });
    }
  } finally {
    agent.destroy();
  }
}

/** One NBD connection reading the image in order, NBD_IN_FLIGHT reads at a time, until `stopped()`. */
async function nbdReader(servers: Servers, certs: TestCerts, client: Client, stopped: () => boolean): Promise<void> {
  const connection = await connectReady(servers.nbdPort, { tls: certs });
  let next = 0;
  const send = (): void => {
    connection.sendRequest({ type: Command.READ, offset: next, length: NBD_READ, cookie: BigInt(next + 1) });
    next = (next + NBD_READ) % SIZE;
  };
  try {
    for (let i = 0; i < NBD_IN_FLIGHT; i++) send();
    while (!stopped()) {
      const reply = await connection.readSimpleReply();
      if (reply.error !== 0) throw new Error(`NBD read error ${reply.error}`);
      client.bytes += (await connection.read(NBD_READ)).length;
      send();
    }
  } finally {
    connection.destroy();
  }
}

interface Measured {
  seconds: number;
  /** Bytes per second of each client over the window. */
  rates: Array<{ door: 'HTTP' | 'NBD'; rate: number }>;
}

/** Runs every client against fresh servers and measures what they receive over the window. */
async function measure(image: string, certs: TestCerts, settings: ReadLimitSettings): Promise<Measured> {
  const servers = await startServers(image, certs, settings);
  const clients: Client[] = [
    ...Array.from({ length: HTTP_DOWNLOADS }, (): Client => ({ door: 'HTTP', bytes: 0 })),
    ...Array.from({ length: NBD_CONNECTIONS }, (): Client => ({ door: 'NBD', bytes: 0 })),
  ];
  let stop = false;
  const running = clients.map((client) => (client.door === 'HTTP'
    ? httpDownloader(servers, certs, client, () => stop)
    : nbdReader(servers, certs, client, () => stop)).catch((err: unknown) => {
    if (!stop) throw err;
  }));
  await sleep(WARMUP_SECONDS * 1000);
  const before = clients.map((client) => client.bytes);
  const started = process.hrtime.bigint();
  await sleep(SECONDS * 1000);
  const after = clients.map((client) => client.bytes);
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  stop = true;
  await servers.close();
  await Promise.all(running);
  return { seconds, rates: clients.map((client, index) => ({ door: client.door, rate: (after[index] - before[index]) / seconds })) };
}

/** Runs a client program to its end; resolves with how long it ran, in seconds. */
function timedRun(command: string, args: string[]): Promise<number> {
  const started = process.hrtime.bigint();
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => { stderr += chunk; });
    child.on('error', reject);
    child.on('close', (code) => {
      if (code === 0) resolve(Number(process.hrtime.bigint() - started) / 1e9);
      else reject(new Error(`${command} exited with ${code}: ${stderr}`));
    });
  });
}

/** curl and nbdcopy copying the whole image at once; each door's rate is its bytes over the time its last client ran. */
async function measureExternal(image: string, certs: TestCerts, settings: ReadLimitSettings): Promise<{ http: number; nbd: number; together: number }> {
  const servers = await startServers(image, certs, settings);
  try {
    const url = `https://127.0.0.1:${servers.apiPort}/api/v1/snapshots/${servers.snapshotId}/consume/vda`;
    const curl = (): Promise<number> => timedRun('curl', ['-sSf', '-o', '/dev/null', '--cacert', certs.caCert, '--cert', certs.clientCert, '--key', certs.clientKey, url]);
    const nbdUri = `nbds://127.0.0.1:${servers.nbdPort}/${encodeURIComponent(EXPORT_NAME)}?tls-certificates=${certs.dir}`;
    const nbdcopy = (): Promise<number> => timedRun('nbdcopy', ['--connections=4', '--threads=4', nbdUri, 'null:']);
    const [httpSeconds, nbdSeconds] = await Promise.all([
      Promise.all(Array.from({ length: HTTP_DOWNLOADS }, curl)).then((times) => Math.max(...times)),
      nbdcopy(),
    ]);
    return {
      http: (HTTP_DOWNLOADS * SIZE) / httpSeconds,
      nbd: SIZE / nbdSeconds,
      together: ((HTTP_DOWNLOADS + 1) * SIZE) / Math.max(httpSeconds, nbdSeconds),
    };
  } finally {
    await servers.close();
  }
}

const mib = (bytesPerSecond: number): string => (bytesPerSecond / MiB).toFixed(2);
const sum = (values: number[]): number => values.reduce((total, value) => total + value, 0);

function doorRates(measured: Measured): { http: number; nbd: number } {
  return {
    http: sum(measured.rates.filter((r) => r.door === 'HTTP').map((r) => r.rate)),
    nbd: sum(measured.rates.filter((r) => r.door === 'NBD').map((r) => r.rate)),
  };
}

async function main(): Promise<void> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'csa-bench-limits-'));
  try {
    const image = path.join(dir, 'image.raw');
    makeImage(image);
    const certs = makeTestCerts(fs.mkdtempSync(path.join(dir, 'certs-')));
    console.log(`${HTTP_DOWNLOADS} HTTPS downloads (${HTTP_RANGE / MiB} MiB ranges) and ${NBD_CONNECTIONS} NBD connections `
      + `(${NBD_IN_FLIGHT} reads of ${NBD_READ / 1024} KiB in flight) over TLS, ${SECONDS} s measured after ${WARMUP_SECONDS} s; MiB/s`);

    const free = doorRates(await measure(image, certs, { readBytesPerSecond: null, connectionReadBytesPerSecond: null }));
    console.log(`\nno limit:            HTTP ${mib(free.http)}  NBD ${mib(free.nbd)}  together ${mib(free.http + free.nbd)}`);
    if (free.http + free.nbd < LIMIT * 1.1) console.log(`  (the clients do not reach the ${mib(LIMIT)} MiB/s limit by much: it cannot be shown to bind)`);

    const shared = doorRates(await measure(image, certs, { readBytesPerSecond: LIMIT, connectionReadBytesPerSecond: null }));
    const together = shared.http + shared.nbd;
    console.log(`\nread_bytes_per_second = ${mib(LIMIT)} MiB/s, shared by both doors:`);
    console.log(`  HTTP      ${mib(shared.http).padStart(7)}  ${(shared.http / LIMIT).toFixed(3)} of the limit`);
    console.log(`  NBD       ${mib(shared.nbd).padStart(7)}  ${(shared.nbd / LIMIT).toFixed(3)} of the limit`);
    console.log(`  together  ${mib(together).padStart(7)}  ${(together / LIMIT).toFixed(3)} of the limit  ${Math.abs(together / LIMIT - 1) <= 0.05 ? 'within 5%' : 'NOT within 5%'}`);

    const perConnection = await measure(image, certs, { readBytesPerSecond: null, connectionReadBytesPerSecond: CONNECTION_LIMIT });
    console.log(`\nconnection_read_bytes_per_second = ${mib(CONNECTION_LIMIT)} MiB/s, no agent-wide limit:`);
    for (const [index, { door, rate }] of perConnection.rates.entries()) {
      const ratio = rate / CONNECTION_LIMIT;
      console.log(`  ${door} connection ${index + 1}  ${mib(rate).padStart(7)}  ${ratio.toFixed(3)} of the limit  ${Math.abs(ratio - 1) <= 0.05 ? 'within 5%' : 'NOT within 5%'}`);
    }

    const external = await measureExternal(image, certs, { readBytesPerSecond: LIMIT, connectionReadBytesPerSecond: null });
    console.log(`\nread_bytes_per_second = ${mib(LIMIT)} MiB/s; ${HTTP_DOWNLOADS} curl downloads and nbdcopy --connections=4 --threads=4 of the whole image:`);
    console.log(`  curl      ${mib(external.http).padStart(7)}  ${(external.http / LIMIT).toFixed(3)} of the limit`);
    console.log(`  nbdcopy   ${mib(external.nbd).padStart(7)}  ${(external.nbd / LIMIT).toFixed(3)} of the limit`);
    console.log(`  together  ${mib(external.together).padStart(7)}  ${(external.together / LIMIT).toFixed(3)} of the limit  ${Math.abs(external.together / LIMIT - 1) <= 0.05 ? 'within 5%' : 'NOT within 5%'}`);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
