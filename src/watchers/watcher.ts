// One watcher per snapstore: gives it its initial space, grows it by one file whenever the
// kernel says free space fell below the threshold, reports an overflow, and deletes the files
// once the kernel has let go of them (TERMINATE).
//
// Every file is recorded in the database before it is created, so a crash at any point leaves
// a row that names it and the next start can delete it. Space is handed to the kernel only as
// extents of a fully allocated file on the location's own device.
import crypto from 'node:crypto';
import fsp from 'node:fs/promises';
import path from 'node:path';
import type { ByteRange, DeviceId, SnapshotEngine, Snapstore, SnapstoreEvent } from '../engine/types';
import type { AgentState, SnapstoreRow } from '../db/state';
import type { Logger } from '../log';
import { faultPoint } from '../faults';
import { allocateFile, fileExtents, fsStats } from '../native/blockdev';

export interface WatcherOptions {
  engine: SnapshotEngine;
  state: AgentState;
  log: Logger;
  /** Growth step, snap_store_file_size. */
  chunkBytes: number;
  /** How often a stalled growth (full location) is retried. */
  retryMs?: number;
  /** The snapstore's data is corrupt: its snapshot must be marked failed. */
  onOverflow(row: SnapstoreRow, reason: string): void;
}

const same = (a: DeviceId, b: DeviceId): boolean => a.major === b.major && a.minor === b.minor;

/** Rounds up to whole MiB, which is whole copy-on-write blocks and whole sectors. */
export const roundToMiB = (bytes: number): number => Math.ceil(bytes / 2 ** 20) * 2 ** 20;

export class SnapstoreWatcher {
  private growing: Promise<void> = Promise.resolve();
  private retryTimer: NodeJS.Timeout | null = null;
  private stopped = false;

  /**
   * `snapstore` is the engine's object with its event stream; after an agent restart there is
   * none (the kernel cannot re-attach one) and the watcher adds space by id instead.
   */
  constructor(private readonly row: SnapstoreRow, private readonly snapstore: Snapstore | null,
    private readonly options: WatcherOptions) {
    snapstore?.on('event', (event: SnapstoreEvent) => this.onEvent(event));
    snapstore?.on('error', (err: Error) => options.log.error({ err, snapstore: row.id }, 'snapstore event stream failed'));
  }

  get id(): string {
    return this.row.id;
  }

  private get storage(): DeviceId {
    return { major: this.row.storageMajor, minor: this.row.storageMinor };
  }

  private onEvent(event: SnapstoreEvent): void {
    const log = this.options.log.child({ snapshot: this.row.snapshotId, snapstore: this.row.id, disk: this.row.diskId });
    switch (event.type) {
      case 'halffill':
        log.info({ filledBytes: event.filledBytes }, 'snapstore below its free-space threshold: growing it');
        void this.grow();
        break;
      case 'overflow':
        log.error({ filledBytes: event.filledBytes }, 'snapstore overflowed: its snapshot data is lost');
        this.options.onOverflow(this.row, `the snapstore of ${this.row.diskId} ran out of space after ${event.filledBytes} bytes`);
        break;
      case 'terminate':
        log.info({ filledBytes: event.filledBytes }, 'snapstore released by the kernel');
        break;
    }
  }

  /** Adds `bytes` of space as one new file. Throws when it cannot (the caller decides). */
  async addSpace(bytes: number): Promise<void> {
    const { state, engine } = this.options;
    const size = roundToMiB(bytes);
    await fsp.mkdir(this.row.directory, { recursive: true, mode: 0o700 });
    const file = path.join(this.row.directory, `${crypto.randomUUID()}.chunk`);
    state.insertFile({ path: file, snapstoreId: this.row.id, size, state: 'allocating' });
    try {
      await allocateFile(file, size);
      faultPoint('space:allocated');
      const extents = await fileExtents(file);
      if (!same(extents.device, this.storage)) {
        throw new Error(`${file} is on ${extents.device.major}:${extents.device.minor}, not on the location's device ${this.storage.major}:${this.storage.minor}`);
      }
      const ranges: ByteRange[] = extents.ranges;
      if (this.snapstore !== null) await this.snapstore.addDeviceRanges(ranges);
      else await engine.addSnapstoreSpace(this.row.id, ranges);
    } catch (err) {
      // Nothing of this file reached the kernel: it can go at once.
      await fsp.rm(file, { force: true });
      state.deleteFile(file);
      throw err;
    }
    state.setFileState(file, 'added');
  }

  /** One growth step at a time; a full location is retried until space returns. */
  grow(): Promise<void> {
    this.growing = this.growing.then(() => this.growOnce());
    return this.growing;
  }

  private async growOnce(): Promise<void> {
    if (this.stopped) return;
    const { state, log, chunkBytes } = this.options;
    try {
      const { availableBytes } = fsStats(this.row.location);
      if (availableBytes < roundToMiB(chunkBytes)) {
        throw Object.assign(new Error(`${this.row.location} has ${availableBytes} bytes free, ${roundToMiB(chunkBytes)} needed`), { code: 'ENOSPC' });
      }
      await this.addSpace(chunkBytes);
      log.info({ snapshot: this.row.snapshotId, snapstore: this.row.id, disk: this.row.diskId, addedBytes: roundToMiB(chunkBytes) }, 'snapstore grown');
      if (this.row.atRisk !== null) {
        this.row.atRisk = null;
        state.setSnapstoreAtRisk(this.row.id, null);
        log.info({ snapstore: this.row.id }, 'snapstore growth resumed');
      }
    } catch (err) {
      const reason = `cannot grow the snapstore of ${this.row.diskId}: ${(err as Error).message}`;
      log.error({ err, snapshot: this.row.snapshotId, snapstore: this.row.id }, 'snapstore growth failed: the snapshot is at risk of overflowing');
      this.row.atRisk = reason;
      state.setSnapstoreAtRisk(this.row.id, reason);
      this.scheduleRetry();
    }
  }

  private scheduleRetry(): void {
    if (this.stopped || this.retryTimer !== null) return;
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      void this.grow();
    }, this.options.retryMs ?? 5000);
    this.retryTimer.unref();
  }

  /** Stops growing; kernel state and files are left alone. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.retryTimer !== null) clearTimeout(this.retryTimer);
    this.retryTimer = null;
    await this.growing;
  }

  /**
   * Drops the snapstore: cleanup, then, once the kernel has released it, its files and rows.
   * With an event stream that means waiting for TERMINATE; without one, the caller must have
   * destroyed the snapshot first, so the kernel holds no reference once cleanup returns.
   */
  async release(): Promise<void> {
    await this.stop();
    const { engine, state } = this.options;
    state.setSnapstoreState(this.row.id, 'cleaning');
    if (this.snapstore !== null) await this.snapstore.cleanup();
    else await engine.cleanupSnapstore(this.row.id);
    await deleteSnapstoreFiles(state, this.row);
  }
}

/** Deletes a snapstore's files, directory and rows. Only once the kernel no longer uses them. */
export async function deleteSnapstoreFiles(state: AgentState, row: SnapstoreRow): Promise<void> {
  for (const file of state.files(row.id)) {
    await fsp.rm(file.path, { force: true });
    state.deleteFile(file.path);
  }
  await fsp.rm(row.directory, { recursive: true, force: true });
  state.deleteSnapstore(row.id);
}
