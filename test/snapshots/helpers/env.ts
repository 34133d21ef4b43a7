// A small machine for lifecycle tests: two disk files, a snapstore location, the simulated
// engine, a database and a manager, all in one temporary directory on a real filesystem.
import assert from 'node:assert/strict';
import { once, type EventEmitter } from 'node:events';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { AgentState } from '../../../src/db/state';
import { SimulatedEngine } from '../../../src/engine/simulated/engine';
import type { DeviceId } from '../../../src/core/devices';
import type { SnapshotEngine } from '../../../src/engine/types';
import { silentLogger } from '../../../src/core/log';
import { queryBlockDevice } from '../../../src/native/blockdev';
import { ExportRegistry } from '../../../src/exports/registry';
import { SnapshotManager } from '../../../src/snapshots/manager';
import { fileSystemDevice } from '../../../src/host/sysfs';

export const MiB = 1024 * 1024;
export const DISK_SIZE = 64 * MiB;
export const CHUNK = 8 * MiB;

export interface LifecycleEnv {
  dir: string;
  location: string;
  diskSize: number;
  /** The CBT block size the engine reports for the disks. */
  cbtBlockSize: number;
  disks: Array<{ id: string; path: string }>;
  engine: SnapshotEngine;
  state: AgentState;
  manager: SnapshotManager;
  exports: ExportRegistry;
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

/** The disks, snapstore location and engine a lifecycle environment runs on. */
export interface Machine {
  /** Disk paths; each starts with pattern(4 MiB, index + 1). */
  disks: string[];
  diskSize: number;
  location: string;
  /** Where the database and engine state live. */
  stateDir: string;
  /** A fresh engine object over the same kernel (or model) state, started. */
  newEngine(): Promise<SnapshotEngine>;
  /** The device number of each disk, as the engine names it. */
  devices(engine: SnapshotEngine): DeviceId[];
  /** The CBT block size the engine reports for these disks, when not 256 KiB (blksnap: 64 KiB). */
  cbtBlockSize?: number;
  dispose(): Promise<void>;
}

/** Disk files and the simulated engine in one temporary directory; reopened as it was if `dir` exists. */
export async function simulatedMachine(dir?: string): Promise<Machine> {
  const base = dir ?? (await fsp.mkdtemp(path.join(os.tmpdir(), 'csa-lifecycle-')));
  const location = path.join(base, 'snapstores');
  fs.mkdirSync(location, { recursive: true });
  const disks = ['disk0', 'disk1'].map((name, index) => {
    const file = path.join(base, `${name}.img`);
    if (!fs.existsSync(file)) {
      fs.writeFileSync(file, pattern(4 * MiB, index + 1));
      fs.truncateSync(file, DISK_SIZE);
    }
    return file;
  });
  return {
    disks, diskSize: DISK_SIZE, location, stateDir: base,
    async newEngine() {
      const engine = new SimulatedEngine({ disks, stateDir: path.join(base, 'engine'), pollIntervalMs: 50 });
      await engine.start();
      return engine;
    },
    devices: (engine) => (engine as SimulatedEngine).disks().map((d) => d.device),
    dispose: () => fsp.rm(base, { recursive: true, force: true }),
  };
}

export interface EnvOptions {
  machine?: Machine;
  wrapEngine?: (engine: SnapshotEngine) => SnapshotEngine;
  locationDevice?: (dir: string) => DeviceId;
}

/** A lifecycle environment on `machine` (by default a new simulated one). */
export async function lifecycleEnv(options: EnvOptions = {}): Promise<LifecycleEnv> {
  const machine = options.machine ?? (await simulatedMachine());
  let wrapEngine = options.wrapEngine ?? ((e: SnapshotEngine) => e);
  const { location } = machine;

  const open = async (): Promise<Pick<LifecycleEnv, 'engine' | 'state' | 'manager' | 'exports'>> => {
    const inner = await machine.newEngine();
    const state = AgentState.open(path.join(machine.stateDir, 'agent.db'));
    machine.devices(inner).forEach((device, index) => {
      if (state.disks.get(`disk${index}`) === undefined) {
        state.disks.upsert({ id: `disk${index}`, path: machine.disks[index], ...device });
        state.mappings.insert({ id: `mapping${index}`, diskId: `disk${index}`, location });
      }
    });
    const engine = wrapEngine(inner);
    for (const device of machine.devices(inner)) await engine.startTracking(device);
    const registry = new ExportRegistry({ state, engine });
    const manager = new SnapshotManager({
      engine, state, exports: registry, log: silentLogger(), snapStoreFileSize: CHUNK,
      locationDevice: options.locationDevice ?? fileSystemDevice,
      diskSize: (file) => queryBlockDevice(file).size,
      healthIntervalMs: 100, growthRetryMs: 100,
    });
    await manager.start();
    return { engine, state, manager, exports: registry };
  };

  const shutDown = async (): Promise<void> => {
    await env.manager.stop();
    await env.engine.close();
    env.state.close();
  };
  const env = {
    dir: machine.stateDir, location, diskSize: machine.diskSize, cbtBlockSize: machine.cbtBlockSize ?? 256 * 1024,
    disks: machine.disks.map((p, index) => ({ id: `disk${index}`, path: p })),
    ...(await open()),
    async restart(wrap?: (engine: SnapshotEngine) => SnapshotEngine) {
      await shutDown();
      if (wrap !== undefined) wrapEngine = wrap;
      Object.assign(env, await open());
    },
    async close() {
      // Kernel state outlives the engine object: leave none behind for the next test.
      for (const snapshot of env.state.snapshots.list()) await env.manager.deleteSnapshot(snapshot.id);
      for (const row of env.state.disks.list()) await env.engine.stopTracking({ major: row.major, minor: row.minor }).catch(() => undefined);
      await shutDown();
      await machine.dispose();
    },
  };
  return env;
}

/** Every file under the location: what must be empty when no snapshot lives. */
export function snapstoreFiles(env: Pick<LifecycleEnv, 'location'>): string[] {
  return fs.readdirSync(env.location, { recursive: true }).map(String).sort();
}

/** Nothing of a snapshot is left: no rows, no files, no kernel snapshot, snapstore or image. */
export async function assertNothingLeft(e: LifecycleEnv): Promise<void> {
  assert.deepEqual(e.state.snapshots.list(), []);
  assert.deepEqual(e.state.snapstores.list(), []);
  assert.deepEqual(snapstoreFiles(e), []);
  assert.deepEqual(await e.engine.listSnapshots(), []);
  assert.deepEqual(await e.engine.listImages(), []);
  for (const disk of e.disks) {
    const row = e.state.disks.get(disk.id)!;
    await assert.rejects(e.engine.snapshotHealth({ major: row.major, minor: row.minor }), { code: 'ENODATA' }, `no snapstore left for ${disk.id}`);
  }
}

/**
 * The arguments of `emitter`'s next `event`, or a failure after `ms`. The wait keeps the
 * process alive: the engine's and the manager's timers do not (they are unref'd), so without it
 * node:test may find an empty event loop and cancel the test before the event can come.
 */
export async function nextEvent(emitter: EventEmitter, event: string, ms = 20_000): Promise<unknown[]> {
  const keepAlive = setTimeout(() => undefined, ms);
  try {
    return (await once(emitter, event, { signal: AbortSignal.timeout(ms) })) as unknown[];
  } finally {
    clearTimeout(keepAlive);
  }
}
