import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { SimulatedEngine } from '../../src/engine/simulated';
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
