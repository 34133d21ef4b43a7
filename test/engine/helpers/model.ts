// The machine the engine crash tests share with their child process: two disk files and the
// simulated engine's state directory, all under one directory.
import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import { SimulatedEngine } from '../../../src/engine/simulated/engine';
import type { DeviceId } from '../../../src/core/devices';
import type { SnapshotEngine } from '../../../src/engine/types';

export const MiB = 1024 * 1024;
export const DISK_SIZE = 16 * MiB;

export function diskPaths(dir: string): string[] {
  return ['disk0', 'disk1'].map((name) => path.join(dir, `${name}.img`));
}

/** Creates the disk files, each with some data and a hole, when they do not exist yet. */
export function makeDisks(dir: string): void {
  for (const [index, file] of diskPaths(dir).entries()) {
    if (fs.existsSync(file)) continue;
    fs.writeFileSync(file, Buffer.alloc(MiB, 0x11 * (index + 1)));
    fs.truncateSync(file, DISK_SIZE);
  }
}

export async function startEngine(dir: string): Promise<SimulatedEngine> {
  const engine = new SimulatedEngine({ disks: diskPaths(dir), stateDir: path.join(dir, 'engine'), pollIntervalMs: 50 });
  await engine.start();
  return engine;
}

/** A fresh snapstore with ample space for each device, as the agent gives one per disk. */
export async function snapstoresFor(engine: SnapshotEngine, devices: DeviceId[]): Promise<string[]> {
  const ids: string[] = [];
  for (const [index, device] of devices.entries()) {
    const snapstore = await engine.createSnapstore({
      id: crypto.randomBytes(16).toString('hex'), devices: [device], storage: { major: 254, minor: 0 }, thresholdBytes: MiB,
    });
    await snapstore.addDeviceRanges([{ offset: index * DISK_SIZE, length: DISK_SIZE }]);
    ids.push(snapstore.id);
  }
  return ids;
}
