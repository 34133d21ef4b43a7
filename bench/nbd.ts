// Sequential read throughput over NBD: `nbdcopy URI null:` (multi-conn, 4 connections) against
// our server, `qemu-nbd -r --cache=none` and `nbdkit file cache=none` serving the same image,
// in plaintext and with TLS, and `dd iflag=direct bs=4M` as the disk's own speed. Every round
// runs each contender once, right after a dd run of its own, page cache dropped before each
// run; ratios are taken per pair and per round (a shared virtual disk drifts more than the
// differences measured) and the medians printed. A first round warms up (JIT, buffer pool) and
// is not counted. Each row also says how busy the machine was (near 100%: bound by the CPU, not
// the disk) and the CPU seconds per GiB of the server and of everything else (nbdcopy, kernel).
// Usage:
//   node dist/bench/nbd.js [--dir DIR] [--size-mib 1024] [--repeat 3] [--connections 4]
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';

import { silentLogger } from '../src/core/log';
import { createNbdServer } from '../src/nbd/server';
import { makeTestCerts, type TestCerts } from '../test/helpers/certs';
import { FakeExportRegistry } from '../test/nbd/helpers/fake-registry';
import { run } from '../test/nbd/helpers/server';
import { ownCpuSeconds, processCpuSeconds, withCpuUse, type CpuUse } from './cpu';
import { freePort } from '../test/helpers/ports';

const MiB = 1024 * 1024;
const EXPORT_NAME = '1/bench';

const { values: options } = parseArgs({
  options: {
    dir: { type: 'string', default: os.tmpdir() },
    'size-mib': { type: 'string', default: '1024' },
    repeat: { type: 'string', default: '3' },
    connections: { type: 'string', default: '4' },
  },
});
const imageSize = Number(options['size-mib']) * MiB;
const repeat = Number(options.repeat);
const connections = Number(options.connections);

type Mode = 'plain' | 'tls';

interface Contender {
  label: string;
  /** Starts serving; resolves with the nbdcopy source URI, the server's CPU seconds so far, and how to stop. */
  start(mode: Mode): Promise<{ uri: string; cpuSeconds: () => number; stop(): Promise<void> }>;
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

function createImage(file: string): void {
  const block = Buffer.alloc(16 * MiB);
  const fd = fs.openSync(file, 'wx', 0o600);
  try {
    for (let written = 0; written < imageSize; written += block.length) {
      // Different bytes in every block, so nothing along the way can shortcut zeroes or repeats.
      for (let i = 0; i < block.length; i += 4096) block.writeUInt32LE((written + i) * 2654435761 >>> 0, i);
      fs.writeSync(fd, block, 0, Math.min(block.length, imageSize - written));
    }
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

function dropCaches(): void {
  try {
    fs.writeFileSync('/proc/sys/vm/drop_caches', '3');
  } catch {
    // Not root: O_DIRECT contenders do not care; nbdkit's cache=none evicts as it goes.
  }
}

async function waitForPort(port: number, child: ChildProcess): Promise<void> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`${child.spawnfile} exited with status ${child.exitCode}`);
    const connected = await new Promise<boolean>((resolve) => {
      const socket = net.connect(port, '127.0.0.1');
      socket.once('connect', () => { socket.destroy(); resolve(true); });
      socket.once('error', () => resolve(false));
    });
    if (connected) return;
    if (Date.now() > deadline) throw new Error(`${child.spawnfile} is not listening on ${port}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

async function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGTERM');
  await exited;
}

function uriFor(port: number, mode: Mode, certs: TestCerts): string {
  const name = encodeURIComponent(EXPORT_NAME);
  return mode === 'tls' ? `nbds://127.0.0.1:${port}/${name}?tls-certificates=${certs.dir}` : `nbd://127.0.0.1:${port}/${name}`;
}

function contenders(image: string, certs: TestCerts): Contender[] {
  const pem = (file: string): string => fs.readFileSync(file, 'utf8');
  const ours: Contender = {
    label: 'coriolis-snapshot-agent',
    async start(mode) {
      const registry = new FakeExportRegistry();
      registry.add({ name: EXPORT_NAME, file: image });
      const server = createNbdServer({
        registry,
        log: silentLogger(),
        tls: mode === 'tls'
          ? { mode: 'require', certificate: pem(certs.serverCert), key: pem(certs.serverKey), caCertificate: pem(certs.caCert) }
          : { mode: 'off' },
        bind: '127.0.0.1',
        port: 0,
        maxConnections: 64,
      });
      const { port } = await server.listen();
      return { uri: uriFor(port, mode, certs), cpuSeconds: ownCpuSeconds, stop: () => server.close() };
    },
  };
  const qemuNbd: Contender = {
    label: 'qemu-nbd -r --cache=none',
    async start(mode) {
      const port = await freePort();
      const args = ['-r', '--cache=none', '-f', 'raw', '-x', EXPORT_NAME, '-b', '127.0.0.1', '-p', String(port), '-t', '-e', '16'];
      if (mode === 'tls') {
        args.push('--object', `tls-creds-x509,id=tls0,endpoint=server,dir=${certs.dir},verify-peer=on`, '--tls-creds', 'tls0');
      }
      // stderr ignored: qemu-nbd complains about every readiness probe; a failed start shows as its exit.
      const child = spawn('qemu-nbd', [...args, image], { stdio: 'ignore' });
      await waitForPort(port, child);
      return { uri: uriFor(port, mode, certs), cpuSeconds: () => processCpuSeconds([child.pid!]), stop: () => stopChild(child) };
    },
  };
  const nbdkit: Contender = {
    label: 'nbdkit file cache=none',
    async start(mode) {
      const port = await freePort();
      const args = ['-f', '-r', '-i', '127.0.0.1', '-p', String(port), '--exit-with-parent'];
      if (mode === 'tls') args.push('--tls=require', `--tls-certificates=${certs.dir}`, '--tls-verify-peer');
      const child = spawn('nbdkit', [...args, 'file', image, 'cache=none'], { stdio: ['ignore', 'ignore', 'inherit'] });
      await waitForPort(port, child);
      return { uri: uriFor(port, mode, certs), cpuSeconds: () => processCpuSeconds([child.pid!]), stop: () => stopChild(child) };
    },
  };
  return [ours, qemuNbd, nbdkit];
}

async function nbdcopyMegabytesPerSecond(uri: string, serverCpu: () => number): Promise<{ speed: number; cpu: CpuUse }> {
  dropCaches();
  const started = process.hrtime.bigint();
  const { result, cpu } = await withCpuUse(
    () => run('nbdcopy', [`--connections=${connections}`, `--threads=${connections}`, uri, 'null:'], { timeoutMs: 600_000 }), serverCpu);
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  if (result.code !== 0) throw new Error(`nbdcopy ${uri}: ${result.stderr}`);
  return { speed: imageSize / seconds / 1e6, cpu };
}

async function ddMegabytesPerSecond(image: string): Promise<number> {
  dropCaches();
  const started = process.hrtime.bigint();
  const result = await run('dd', [`if=${image}`, 'of=/dev/null', 'iflag=direct', `bs=${4 * MiB}`], { timeoutMs: 600_000 });
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  if (result.code !== 0) throw new Error(`dd: ${result.stderr}`);
  return imageSize / seconds / 1e6;
}

interface Round {
  /** MB/s of each contender, and of the dd run just before it, by contender label and mode. */
  speeds: Map<string, number>;
  dd: Map<string, number>;
  cpu: Map<string, CpuUse>;
}

function key(label: string, mode: Mode): string {
  return `${label} (${mode === 'tls' ? 'TLS' : 'plaintext'})`;
}

function printTable(rounds: Round[], labels: string[]): void {
  const ours = labels[0];
  const qemu = labels[1];
  const header = ['server', 'MB/s', 'ours / this', 'this / dd', 'busy', 'server CPU/GiB', 'other CPU/GiB'];
  const rows: string[][] = [['dd iflag=direct bs=4M', median(rounds.flatMap((r) => [...r.dd.values()])).toFixed(0), '', '1.00', '', '', '']];
  const perGiB = imageSize / (1024 * MiB);
  for (const mode of ['plain', 'tls'] as const) {
    for (const label of labels) {
      const name = key(label, mode);
      rows.push([
        name,
        median(rounds.map((r) => r.speeds.get(name)!)).toFixed(0),
        label === ours ? '' : median(rounds.map((r) => r.speeds.get(key(ours, mode))! / r.speeds.get(name)!)).toFixed(2),
        median(rounds.map((r) => r.speeds.get(name)! / r.dd.get(name)!)).toFixed(2),
        `${(median(rounds.map((r) => r.cpu.get(name)!.machineBusy)) * 100).toFixed(0)}%`,
        `${median(rounds.map((r) => r.cpu.get(name)!.serverSeconds / perGiB)).toFixed(2)} s`,
        `${median(rounds.map((r) => r.cpu.get(name)!.otherSeconds / perGiB)).toFixed(2)} s`,
      ]);
    }
  }
  const widths = header.map((title, column) => Math.max(title.length, ...rows.map((row) => row[column].length)));
  const line = (cells: string[]): string => `| ${cells.map((text, column) => text.padEnd(widths[column])).join(' | ')} |`;
  console.log(line(header));
  console.log(`|${widths.map((width) => '-'.repeat(width + 2)).join('|')}|`);
  for (const row of rows) console.log(line(row));
  const plainOurs = median(rounds.map((r) => r.speeds.get(key(ours, 'plain'))! / r.speeds.get(key(qemu, 'plain'))!));
  const plainRaw = median(rounds.map((r) => r.speeds.get(key(ours, 'plain'))! / r.dd.get(key(ours, 'plain'))!));
  console.log(`\ntargets (plaintext): ours/qemu-nbd ${plainOurs.toFixed(2)} (>= 1.0), ours/dd ${plainRaw.toFixed(2)} (>= 0.9)`);
}

async function main(): Promise<void> {
  const workDir = fs.mkdtempSync(path.join(options.dir, 'coriolis-bench-nbd-'));
  try {
    const certsDir = path.join(workDir, 'certs');
    fs.mkdirSync(certsDir);
    const certs = makeTestCerts(certsDir);
    const image = path.join(workDir, 'image.raw');
    console.log(`writing a ${imageSize / MiB} MiB image in ${workDir}…`);
    createImage(image);
    const all = contenders(image, certs);
    console.log(`${repeat} rounds after a warm-up round; nbdcopy --connections=${connections}; ${os.cpus().length} CPUs\n`);
    const rounds: Round[] = [];
    for (let round = 0; round <= repeat; round++) {
      const speeds = new Map<string, number>();
      const dd = new Map<string, number>();
      const cpu = new Map<string, CpuUse>();
      for (const mode of ['plain', 'tls'] as const) {
        for (const contender of all) {
          const name = key(contender.label, mode);
          dd.set(name, await ddMegabytesPerSecond(image));
          const served = await contender.start(mode);
          try {
            const measured = await nbdcopyMegabytesPerSecond(served.uri, served.cpuSeconds);
            speeds.set(name, measured.speed);
            cpu.set(name, measured.cpu);
          } finally {
            await served.stop();
          }
        }
      }
      const summary = [...speeds].map(([name, speed]) => `${name} ${speed.toFixed(0)} (dd ${dd.get(name)!.toFixed(0)})`).join(', ');
      console.log(`${round === 0 ? 'warm-up' : `round ${round}`}: ${summary}`);
      if (round > 0) rounds.push({ dd, speeds, cpu });
    }
    console.log('');
    printTable(rounds, all.map((contender) => contender.label));
  } finally {
    fs.rmSync(workDir, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
