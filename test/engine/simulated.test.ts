import assert from 'node:assert/strict';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { SimulatedEngine } from '../../src/engine/simulated/engine';
import { readFile, writeDisk } from '../snapshots/helpers/env';
import { engineConformance, MiB, type ConformanceTarget, type TestDisk } from './conformance';

const DISK_SIZE = 64 * MiB;

engineConformance('simulated', async (): Promise<ConformanceTarget> => {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'csa-engine-'));
  const paths = [0, 1].map((index) => path.join(dir, `disk${index}.img`));
  for (const file of paths) {
    // Non-trivial content, with a hole, as a used disk has.
    fs.writeFileSync(file, Buffer.alloc(MiB, index(file)));
    fs.truncateSync(file, DISK_SIZE);
  }
  const stateDir = path.join(dir, 'state');
  const options = { disks: paths, stateDir, pollIntervalMs: 50 };
  const probe = new SimulatedEngine(options);
  await probe.start();
  const disks: TestDisk[] = probe.disks().map((d) => ({ ...d, size: DISK_SIZE }));
  await probe.close();
  let next = 0;
  return {
    disks,
    async newEngine() {
      const engine = new SimulatedEngine(options);
      await engine.start();
      return engine;
    },
    writeDisk: async (disk, offset, data) => writeDisk(disk.path, offset, data),
    readDisk: async (disk, offset, length) => readFile(disk.path, offset, length),
    storage: {
      device: { major: 254, minor: 0 },
      take(bytes) {
        const range = { offset: next, length: bytes };
        next += bytes;
        return [range];
      },
    },
    eventTimeoutMs: 10_000,
    async dispose() {
      await fsp.rm(dir, { recursive: true, force: true });
    },
  };
});

function index(file: string): number {
  return file.endsWith('0.img') ? 0x5a : 0xa5;
}

test('a restart counts the blocks copied before it once, not twice', { timeout: 120_000 }, async (t) => {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'csa-engine-fill-'));
  t.after(() => fsp.rm(dir, { recursive: true, force: true }));
  const disk = path.join(dir, 'disk.img');
  fs.writeFileSync(disk, Buffer.alloc(MiB, 0x33));
  fs.truncateSync(disk, DISK_SIZE);
  // No poller: each count happens at an explicit scan().
  const options = { disks: [disk], stateDir: path.join(dir, 'state'), pollIntervalMs: 3_600_000 };
  let engine = new SimulatedEngine(options);
  await engine.start();
  t.after(() => engine.close());
  const [device] = engine.disks().map((d) => d.device);
  const snapstore = await engine.createSnapstore({ id: 'ab'.repeat(16), devices: [device], storage: { major: 254, minor: 0 }, thresholdBytes: 0 });
  await snapstore.addDeviceRanges([{ offset: 0, length: MiB }]);
  await engine.createSnapshot([device]);

  writeDisk(disk, 8 * MiB, Buffer.alloc(640 * 1024, 1));
  await engine.scan();
  await engine.close();
  engine = new SimulatedEngine(options);
  await engine.start();
  await engine.scan();
  writeDisk(disk, 16 * MiB, Buffer.alloc(256 * 1024, 2));
  await engine.scan();
  assert.deepEqual(await engine.snapshotHealth(device), { ok: true }, '896 KiB of 1 MiB are used');
  writeDisk(disk, 24 * MiB, Buffer.alloc(256 * 1024, 3));
  await engine.scan();
  assert.equal((await engine.snapshotHealth(device)).ok, false, 'and 1152 KiB overflow it');
});
