// One watcher per snapstore: gives it its initial space, grows it by one file whenever it runs
// low on free space, reports an overflow, knows its fill, and deletes the files once the kernel
// has let go of them (TERMINATE).
//
// "Low" is the kernel's HALFFILL rule: less than the threshold (one growth step) free, noticed at
// a copy-on-write, never for an idle snapstore. With an event stream the kernel says so; without
// one (after an agent restart) the watcher asks the engine for the fill, at resume and then
// periodically, and applies the same rule.
//
// Every file is recorded in the database before it is created, so a crash at any point leaves
// a row that names it and the next start can delete it. Space is handed to the kernel only as
// extents of a fully allocated file on the location's own device.
import crypto from 'node:crypto';
import fsp from 'node:fs/promises';
import path from 'node:path';
import type { DeviceId } from '../core/devices';
import type { SnapshotEngine, Snapstore, SnapstoreEvent } from '../engine/types';
import type { AgentState, SnapstoreRow } from '../db/state';
import { errorCode, insufficientStorage, isAgentError } from '../core/errors';
import type { Logger } from '../core/log';
import { countSnapstoreGrowth, countSnapstoreOverflow } from '../metrics/metrics';
import { fsStats } from '../native/blockdev';
import { allocateChunk, isLocationFull, roundToMiB } from '../storage/allocation';

export interface WatcherOptions {
  engine: SnapshotEngine;
  state: AgentState;
  log: Logger;
  /** Growth step and free-space threshold, snap_store_file_size. */
  chunkBytes: number;
  /** How often a stalled growth (full location) is retried. */
  retryMs?: number;
  /** How often the fill of a snapstore without an event stream is checked. */
  pollMs?: number;
  /** The snapstore's data is corrupt: its snapshot must be marked failed. */
  onOverflow(row: SnapstoreRow, reason: string): void;
}

/** What is known of a snapstore's fill, and when it was true (null: nothing reported yet). */
export interface SnapstoreFill {
  filledBytes: number;
  measuredAt: Date | null;
}

/** The fill last recorded in a snapstore's row. */
export const recordedFill = (row: SnapstoreRow): SnapstoreFill =>
  ({ filledBytes: row.filledBytes, measuredAt: row.filledAt === null ? null : new Date(row.filledAt) });


/** Space that was ready when the watcher stopped: it is not handed to the kernel. */
const STOPPED = new Error('the snapstore watcher stopped');

export class SnapstoreWatcher {
  private growing: Promise<void> = Promise.resolve();
  /** Growth steps asked for and not finished. */
  private pendingGrowth = 0;
  private retryTimer: NodeJS.Timeout | null = null;
  private pollTimer: NodeJS.Timeout | null = null;
  private checking = false;
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

  /** Why growth is stalled, or null. */
  get atRisk(): string | null {
    return this.row.atRisk;
  }

  private get storage(): DeviceId {
    return { major: this.row.storageMajor, minor: this.row.storageMinor };
  }

  private onEvent(event: SnapstoreEvent): void {
    const log = this.options.log.child({ snapshot: this.row.snapshotId, snapstore: this.row.id, disk: this.row.diskId });
    this.options.state.snapstores.setFill(this.row.id, event.filledBytes, new Date().toISOString());
    switch (event.type) {
      case 'halffill':
        log.info({ filledBytes: event.filledBytes }, 'snapstore below its free-space threshold: growing it');
        void this.grow();
        break;
      case 'overflow':
        log.error({ filledBytes: event.filledBytes }, 'snapstore overflowed: its snapshot data is lost');
        countSnapstoreOverflow(this.row.diskId);
        this.options.onOverflow(this.row, `the snapstore of ${this.row.diskId} ran out of space after ${event.filledBytes} bytes`);
        break;
      case 'terminate':
        log.info({ filledBytes: event.filledBytes }, 'snapstore released by the kernel');
        break;
    }
  }

  /** The freshest fill known: the engine's if it can tell, else the last one it reported. */
  async fill(): Promise<SnapstoreFill> {
    const { engine, state, log } = this.options;
    try {
      const usage = await engine.snapstoreUsage(this.row.id);
      if (usage !== null) state.snapstores.setFill(this.row.id, usage.filledBytes, usage.measuredAt.toISOString());
    } catch (err) {
      log.warn({ err, snapstore: this.row.id }, 'snapstore fill query failed: answering the last known fill');
    }
    return recordedFill(state.snapstores.get(this.row.id) ?? this.row);
  }

  /**
   * Takes over a snapstore after an agent restart: grows it if its fill calls for it (or a
   * growth had stalled), then keeps checking its fill, since no HALFFILL will come.
   */
  async resume(): Promise<void> {
    if (this.row.atRisk !== null || (await this.isLow())) await this.grow();
    if (this.stopped || this.snapstore !== null) return;
    this.pollTimer = setInterval(() => void this.checkFill(), this.options.pollMs ?? 5000);
    this.pollTimer.unref();
  }

  private async checkFill(): Promise<void> {
    // A stalled growth has its own retry; one in flight will add the space.
    if (this.stopped || this.checking || this.pendingGrowth > 0 || this.row.atRisk !== null) return;
    this.checking = true;
    try {
      if (await this.isLow()) await this.grow();
    } finally {
      this.checking = false;
    }
  }

  private async isLow(): Promise<boolean> {
    const { filledBytes } = await this.fill();
    const free = this.options.state.files.bytesAddedTo(this.row.id) - filledBytes;
    return filledBytes > 0 && free < this.options.chunkBytes;
  }

  /**
   * Adds `bytes` of space as one new file. Throws when it cannot (the caller decides): a full
   * location as an insufficient-storage error that names the location, not the file.
   */
  async addSpace(bytes: number): Promise<void> {
    const { state, engine } = this.options;
    const size = roundToMiB(bytes);
    await fsp.mkdir(this.row.directory, { recursive: true, mode: 0o700 });
    const file = path.join(this.row.directory, `${crypto.randomUUID()}.chunk`);
    state.files.insert({ path: file, snapstoreId: this.row.id, size, state: 'allocating' });
    try {
      const ranges = await allocateChunk(file, size, this.storage);
      // The snapshot may have failed during the allocation: a dead snapstore gets nothing more.
      if (this.stopped) throw STOPPED;
      if (this.snapstore !== null) await this.snapstore.addDeviceRanges(ranges);
      else await engine.addSnapstoreSpace(this.row.id, ranges);
    } catch (err) {
      // Nothing of this file reached the kernel: it can go at once.
      await fsp.rm(file, { force: true });
      state.files.delete(file);
      if (isLocationFull(err)) throw this.locationFull(size, err);
      throw err;
    }
    state.files.setState(file, 'added');
  }

  private locationFull(needed: number, cause?: unknown): Error {
    return insufficientStorage(`snapstore location ${this.row.location} is full: the snapstore of ${this.row.diskId} needs ${needed} more bytes`, cause);
  }

  /** One growth step at a time; a full location is retried until space returns. */
  grow(): Promise<void> {
    this.pendingGrowth++;
    this.growing = this.growing.then(() => this.growOnce()).finally(() => {
      this.pendingGrowth--;
    });
    return this.growing;
  }

  private async growOnce(): Promise<void> {
    if (this.stopped) return;
    const { state, log, chunkBytes } = this.options;
    try {
      const needed = roundToMiB(chunkBytes);
      if (fsStats(this.row.location).availableBytes < needed) throw this.locationFull(needed);
      await this.addSpace(chunkBytes);
      countSnapstoreGrowth(this.row.diskId, 'ok');
      log.info({ snapshot: this.row.snapshotId, snapstore: this.row.id, disk: this.row.diskId, addedBytes: roundToMiB(chunkBytes) }, 'snapstore grown');
      if (this.row.atRisk !== null) {
        this.row.atRisk = null;
        state.snapstores.setAtRisk(this.row.id, null);
        log.info({ snapstore: this.row.id }, 'snapstore growth resumed');
      }
    } catch (err) {
      if (err === STOPPED) return;
      countSnapstoreGrowth(this.row.diskId, 'failed');
      // The reason reaches API clients: the location's name and an errno, never a file path.
      const reason = isAgentError(err) ? err.message
        : `cannot grow the snapstore of ${this.row.diskId} in snapstore location ${this.row.location}: ${errorCode(err) ?? 'internal error'}`;
      log.error({ err, snapshot: this.row.snapshotId, snapstore: this.row.id }, 'snapstore growth failed: the snapshot is at risk of overflowing');
      this.row.atRisk = reason;
      state.snapstores.setAtRisk(this.row.id, reason);
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

  /** Stops growing (a failed snapshot's snapstore, or shutdown); kernel state and files are left alone. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.retryTimer !== null) clearTimeout(this.retryTimer);
    if (this.pollTimer !== null) clearInterval(this.pollTimer);
    this.retryTimer = null;
    this.pollTimer = null;
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
    state.snapstores.setState(this.row.id, 'cleaning');
    if (this.snapstore !== null) await this.snapstore.cleanup();
    else await engine.cleanupSnapstore(this.row.id);
    await deleteSnapstoreFiles(state, this.row);
  }
}

/** Deletes a snapstore's files, directory and rows. Only once the kernel no longer uses them. */
export async function deleteSnapstoreFiles(state: AgentState, row: SnapstoreRow): Promise<void> {
  for (const file of state.files.of(row.id)) {
    await fsp.rm(file.path, { force: true });
    state.files.delete(file.path);
  }
  await fsp.rm(row.directory, { recursive: true, force: true });
  state.snapstores.delete(row.id);
}
