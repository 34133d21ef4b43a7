// Benchmark of the digests route: the SHA-256 digests of a whole image (random bytes, so every
// block is hashed; and the same size of zeros, which are only compared), fetched over HTTPS with
// client certificates by curl in the binary format, against `dd iflag=direct bs=4M` of the same
// file in the same run. Reports MB/s, the ratio to dd (target >= 0.9) and the agent's CPU seconds
// per GiB. Runs are interleaved; each figure is the median of --runs runs.
//
//   npm run build && node dist/bench/digests.js [--size-mib N] [--runs N] [--block-size-mib N]
import { execFile } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { parseArgs, promisify } from 'node:util';
import { createApp } from '../src/api/app';
import { createApiServer, listenApiServer } from '../src/api/server';
import { generateCertificates } from '../src/cli/gen-certs';
import { silentLogger } from '../src/core/log';
import { FakeAgentService, HEALTHY_PROBES } from '../test/api/helpers/fake-service';
import { closeApiServer } from '../test/api/helpers/server';
import { ownCpuSeconds } from './cpu';

const MiB = 1024 * 1024;
const run = promisify(execFile);
const { values: args } = parseArgs({
  options: {
    'size-mib': { type: 'string', default: '2048' },
    runs: { type: 'string', default: '3' },
    'block-size-mib': { type: 'string', default: '4' },
  },
});
const SIZE = Number(args['size-mib']) * MiB;
const RUNS = Number(args.runs);
const BLOCK = Number(args['block-size-mib']) * MiB;

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

function makeImage(file: string, random: boolean): void {
  const fd = fs.openSync(file, 'w');
  const chunk = Buffer.alloc(16 * MiB);
  for (let written = 0; written < SIZE; written += chunk.length) {
    if (random) crypto.randomFillSync(chunk);
    fs.writeSync(fd, chunk, 0, Math.min(chunk.length, SIZE - written));
  }
  fs.fsyncSync(fd);
  fs.closeSync(fd);
}

async function main(): Promise<void> {
  const workDir = fs.mkdtempSync(path.join(os.tmpdir(), 'csa-bench-digests-'));
  try {
    const images = { random: path.join(workDir, 'random.img'), zeros: path.join(workDir, 'zeros.img') };
    makeImage(images.random, true);
    makeImage(images.zeros, false);
    const certs = await generateCertificates({ outDir: path.join(workDir, 'certs') });
    const service = new FakeAgentService([
      { name: 'random', file: images.random, size: SIZE, tracked: true, mapped: true },
      { name: 'zeros', file: images.zeros, size: SIZE, tracked: true, mapped: true },
    ]);
    const snapshotId = (await service.createSnapshot(['random', 'zeros'])).id;
    const log = silentLogger();
    const server = createApiServer({
      tls: { certificate: fs.readFileSync(certs.serverCert, 'utf8'), key: fs.readFileSync(certs.serverKey, 'utf8'), caCertificate: fs.readFileSync(certs.caCert, 'utf8') },
      handler: createApp({ service, log, health: HEALTHY_PROBES }).callback(),
      log,
    });
    await listenApiServer(server, 0, '127.0.0.1');
    const port = (server.address() as AddressInfo).port;
    const curl = (disk: string): Promise<unknown> => run('curl', ['-sS', '--fail', '--cacert', certs.caCert, '--cert', certs.clientCert, '--key', certs.clientKey,
      '-H', 'Accept: application/vnd.coriolis.digests', '-o', '/dev/null',
      `https://localhost:${port}/api/v1/snapshots/${snapshotId}/digests/${disk}?block_size=${BLOCK}`]);
    const contenders = [
      { name: 'dd iflag=direct bs=4M (random)', action: () => run('dd', [`if=${images.random}`, 'of=/dev/null', 'iflag=direct', 'bs=4M']), agent: false },
      { name: 'agent digests (random)', action: () => curl('random'), agent: true },
      { name: 'dd iflag=direct bs=4M (zeros)', action: () => run('dd', [`if=${images.zeros}`, 'of=/dev/null', 'iflag=direct', 'bs=4M']), agent: false },
      { name: 'agent digests (zeros)', action: () => curl('zeros'), agent: true },
    ].map((contender) => ({ ...contender, rates: [] as number[], cpuPerGiB: [] as number[] }));
    for (let i = 0; i < RUNS; i++) {
      for (const contender of contenders) {
        const cpu = ownCpuSeconds();
        const started = process.hrtime.bigint();
        await contender.action();
        const seconds = Number(process.hrtime.bigint() - started) / 1e9;
        contender.rates.push(SIZE / seconds / 1e6);
        contender.cpuPerGiB.push((ownCpuSeconds() - cpu) / (SIZE / (1024 * MiB)));
      }
    }
    const rate = (name: string): number => median(contenders.find((contender) => contender.name === name)!.rates);
    console.log(`image ${SIZE / MiB} MiB, block_size ${BLOCK / MiB} MiB, ${RUNS} runs, ${os.cpus().length} CPUs; medians`);
    for (const contender of contenders) {
      const base = contender.name.includes('random') ? rate('dd iflag=direct bs=4M (random)') : rate('dd iflag=direct bs=4M (zeros)');
      const ratio = median(contender.rates) / base;
      const cpu = contender.agent ? `, agent CPU ${median(contender.cpuPerGiB).toFixed(2)} s/GiB` : '';
      console.log(`${contender.name.padEnd(34)} ${median(contender.rates).toFixed(0).padStart(6)} MB/s  ${ratio.toFixed(2)}x dd${cpu}`);
    }
    await closeApiServer(server, 100);
  } finally {
    fs.rmSync(workDir, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
