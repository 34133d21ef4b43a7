// A small machine for lifecycle tests: two disk files, a snapstore location, the simulated
// engine, a database and a manager, all in one temporary directory on a real filesystem.
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { openDatabase } from '../../../src/db/database';
import { AgentState } from '../../../src/db/state';
import { SimulatedEngine } from '../../../src/engine/simulated';
import type { DeviceId, SnapshotEngine } from '../../../src/engine/types';
import { silentLogger } from '../../../src/log';
import { queryBlockDevice } from '../../../src/native/blockdev';
import { SnapshotManager } from '../../../src/snapshots/manager';
import { fileSystemDevice } from '../../../src/storage/sysfs';

export const MiB = 1024 * 1024;
export const DISK_SIZE = 64 * MiB;
export const CHUNK = 8 * MiB;

export interface LifecycleEnv {
  dir: string;
  location: string;
  disks: Array<{ id: string; path: string }>;
  engine: SnapshotEngine & { disks?: SimulatedEngine['disks'] };
  state: AgentState;
  manager: SnapshotManager;
  /** Stops the manager and engine and opens new ones on the same files, as a restart does. */
  restart(wrapEngine?: (engine: SnapshotEngine) => SnapshotEngine): Promise<void>;
  close(): Promise<void>;
}

export function pattern(length: number, seed: number): Buffer {
  const out = Buffer.alloc(length);
  for (let i = 0; i < length; i += 4) out.writeUInt32LE(((i / 4) * 2654435761 + seed * 40503) >>> 0, i);
  return out;
}

export function writeDisk(file: string, offset: number, data: Buffer): void {
  const fd = fs.openSync(file, 'r+');
  try {
    fs.writeSync(fd, data, 0, data.length, offset);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

export function readFile(file: string, offset: number, length: number): Buffer {
  const fd = fs.openSync(file, 'r');
  try {
    const buffer = Buffer.alloc(length);
    fs.readSync(fd, buffer, 0, length, offset);
    return buffer;
  } finally {
    fs.closeSync(fd);
  }
}

/** Builds the environment in `dir` (made if missing); an existing one is reopened as it was. */
export async function lifecycleEnv(dir?: string, wrapEngine: (engine: SnapshotEngine) => SnapshotEngine = (e) => e,
  options: { locationDevice?: (dir: string) => DeviceId } = {}): Promise<LifecycleEnv> {
  dir ??= await fsp.mkdtemp(path.join(os.tmpdir(), 'csa-lifecycle-'));
  const location = path.join(dir, 'snapstores');
  fs.mkdirSync(location, { recursive: true });
  const paths = ['disk0', 'disk1'].map((name, index) => {
    const file = path.join(dir!, `${name}.img`);
    if (!fs.existsSync(file)) {
      fs.writeFileSync(file, pattern(4 * MiB, index + 1));
      fs.truncateSync(file, DISK_SIZE);
    }
    return file;
  });

  const open = async (): Promise<Pick<LifecycleEnv, 'engine' | 'state' | 'manager'>> => {
    const simulated = new SimulatedEngine({ disks: paths, stateDir: path.join(dir!, 'engine'), pollIntervalMs: 50 });
    await simulated.start();
    const state = new AgentState(openDatabase(path.join(dir!, 'agent.db')));
    simulated.disks().forEach((disk, index) => {
      if (state.trackedDisk(`disk${index}`) === undefined) {
        state.upsertTrackedDisk({ id: `disk${index}`, path: disk.path, ...disk.device });
        state.insertMapping({ id: `mapping${index}`, diskId: `disk${index}`, location });
      }
    });
    const engine = wrapEngine(simulated);
    for (const disk of simulated.disks()) await engine.startTracking(disk.device);
    const manager = new SnapshotManager({
      engine, state, log: silentLogger(), snapStoreFileSize: CHUNK,
      locationDevice: options.locationDevice ?? fileSystemDevice,
      diskSize: (file) => queryBlockDevice(file).size,
      healthIntervalMs: 100, growthRetryMs: 100,
    });
    await manager.start();
    return { engine, state, manager };
  };

  const env = {
    dir, location, disks: paths.map((p, index) => ({ id: `disk${index}`, path: p })),
    ...(await open()),
    async restart(wrap?: (engine: SnapshotEngine) => SnapshotEngine) {
      await env.manager.stop();
      await env.engine.close();
      env.state.db.close();
      if (wrap !== undefined) wrapEngine = wrap;
      Object.assign(env, await open());
    },
    async close() {
      await env.manager.stop();
      await env.engine.close();
      env.state.db.close();
      await fsp.rm(dir!, { recursive: true, force: true });
    },
  };
  return env;
}

/** Every file under the location: what must be empty when no snapshot lives. */
export function snapstoreFiles(env: Pick<LifecycleEnv, 'location'>): string[] {
  return fs.readdirSync(env.location, { recursive: true }).map(String).sort();
}
