// Sequential throughput of DirectReader against `dd iflag=direct bs=4M` on the same targets:
// a file, and (as root) a loop device over it. Usage:
//   node dist/bench/reader.js [--dir DIR] [--size-mib 1024] [--repeat 5] [--io-threads 8]
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';

import { DirectReader, configureReaderPool, readerPoolStats } from '../src/native/reader';
import { attachLoopDevice, loopDevicesUnavailable, type LoopDevice } from '../test/native/helpers/loop';

const MiB = 1024 * 1024;
const DD_BLOCK = 4 * MiB;

const { values: options } = parseArgs({
  options: {
    dir: { type: 'string', default: os.tmpdir() },
    'size-mib': { type: 'string', default: '1024' },
    repeat: { type: 'string', default: '5' },
    'io-threads': { type: 'string', default: '8' },
  },
});
const targetSize = Number(options['size-mib']) * MiB;
const repeat = Number(options.repeat);
const ioThreads = Number(options['io-threads']);

interface Target {
  label: string;
  path: string;
}

interface Row {
  target: string;
  request: string;
  readerMegabytesPerSecond: number;
  ddMegabytesPerSecond: number;
  ratio: number;
  // dd with the reader's request size: what the device gives requests of that size.
  sameSizeDdMegabytesPerSecond: number;
  sameSizeRatio: number;
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

function createTarget(file: string): void {
  const block = Buffer.alloc(16 * MiB);
  for (let i = 0; i < block.length; i += 4096) block.writeUInt32LE(i * 2654435761 >>> 0, i);
  const fd = fs.openSync(file, 'wx', 0o600);
  try {
    for (let written = 0; written < targetSize; written += block.length) {
      fs.writeSync(fd, block, 0, Math.min(block.length, targetSize - written));
    }
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

function ddMegabytesPerSecond(target: string, blockSize: number): number {
  const started = process.hrtime.bigint();
  execFileSync('dd', [`if=${target}`, 'of=/dev/null', 'iflag=direct', `bs=${blockSize}`], { stdio: 'ignore' });
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  return targetSize / seconds / 1e6;
}

async function readerMegabytesPerSecond(target: string, requestSize: number, inFlight: number): Promise<number> {
  const reader = await DirectReader.open(target);
  try {
    let next = 0;
    let bytes = 0;
    const stream = async (): Promise<void> => {
      while (next < reader.size) {
        const offset = next;
        next += requestSize;
        const buffer = await reader.read(offset, Math.min(requestSize, reader.size - offset));
        bytes += buffer.length;
      }
    };
    const started = process.hrtime.bigint();
    await Promise.all(Array.from({ length: inFlight }, stream));
    const seconds = Number(process.hrtime.bigint() - started) / 1e9;
    if (bytes !== reader.size) throw new Error(`read ${bytes} bytes of ${reader.size}`);
    return bytes / seconds / 1e6;
  } finally {
    await reader.close();
  }
}

// Each reader run is paired with dd runs right before it, and the ratios taken per pair: the
// throughput of a shared virtual disk drifts by more than the differences being measured.
async function measure(target: Target): Promise<Row[]> {
  const rows: Row[] = [];
  for (const requestSize of [1 * MiB, 4 * MiB]) {
    for (const inFlight of [1, 4, 8]) {
      const runs = [];
      for (let i = 0; i < repeat; i++) {
        const dd = ddMegabytesPerSecond(target.path, DD_BLOCK);
        const sameSizeDd = requestSize === DD_BLOCK ? dd : ddMegabytesPerSecond(target.path, requestSize);
        runs.push({ dd, sameSizeDd, reader: await readerMegabytesPerSecond(target.path, requestSize, inFlight) });
      }
      rows.push({
        target: target.label,
        request: `${requestSize / MiB} MiB x ${inFlight} in flight`,
        readerMegabytesPerSecond: median(runs.map((run) => run.reader)),
        ddMegabytesPerSecond: median(runs.map((run) => run.dd)),
        ratio: median(runs.map((run) => run.reader / run.dd)),
        sameSizeDdMegabytesPerSecond: median(runs.map((run) => run.sameSizeDd)),
        sameSizeRatio: median(runs.map((run) => run.reader / run.sameSizeDd)),
      });
    }
  }
  return rows;
}

function printTable(rows: Row[]): void {
  const header = ['target', 'reader requests', 'reader MB/s', `dd bs=${DD_BLOCK / MiB}M MB/s`, 'reader/dd',
    'dd bs=request MB/s', 'reader/dd same bs'];
  const cells = rows.map((row) => [
    row.target,
    row.request,
    row.readerMegabytesPerSecond.toFixed(0),
    row.ddMegabytesPerSecond.toFixed(0),
    row.ratio.toFixed(2),
    row.sameSizeDdMegabytesPerSecond.toFixed(0),
    row.sameSizeRatio.toFixed(2),
  ]);
  const widths = header.map((title, column) => Math.max(title.length, ...cells.map((cell) => cell[column].length)));
  const line = (cell: string[]): string => `| ${cell.map((text, column) => text.padEnd(widths[column])).join(' | ')} |`;
  console.log(line(header));
  console.log(`|${widths.map((width) => '-'.repeat(width + 2)).join('|')}|`);
  for (const cell of cells) console.log(line(cell));
}

async function main(): Promise<void> {
  configureReaderPool({ ioThreads });
  const workDir = fs.mkdtempSync(path.join(options.dir, 'coriolis-bench-'));
  const file = path.join(workDir, 'target.bin');
  let loop: LoopDevice | undefined;
  try {
    console.log(`writing a ${targetSize / MiB} MiB target in ${workDir}…`);
    createTarget(file);
    const targets: Target[] = [{ label: 'file', path: file }];
    const loopUnavailable = loopDevicesUnavailable();
    if (loopUnavailable === undefined) {
      loop = attachLoopDevice(file, { directIo: true });
      targets.push({ label: `loop (${loop.directIo ? 'direct-io=on' : 'direct-io unsupported: buffered'})`, path: loop.path });
    } else {
      console.log(`no loop device target: ${loopUnavailable}`);
    }
    console.log(`medians of ${repeat} runs, each reader run paired with dd runs just before it; reader I/O threads: ${ioThreads}; ${os.cpus().length} CPUs\n`);
    const rows: Row[] = [];
    for (const target of targets) rows.push(...(await measure(target)));
    printTable(rows);
    const stats = readerPoolStats();
    console.log(`\npool after the runs: ${stats.buffersInUse} buffers in use (${(stats.bytesInUse / MiB).toFixed(0)} MiB), ` +
      `${stats.buffersPooled} pooled (${(stats.bytesPooled / MiB).toFixed(0)} MiB)`);
  } finally {
    loop?.detach();
    fs.rmSync(workDir, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
