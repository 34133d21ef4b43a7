// The model's copy-on-write accounting. The module copies a block of the origin to the snapstore
// the first time it is written while a snapshot lives; the model cannot see writes, so it finds
// those blocks by content: every 16 KiB block where an origin differs from its image has been
// copied, and counts against the space the watchers gave the snapstore. Crossing the threshold
// fires HALFFILL, running out fires OVERFLOW, as the module does.
import fsp from 'node:fs/promises';
import type { DeviceId } from '../../core/devices';
import { errnoNumber } from '../../core/errors';
import type { SnapstoreEvent } from '../types';
import { forEachDifferentBlock } from './compare';
import { COW_BLOCK_SIZE, type ModelState, type SimulatedDisk, type SnapstoreState } from './model';

/** What the counter needs of the engine: the disks and which snapstore serves a device. */
export interface CowModel {
  diskOf(device: DeviceId): SimulatedDisk | undefined;
  snapstoreServing(device: DeviceId, state: ModelState): SnapstoreState | undefined;
}

/** A count made on an uncommitted state: `commit` adopts its bookkeeping once the state is committed. */
export interface Count {
  events: Array<[snapstoreId: string, event: SnapstoreEvent]>;
  commit(): void;
}

export class CowCounter {
  /** Copy-on-write blocks already counted, per snapshot image path. */
  private readonly copied = new Map<string, Set<number>>();
  /** Modification stamp of each regular-file origin at its last count: unchanged files need none. */
  private readonly stamps = new Map<string, string>();

  constructor(private readonly model: CowModel) {}

  /** A new image: nothing of it is copied yet. */
  imageCreated(imagePath: string): void {
    this.copied.set(imagePath, new Set());
  }

  imageDestroyed(imagePath: string): void {
    this.copied.delete(imagePath);
    this.stamps.delete(imagePath);
  }

  /** Counts the blocks copied since the last count into the snapstores of `next`. */
  async count(next: ModelState): Promise<Count> {
    const events: Count['events'] = [];
    const counted = new Map<string, Set<number>>();
    const stamps = new Map<string, string>();
    for (const snapshot of next.snapshots) {
      for (const image of snapshot.images) {
        const snapstore = this.model.snapstoreServing(image.original, next);
        const disk = this.model.diskOf(image.original);
        if (snapstore === undefined || snapstore.overflowed || disk === undefined) continue;
        const origin = await fsp.stat(disk.path);
        const stamp = `${origin.mtimeMs}/${origin.ctimeMs}/${origin.size}`;
        if (origin.isFile() && this.stamps.get(image.path) === stamp) continue;
        stamps.set(image.path, stamp);
        const copied = new Set(this.copied.get(image.path));
        counted.set(image.path, copied);
        const size = (await fsp.stat(image.path)).size;
        await forEachDifferentBlock(disk.path, image.path, size, COW_BLOCK_SIZE, (index) => {
          if (copied.has(index) || snapstore.overflowed) return;
          copied.add(index);
          if (snapstore.filledBytes + COW_BLOCK_SIZE > snapstore.capacityBytes) {
            snapstore.overflowed = true;
            events.push([snapstore.id, { type: 'overflow', filledBytes: snapstore.filledBytes, errno: -errnoNumber('EINVAL') }]);
            return;
          }
          snapstore.filledBytes += COW_BLOCK_SIZE;
          if (snapstore.halffillArmed && snapstore.capacityBytes - snapstore.filledBytes < snapstore.thresholdBytes) {
            snapstore.halffillArmed = false;
            events.push([snapstore.id, { type: 'halffill', filledBytes: snapstore.filledBytes }]);
          }
        });
      }
    }
    return {
      events,
      commit: () => {
        for (const [imagePath, copied] of counted) this.copied.set(imagePath, copied);
        for (const [imagePath, stamp] of stamps) this.stamps.set(imagePath, stamp);
      },
    };
  }

  /**
   * After a restart, which blocks were copied is no longer in memory; every block where an
   * origin differs from its image was copied, so those are remembered as counted, and a
   * snapstore's fill is at least what they take (more when writes came while no one counted).
   */
  async recount(next: ModelState): Promise<Count> {
    const copiedPerImage = new Map<string, Set<number>>();
    const provenFill = new Map<SnapstoreState, number>();
    for (const image of next.snapshots.flatMap((s) => s.images)) {
      // A disk no longer configured cannot be compared; its snapshot can still be destroyed.
      const disk = this.model.diskOf(image.original);
      if (disk === undefined) continue;
      const copied = new Set<number>();
      const size = (await fsp.stat(image.path)).size;
      await forEachDifferentBlock(disk.path, image.path, size, COW_BLOCK_SIZE, (index) => copied.add(index));
      copiedPerImage.set(image.path, copied);
      const snapstore = this.model.snapstoreServing(image.original, next);
      if (snapstore !== undefined) provenFill.set(snapstore, (provenFill.get(snapstore) ?? 0) + copied.size * COW_BLOCK_SIZE);
    }
    for (const [snapstore, filled] of provenFill) {
      if (snapstore.overflowed || filled <= snapstore.filledBytes) continue;
      snapstore.overflowed = filled > snapstore.capacityBytes;
      snapstore.filledBytes = Math.min(filled, snapstore.capacityBytes);
    }
    return {
      events: [],
      commit: () => {
        for (const [imagePath, copied] of copiedPerImage) this.copied.set(imagePath, copied);
      },
    };
  }
}
