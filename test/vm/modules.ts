// What the VM suites need to run on either real module: which one is loaded, an engine on it,
// the conformance target (the guest's origin disks, ranges going round its store disk) and the
// lifecycle machine (snapstore files on an ext4 filesystem on the store disk).
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { BlksnapEngine } from '../../src/engine/blksnap';
import type { SnapshotEngine } from '../../src/engine/types';
import { VeeamsnapEngine } from '../../src/engine/veeamsnap';
import { queryBlockDevice } from '../../src/native/blockdev';
import type { ConformanceTarget, TestDisk } from '../engine/conformance';
import { engineMemory } from '../helpers/engine-memory';
import { MiB, pattern, readFile, writeDisk, type Machine } from '../snapshots/helpers/env';
import { blksnapLoaded, guestDisks, veeamsnapLoaded, vmSkipReason } from './run';

export type ModuleKind = 'veeamsnap' | 'blksnap';

/** What differs between the modules, as the suites see it. */
const MODULES: Record<ModuleKind, { loaded(): boolean; variable: string; target: Partial<ConformanceTarget>; cbtBlockSize?: number }> = {
  veeamsnap: { loaded: veeamsnapLoaded, variable: 'VEEAMSNAP_KO', target: {} },
  // The module's default tracking block (2^16) and the errno its corruption event carries.
  blksnap: { loaded: blksnapLoaded, variable: 'BLKSNAP_KO', target: { cbtBlockSize: 64 * 1024, overflowCode: 'ENOSPC' }, cbtBlockSize: 64 * 1024 },
};

export const MODULE_KINDS = Object.keys(MODULES) as ModuleKind[];

/** Why a suite on `kind` cannot run here, or false. */
export function moduleSkipReason(kind: ModuleKind): string | false {
  return vmSkipReason() || (MODULES[kind].loaded() ? false : `${MODULES[kind].variable} not set: no module to test`);
}

/** A started engine on the module; engines made with the same `memoryDir` share their memory, as restarts do. */
export async function moduleEngine(kind: ModuleKind, memoryDir: string): Promise<SnapshotEngine> {
  const engine = kind === 'blksnap' ? new BlksnapEngine({ memory: engineMemory(memoryDir, kind) }) : new VeeamsnapEngine({ memory: engineMemory(memoryDir, kind) });
  await engine.start();
  return engine;
}

function originDisks(): TestDisk[] {
  return guestDisks().filter((d) => d.role === 'origin').map((d) => {
    const info = queryBlockDevice(d.device);
    return { path: d.device, device: { major: info.major, minor: info.minor }, size: info.size };
  });
}

export async function conformanceTarget(kind: ModuleKind): Promise<ConformanceTarget> {
  const stateDir = await fsp.mkdtemp(path.join(os.tmpdir(), `csa-${kind}-`));
  const store = queryBlockDevice(guestDisks().find((d) => d.role === 'store')!.device);
  let next = 0;
  return {
    disks: originDisks(),
    newEngine: () => moduleEngine(kind, stateDir),
    // Buffered, then flushed: the module sees the writes when they reach the block layer.
    writeDisk: async (disk, offset, data) => writeDisk(disk.path, offset, data),
    readDisk: async (disk, offset, length) => readFile(disk.path, offset, length),
    storage: {
      device: { major: store.major, minor: store.minor },
      // Ranges go round the store disk: by the time they come back, their snapstore is gone.
      take(bytes) {
        if (next + bytes > store.size) next = 0;
        const range = { offset: next, length: bytes };
        next += bytes;
        return [range];
      },
    },
    eventTimeoutMs: 30_000,
    ...MODULES[kind].target,
    async dispose() {
      await fsp.rm(stateDir, { recursive: true, force: true });
    },
  };
}

export async function lifecycleMachine(kind: ModuleKind): Promise<Machine> {
  const origins = originDisks();
  const store = guestDisks().find((d) => d.role === 'store')!.device;
  const base = await fsp.mkdtemp(path.join(os.tmpdir(), `csa-vm-${kind}-lifecycle-`));
  const mountPoint = path.join(base, 'store');
  // A directory of the filesystem, not its root, which holds lost+found.
  const location = path.join(mountPoint, 'snapstores');
  fs.mkdirSync(mountPoint);
  execFileSync('mkfs.ext4', ['-q', '-F', store]);
  execFileSync('mount', [store, mountPoint]);
  fs.mkdirSync(location);
  origins.forEach((disk, index) => writeDisk(disk.path, 0, pattern(4 * MiB, index + 1)));
  return {
    disks: origins.map((disk) => disk.path),
    diskSize: origins[0].size,
    location,
    stateDir: base,
    newEngine: () => moduleEngine(kind, path.join(base, 'engine')),
    devices: () => origins.map((disk) => disk.device),
    ...(MODULES[kind].cbtBlockSize === undefined ? {} : { cbtBlockSize: MODULES[kind].cbtBlockSize }),
    async dispose() {
      execFileSync('umount', [mountPoint]);
      await fsp.rm(base, { recursive: true, force: true });
    },
  };
}
