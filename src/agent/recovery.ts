// The one path from a database and a kernel to a running agent, after a restart, a crash or a
// reboot. It checks the boot once:
// - another boot (or a new database): every kernel object is gone, so the rows that name one,
//   what the engines remembered and our snapstore files go too; disks and mappings stay;
// - the same boot: nothing is forgotten, and the kernel is asked what it still has.
// Then, in this order: the engine starts (reading what it remembered), the inventory re-tracks
// disks and applies mappings, and the manager reconciles snapshots and re-attaches watchers.
import fsp from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from '../core/log';
import type { AgentState } from '../db/state';
import type { SnapshotEngine } from '../engine/types';
import type { Inventory } from '../inventory/inventory';
import type { SnapshotManager } from '../snapshots/manager';

export interface RecoveryParts {
  state: AgentState;
  engine: SnapshotEngine;
  inventory: Inventory;
  manager: SnapshotManager;
  /** Where snapstore files may have been left. */
  destinations: readonly string[];
  bootId: string;
  log: Logger;
}

/** Snapstore directories are named by their 32-hex-digit id and hold only .chunk files. */
const SNAPSTORE_DIR = /^[0-9a-f]{32}$/;

export async function recover(parts: RecoveryParts): Promise<void> {
  const { state, log, bootId } = parts;
  const previousBoot = state.meta.get('boot_id');
  if (previousBoot !== bootId) {
    if (previousBoot !== undefined) log.info('the machine rebooted since the last run: kernel snapshots are gone, starting clean');
    await forgetPreviousBoot(parts);
    state.meta.set('boot_id', bootId);
  }
  await parts.engine.start();
  await parts.inventory.start();
  await parts.manager.start();
}

/**
 * The rows go, and so do snapstore files, but only ours: directories named like a snapstore
 * that hold nothing but chunk files.
 */
async function forgetPreviousBoot({ state, destinations, log }: RecoveryParts): Promise<void> {
  const directories = new Set(state.snapstores.list().map((s) => s.directory));
  for (const destination of destinations) {
    for (const entry of await fsp.readdir(destination, { withFileTypes: true })) {
      if (!entry.isDirectory() || !SNAPSTORE_DIR.test(entry.name)) continue;
      const dir = path.join(destination, entry.name);
      const files = await fsp.readdir(dir);
      if (files.every((f) => f.endsWith('.chunk'))) directories.add(dir);
      else log.warn({ dir }, 'not deleting a directory that looks like a snapstore but holds other files');
    }
  }
  for (const dir of directories) await fsp.rm(dir, { recursive: true, force: true });
  state.forgetKernelState();
  if (directories.size > 0) log.info({ directories: [...directories] }, 'deleted snapstore files of the previous boot');
}
