// What a snapshot costs the simulated engine on a given filesystem: a 4 GiB disk file holding
// 1 GiB of data, tracked, snapshotted, written to, snapshotted again.
// Usage: node dist/bench/simulated.js [DIR]   (DIR on the filesystem to measure; default tmpdir)
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { SimulatedEngine } from '../src/engine/simulated/engine';

const MiB = 1024 * 1024;
const DISK = 4096 * MiB;

async function timed<T>(label: string, work: () => Promise<T>): Promise<T> {
  const start = performance.now();
  const result = await work();
  console.log(`${label.padEnd(44)} ${((performance.now() - start) / 1000).toFixed(2).padStart(7)} s`);
  return result;
}

async function main(): Promise<void> {
  const dir = fs.mkdtempSync(path.join(process.argv[2] ?? os.tmpdir(), 'csa-bench-sim-'));
  try {
    const disk = path.join(dir, 'disk.img');
    const fd = fs.openSync(disk, 'w');
    const chunk = crypto.randomBytes(16 * MiB);
    // 1 GiB of data in 16 MiB pieces spread over the disk; the rest is holes.
    for (let offset = 0; offset < DISK; offset += 64 * MiB) fs.writeSync(fd, chunk, 0, chunk.length, offset);
    fs.ftruncateSync(fd, DISK);
    fs.fsyncSync(fd);
    fs.closeSync(fd);
    const type = (await import('node:child_process')).execFileSync('stat', ['-f', '-c', '%T', dir], { encoding: 'utf8' }).trim();
    console.log(`simulated engine on ${type} (${dir}): 4 GiB disk, 1 GiB of data`);

    const engine = new SimulatedEngine({ disks: [disk], stateDir: path.join(dir, 'state'), pollIntervalMs: 60_000 });
    await engine.start();
    const { device } = engine.disks()[0];
    await timed('start tracking (reference copy)', () => engine.startTracking(device));
    const store = await engine.createSnapstore({ id: crypto.randomBytes(16).toString('hex'), devices: [device], storage: { major: 254, minor: 0 }, thresholdBytes: MiB });
    await store.addDeviceRanges([{ offset: 0, length: 1024 * MiB }]);
    const first = await timed('snapshot 1 (image copy + CBT comparison)', () => engine.createSnapshot([device]));
    const wfd = fs.openSync(disk, 'r+');
    fs.writeSync(wfd, crypto.randomBytes(64 * MiB), 0, 64 * MiB, 1000 * MiB);
    fs.fsyncSync(wfd);
    fs.closeSync(wfd);
    await timed('copy-on-write scan after 64 MiB of writes', () => engine.scan());
    await engine.destroySnapshot(first.handle);
    await store.cleanup();
    const store2 = await engine.createSnapstore({ id: crypto.randomBytes(16).toString('hex'), devices: [device], storage: { major: 254, minor: 0 }, thresholdBytes: MiB });
    await store2.addDeviceRanges([{ offset: 0, length: 1024 * MiB }]);
    const second = await timed('snapshot 2', () => engine.createSnapshot([device]));
    await engine.destroySnapshot(second.handle);
    await store2.cleanup();
    await engine.close();
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

void main();
