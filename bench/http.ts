// Benchmark of the consume route: a 1 GiB image downloaded over HTTPS with client
// certificates in 10 MiB ranges, 1 and 8 at a time, by curl, from
//   - the agent's API (createApp + createApiServer over an O_DIRECT reader),
//   - nginx (directio 4m, aio threads, TLS 1.2+, ssl_verify_client on, the same CA, file and
//     TLS 1.3 suite order as the agent),
// against `dd iflag=direct bs=4M` of the same file. Each figure is the median of --runs runs.
// Targets: agent >= 1.0x nginx and >= 0.8x raw. With curl on the same machine, client and server
// share the CPUs: the busy column tells whether a run was bound by the CPU rather than the disk.
//
//   npm run build && node dist/bench/http.js [--size-mib N] [--runs N] [--chunk-mib N] [--first-chunk-kib N] [--read-ahead N] [--io-threads N]
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net, { type AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs, promisify } from 'node:util';
import { createApp } from '../src/api/app';
import { DEFAULT_CONSUME_OPTIONS } from '../src/api/consume';
import { SERVER_CIPHERS } from '../src/doors/tls';
import { createApiServer, listenApiServer } from '../src/api/server';
import { generateCertificates } from '../src/cli/gen-certs';
import { silentLogger } from '../src/core/log';
import { configureReaderPool } from '../src/native/reader';
import { FakeAgentService, HEALTHY_PROBES } from '../test/api/helpers/fake-service';
import { ownCpuSeconds, processCpuSeconds, withCpuUse } from './cpu';
import { closeApiServer } from '../test/api/helpers/server';

const MiB = 1024 * 1024;
const RANGE_BYTES = 10 * MiB;
const run = promisify(execFile);
const AGENT_TLS13_SUITES = SERVER_CIPHERS.split(':').filter((suite) => suite.startsWith('TLS_')).join(':');

const { values: args } = parseArgs({
  options: {
    'size-mib': { type: 'string', default: '1024' },
    runs: { type: 'string', default: '3' },
    'chunk-mib': { type: 'string', default: String(DEFAULT_CONSUME_OPTIONS.chunkSize / (1024 * 1024)) },
    'first-chunk-kib': { type: 'string', default: String(DEFAULT_CONSUME_OPTIONS.firstChunkSize / 1024) },
    'read-ahead': { type: 'string', default: String(DEFAULT_CONSUME_OPTIONS.readAhead) },
    'io-threads': { type: 'string' },
  },
});
const SIZE = Number(args['size-mib']) * MiB;
const RUNS = Number(args.runs);

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

async function timed(action: () => Promise<unknown>): Promise<number> {
  const started = process.hrtime.bigint();
  await action();
  return Number(process.hrtime.bigint() - started) / 1e9;
}

interface RunResult {
  /** MB/s (10^6 bytes per second, as dd and curl print them). */
  rate: number;
  /** Share of the machine's CPU time that was busy during the run, any process. */
  machineBusy: number;
  /** CPU seconds the server spent per GiB served; NaN when there is no server. */
  serverCpuPerGiB: number;
  /** CPU seconds per GiB the rest of the machine spent: curl, the kernel, anything else. */
  otherCpuPerGiB: number;
}

async function measure(action: () => Promise<unknown>, serverCpu: (() => number) | null): Promise<RunResult> {
  const { result: seconds, cpu } = await withCpuUse(() => timed(action), serverCpu);
  const gibibytes = SIZE / (1024 * MiB);
  return { rate: SIZE / seconds / 1e6, machineBusy: cpu.machineBusy, serverCpuPerGiB: cpu.serverSeconds / gibibytes, otherCpuPerGiB: cpu.otherSeconds / gibibytes };
}

function makeImage(file: string): void {
  const fd = fs.openSync(file, 'w');
  for (let offset = 0; offset < SIZE; offset += 4 * MiB) fs.writeSync(fd, crypto.randomBytes(Math.min(4 * MiB, SIZE - offset)));
  fs.fsyncSync(fd);
  fs.closeSync(fd);
}

interface Certificates {
  caCert: string;
  serverCert: string;
  serverKey: string;
  clientCert: string;
  clientKey: string;
}

/**
 * curl fetching the whole file as 10 MiB ranges, `parallel` transfers at a time, connections
 * reused. Each range is its own operation (`next`): curl's `range` is not a per-URL option, so
 * without it every URL would fetch the last range given. Operations do not inherit options, so
 * each repeats the certificates; every transfer reports its size, and the total is checked.
 */
async function curlRanges(url: string, certs: Certificates, parallel: number, workDir: string): Promise<void> {
  const operations: string[] = [];
  for (let start = 0; start < SIZE; start += RANGE_BYTES) {
    operations.push([
      `cacert = "${certs.caCert}"`, `cert = "${certs.clientCert}"`, `key = "${certs.clientKey}"`,
      `url = "${url}"`, `range = "${start}-${Math.min(start + RANGE_BYTES, SIZE) - 1}"`, 'output = "/dev/null"',
      'fail', 'silent', 'show-error', 'write-out = "%{size_download}\\n"',
    ].join('\n'));
  }
  const config = path.join(workDir, `curl-${parallel}.conf`);
  fs.writeFileSync(config, operations.join('\nnext\n') + '\n');
  const { stdout } = await run('curl', [...(parallel > 1 ? ['--parallel', '--parallel-max', String(parallel)] : []), '-K', config], { maxBuffer: 1 << 20 });
  const received = stdout.split('\n').filter((line) => line !== '').reduce((sum, line) => sum + Number(line), 0);
  if (received !== SIZE) throw new Error(`curl received ${received} bytes from ${url}, expected ${SIZE}`);
}

async function freePort(): Promise<number> {
  const probe = net.createServer();
  await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve));
  const { port } = probe.address() as AddressInfo;
  await new Promise((resolve) => probe.close(resolve));
  return port;
}

async function startNginx(workDir: string, root: string, certs: Certificates): Promise<{ port: number; process: ChildProcess }> {
  const port = await freePort();
  const conf = path.join(workDir, 'nginx.conf');
  // The tuning a careful operator would give nginx for large O_DIRECT files.
  fs.writeFileSync(conf, `
worker_processes auto;
daemon off;
user root;
pid ${workDir}/nginx.pid;
error_log ${workDir}/nginx-error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path ${workDir}/body;
  proxy_temp_path ${workDir}/proxy;
  fastcgi_temp_path ${workDir}/fastcgi;
  uwsgi_temp_path ${workDir}/uwsgi;
  scgi_temp_path ${workDir}/scgi;
  keepalive_requests 10000;
  directio 4m;
  directio_alignment 4096;
  output_buffers 2 4m;
  aio threads;
  server {
    listen 127.0.0.1:${port} ssl;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_certificate ${certs.serverCert};
    ssl_certificate_key ${certs.serverKey};
    ssl_client_certificate ${certs.caCert};
    ssl_verify_client on;
    # The agent's suite order, so that both servers (and curl) pay for the same cipher.
    ssl_prefer_server_ciphers on;
    ssl_conf_command Ciphersuites ${AGENT_TLS13_SUITES};
    location / { root ${root}; }
  }
}
`);
  const child = spawn('nginx', ['-c', conf, '-p', workDir], { stdio: ['ignore', 'ignore', 'inherit'] });
  for (let i = 0; i < 100; i++) {
    if (fs.existsSync(path.join(workDir, 'nginx.pid'))) return { port, process: child };
    await sleep(50);
  }
  throw new Error(`nginx did not start; see ${workDir}/nginx-error.log`);
}

async function stopNginx(child: ChildProcess): Promise<void> {
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGQUIT');
  await exited;
}

async function main(): Promise<void> {
  const workDir = fs.mkdtempSync(path.join(os.tmpdir(), 'csa-bench-http-'));
  // nginx workers walk the path to the file.
  fs.chmodSync(workDir, 0o755);
  const image = path.join(workDir, 'disk.img');
  let nginx: ChildProcess | undefined;
  try {
    process.stdout.write(`image: ${SIZE / MiB} MiB in ${workDir}; ranges of ${RANGE_BYTES / MiB} MiB; median of ${RUNS} runs\n`);
    makeImage(image);
    const certs = await generateCertificates({ outDir: path.join(workDir, 'certs') });

    if (args['io-threads'] !== undefined) configureReaderPool({ ioThreads: Number(args['io-threads']) });
    const service = new FakeAgentService([{ name: 'vda', file: image, size: SIZE, tracked: true, mapped: true }]);
    const snapshotId = (await service.createSnapshot(['vda'])).id;
    const log = silentLogger();
    const consume = { chunkSize: Number(args['chunk-mib']) * MiB, firstChunkSize: Number(args['first-chunk-kib']) * 1024, readAhead: Number(args['read-ahead']) };
    const server = createApiServer({
      tls: { certificate: fs.readFileSync(certs.serverCert, 'utf8'), key: fs.readFileSync(certs.serverKey, 'utf8'), caCertificate: fs.readFileSync(certs.caCert, 'utf8') },
      handler: createApp({ service, log, consume, health: HEALTHY_PROBES }).callback(),
      log,
    });
    await listenApiServer(server, 0, '127.0.0.1');
    const agentUrl = `https://localhost:${(server.address() as AddressInfo).port}/api/v1/snapshots/${snapshotId}/consume/vda`;

    const started = await startNginx(workDir, workDir, certs);
    nginx = started.process;
    const nginxUrl = `https://localhost:${started.port}/disk.img`;

    const nginxWorkers = (): number[] => fs.readFileSync(`/proc/${nginx!.pid}/task/${nginx!.pid}/children`, 'utf8').trim().split(/\s+/).map(Number);
    const nginxCpu = (): number => processCpuSeconds(nginxWorkers());

    // Runs are interleaved so that the disk's ups and downs (a shared virtual disk swings by 2x)
    // hit every contender alike.
    const contenders: Array<{ name: string; action: () => Promise<unknown>; serverCpu: (() => number) | null; runs: RunResult[] }> = [
      { name: 'raw dd iflag=direct bs=4M', action: () => run('dd', [`if=${image}`, 'of=/dev/null', 'iflag=direct', 'bs=4M']), serverCpu: null, runs: [] },
    ];
    for (const parallel of [1, 8]) {
      contenders.push({ name: `nginx, ${parallel} parallel`, action: () => curlRanges(nginxUrl, certs, parallel, workDir), serverCpu: nginxCpu, runs: [] });
      contenders.push({ name: `agent, ${parallel} parallel`, action: () => curlRanges(agentUrl, certs, parallel, workDir), serverCpu: ownCpuSeconds, runs: [] });
    }
    for (let i = 0; i < RUNS; i++) {
      for (const contender of contenders) contender.runs.push(await measure(contender.action, contender.serverCpu));
    }
    const medians = new Map(contenders.map((contender) => [contender.name, median(contender.runs.map((r) => r.rate))]));
    const raw = medians.get(contenders[0].name)!;
    await closeApiServer(server);

    process.stdout.write(`agent: ${consume.readAhead} reads ahead of ${consume.chunkSize / MiB} MiB, first read of a range up to ${consume.firstChunkSize / 1024} KiB; reader I/O threads: ${args['io-threads'] ?? 'default'}; ${os.cpus().length} CPUs\n`);
    process.stdout.write('busy: share of the whole machine\'s CPU in use during the run (server, curl and kernel); near 100% means CPU-bound\n');
    process.stdout.write('server CPU: CPU seconds the server process(es) spent per GiB served; other CPU: the rest of the machine (curl, kernel)\n');
    process.stdout.write(`${os.cpus().length} CPUs at 100% can serve at most CPUs / (server + other CPU) GiB/s\n\n`);
    process.stdout.write(`${'what'.padEnd(28)} ${'MB/s'.padStart(8)} ${'x raw'.padStart(7)} ${'x nginx'.padStart(8)} ${'busy'.padStart(6)} ${'server CPU'.padStart(11)} ${'other CPU'.padStart(10)}   runs (MB/s)\n`);
    for (const contender of contenders) {
      const value = medians.get(contender.name)!;
      const peer = medians.get(contender.name.replace('agent', 'nginx'));
      const versusNginx = contender.name.startsWith('agent') && peer !== undefined ? (value / peer).toFixed(2) : '';
      const busy = `${(median(contender.runs.map((r) => r.machineBusy)) * 100).toFixed(0)}%`;
      const serverCpu = contender.serverCpu === null ? '' : `${median(contender.runs.map((r) => r.serverCpuPerGiB)).toFixed(2)} s`;
      const otherCpu = `${median(contender.runs.map((r) => r.otherCpuPerGiB)).toFixed(2)} s`;
      process.stdout.write(`${contender.name.padEnd(28)} ${value.toFixed(0).padStart(8)} ${(value / raw).toFixed(2).padStart(7)} ${versusNginx.padStart(8)} ${busy.padStart(6)} ${serverCpu.padStart(11)} ${otherCpu.padStart(10)}   ${contender.runs.map((r) => r.rate.toFixed(0)).join(' ')}\n`);
    }
  } finally {
    if (nginx !== undefined) await stopNginx(nginx);
    fs.rmSync(workDir, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`${(err as Error).stack ?? String(err)}\n`);
  process.exitCode = 1;
});
