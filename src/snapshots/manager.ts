// Snapshot lifecycle: create over N disks with complete rollback, delete, list, changes, image
// readers, and the reconciliation that makes an agent restart (or a crash at any point) safe.
//
// Ordering rules that keep the kernel, the files and the rows consistent:
// - rows are written before the kernel object or file they describe exists, so a crash always
//   leaves a row naming whatever might need undoing;
// - a snapstore's files are deleted only after the kernel has let go of them;
// - create and delete are serialised with each other, never with downloads.
import crypto from 'node:crypto';
import type { AgentState, Capture, CapturedVolume, SnapshotRow, SnapstoreRow } from '../db/state';
import type { SnapshotEngine, Snapstore } from '../engine/types';
import type { ExportRegistry } from '../exports/registry';
import { AgentError, conflict, errorCode, invalid, notFound } from '../core/errors';
import { faultPoint } from '../core/faults';
import { SerialQueue } from '../core/serial';
import type { Logger } from '../core/log';
import type { ChangesRequest, Snapshot, SnapshotChanges, SnapstoreInfo, VolumeSnapshot } from './types';
import { deleteSnapstoreFiles, recordedFill, SnapstoreWatcher } from '../watchers/watcher';
import { computeChanges } from './changes';
import { sameDevice, type DeviceId } from '../core/devices';

/** Share of a disk's size given to its snapstore up front (the original agent's choice). */
const INITIAL_SPACE_RATIO = 0.2;

export interface ManagerOptions {
  engine: SnapshotEngine;
  state: AgentState;
  /** Publishes a snapshot's exports when it is complete, withdraws them when it goes or fails. */
  exports: ExportRegistry;
  log: Logger;
  /** Growth step and free-space threshold of every snapstore. */
  snapStoreFileSize: number;
  /** The block device holding a location's filesystem: where the kernel writes COW data. */
  locationDevice(location: string): DeviceId;
  /** Size of a tracked disk now. */
  diskSize(path: string): number;
  healthIntervalMs?: number;
  growthRetryMs?: number;
}

const device = (major: number, minor: number): DeviceId => ({ major, minor });

/** A snapstore that could not grow: its snapshot may overflow (for the health endpoint). */
export interface AtRiskSnapstore {
  snapstoreId: string;
  snapshotId: string;
  trackedDiskId: string;
  location: string;
  reason: string;
}

export class SnapshotManager {
  private readonly watchers = new Map<string, SnapstoreWatcher>();
  private readonly lifecycle = new SerialQueue();
  /** A rollback failed: what it left is finished before the next create or delete. */
  private leftovers = false;
  private healthTimer: NodeJS.Timeout | null = null;

  constructor(private readonly options: ManagerOptions) {
    // A read error may be the first sign of an overflow: the registry asks before it answers.
    options.exports.onReadError(() => this.checkHealth());
  }

  private get state(): AgentState {
    return this.options.state;
  }

  // ---- start and stop -------------------------------------------------------------------------

  /** Reconciles the rows with what the kernel has; call once, after the engine started. */
  async start(): Promise<void> {
    await this.lifecycle.run(() => this.reconcile());
    this.healthTimer = setInterval(() => void this.checkHealth(), this.options.healthIntervalMs ?? 5000);
    this.healthTimer.unref();
  }

  async stop(): Promise<void> {
    if (this.healthTimer !== null) clearInterval(this.healthTimer);
    this.healthTimer = null;
    await this.lifecycle.idle();
    await Promise.all([...this.watchers.values()].map((w) => w.stop()));
    this.watchers.clear();
  }

  private async reconcile(): Promise<void> {
    const known = await this.finishInterrupted();
    for (const row of this.state.snapshots.list()) {
      for (const store of this.state.snapstores.of(row.id)) {
        const watcher = this.watch(store, null);
        // The kernel cannot give a restarted agent the snapstore's events back: the watcher
        // grows it if its fill calls for it, now and from now on.
        if (row.state === 'ok') await watcher.resume();
        else await watcher.stop();
      }
      if (row.state === 'ok' && (row.engineHandle === null || !known.has(row.engineHandle))) {
        this.markFailed(row.id, 'the kernel no longer has this snapshot');
      }
    }
    await this.checkHealth();
  }

  /**
   * Undoes what an interrupted create or delete left (a crash, or a rollback that failed):
   * kernel snapshots no finished row owns, and rows still creating or deleting. Returns the
   * handles of the kernel snapshots that remain.
   */
  private async finishInterrupted(): Promise<Set<string>> {
    const { engine, log } = this.options;
    this.leftovers = false;
    const rows = this.state.snapshots.list();
    const kept = new Set(rows.filter((r) => r.state === 'ok' || r.state === 'failed').map((r) => r.engineHandle));
    const remaining = new Set<string>();
    for (const snapshot of await engine.listSnapshots()) {
      if (kept.has(snapshot.handle)) {
        remaining.add(snapshot.handle);
        continue;
      }
      log.warn({ handle: snapshot.handle }, 'destroying a snapshot left by an interrupted operation');
      await this.destroyIgnoringGone(snapshot.handle);
    }
    for (const row of rows) {
      if (row.state !== 'creating' && row.state !== 'deleting') continue;
      log.warn({ snapshot: row.id, state: row.state }, 'finishing an interrupted operation');
      try {
        await this.dropSnapshot(row);
      } catch (err) {
        // Its disks answer 409 meanwhile; the others, and the agent's start, are not held up.
        this.leftovers = true;
        log.error({ err, snapshot: row.id }, 'cannot finish an interrupted operation: retried at the next create, delete or restart');
      }
    }
    return remaining;
  }

  // ---- create ---------------------------------------------------------------------------------

  createSnapshot(trackedDiskIds: string[]): Promise<Snapshot> {
    if (!Array.isArray(trackedDiskIds) || trackedDiskIds.length === 0) {
      return Promise.reject(invalid('tracked_disk_ids must list at least one disk'));
    }
    const duplicate = trackedDiskIds.find((id, index) => trackedDiskIds.indexOf(id) !== index);
    if (duplicate !== undefined) return Promise.reject(invalid(`disk ${duplicate} is listed twice`));
    return this.lifecycle.run(async () => {
      await this.finishLeftovers();
      return this.create(trackedDiskIds);
    });
  }

  /** Retries what a failed rollback left; failing again, it is logged and the operation goes on. */
  private async finishLeftovers(): Promise<void> {
    if (!this.leftovers) return;
    try {
      await this.finishInterrupted();
    } catch (err) {
      // The kernel's snapshot list could not be read or an orphan not destroyed.
      this.leftovers = true;
      this.options.log.error({ err }, 'cannot finish what a failed rollback left: retried at the next create, delete or restart');
    }
  }

  private async create(diskIds: string[]): Promise<Snapshot> {
    const { state } = this;
    const disks = diskIds.map((id) => {
      const disk = state.disks.get(id);
      if (disk === undefined) throw notFound(`disk ${id} is not tracked`);
      const mapping = state.mappings.ofDisk(id);
      if (mapping === undefined) throw notFound(`disk ${id} has no snapstore mapping`);
      const existing = state.snapshots.ofDisk(id);
      if (existing !== undefined) throw conflict(`disk ${id} already has snapshot ${existing.id}`);
      return { disk, mapping, storage: this.options.locationDevice(mapping.location) };
    });

    const snapshotId = BigInt.asUintN(63, crypto.randomBytes(8).readBigUInt64BE()).toString();
    const stores: SnapstoreRow[] = disks.map(({ disk, mapping, storage }) => {
      const id = crypto.randomBytes(16).toString('hex');
      return {
        id, snapshotId, diskId: disk.id, location: mapping.location, directory: `${mapping.location}/${id}`,
        storageMajor: storage.major, storageMinor: storage.minor, state: 'creating', atRisk: null, filledBytes: 0, filledAt: null,
      };
    });
    state.transaction(() => {
      state.snapshots.insert({ id: snapshotId, engineHandle: null, state: 'creating', failure: null, createdAt: new Date().toISOString() });
      stores.forEach((store, index) => {
        const { disk } = disks[index];
        state.snapstores.insert(store);
        state.volumes.insert({
          snapshotId, diskId: disk.id, snapstoreId: store.id, originalPath: disk.path, originalMajor: disk.major, originalMinor: disk.minor,
        });
      });
    });
    faultPoint('create:rows');

    try {
      const devices = disks.map(({ disk }) => ({ id: disk.id, path: disk.path, device: device(disk.major, disk.minor) }));
      await this.createSnapstores(stores, devices);
      await this.capture(snapshotId, devices);
    } catch (err) {
      this.options.log.error({ err, snapshot: snapshotId }, 'snapshot creation failed: rolling back');
      await this.rollBack(snapshotId);
      if (err instanceof AgentError) throw err;
      const code = errorCode(err);
      // The kernel holds the disk or its module holds another snapshot (blksnap keeps one at a time).
      if (code === 'EBUSY' || code === 'EALREADY') throw conflict(`cannot create the snapshot: the kernel answers ${code}: the disk or the snapshot module is busy with another snapshot`);
      // The raw message may name snapstore files: it stays in the log, the client gets the errno.
      throw new AgentError('internal', `cannot create the snapshot: ${code ?? 'internal error'}, see the agent log`, { cause: err });
    }
    this.options.log.info({ snapshot: snapshotId, disks: diskIds }, 'snapshot created');
    for (const address of this.options.exports.addressesOf(snapshotId)) {
      this.options.log.info({ snapshot: snapshotId, export: address.name, httpPath: address.httpPath }, 'export published');
    }
    return this.getSnapshot(snapshotId);
  }

  /**
   * Undoes a failed create. A rollback that fails itself must neither hide the create's own
   * error nor hold the lifecycle: it is logged, and what it left is finished before the next
   * create or delete (or at restart), from the rows as they are then.
   */
  private async rollBack(snapshotId: string): Promise<void> {
    try {
      // The row as it is now: the kernel snapshot's handle may have been recorded since.
      const row = this.state.snapshots.get(snapshotId);
      if (row !== undefined) await this.dropSnapshot(row);
    } catch (err) {
      this.leftovers = true;
      this.options.log.error({ err, snapshot: snapshotId }, 'rollback failed: finished at the next create, delete or restart');
    }
  }

  private async createSnapstores(stores: SnapstoreRow[], disks: Array<{ path: string; device: DeviceId }>): Promise<void> {
    for (const [index, store] of stores.entries()) {
      const disk = disks[index];
      const snapstore: Snapstore = await this.options.engine.createSnapstore({
        id: store.id,
        devices: [disk.device],
        storage: device(store.storageMajor, store.storageMinor),
        thresholdBytes: this.options.snapStoreFileSize,
      });
      const watcher = this.watch(store, snapstore);
      faultPoint('create:snapstore');
      await watcher.addSpace(this.options.diskSize(disk.path) * INITIAL_SPACE_RATIO);
      faultPoint('create:space');
      this.state.snapstores.setState(store.id, 'active');
    }
  }

  private async capture(snapshotId: string, disks: Array<{ id: string; device: DeviceId }>): Promise<void> {
    const { engine } = this.options;
    const info = await engine.createSnapshot(disks.map((d) => d.device));
    this.state.snapshots.setHandle(snapshotId, info.handle);
    faultPoint('create:snapshot');
    const trackers = await engine.listTrackers();
    const captures: Array<{ diskId: string; capture: Capture }> = [];
    for (const disk of disks) {
      const image = info.images.find((i) => sameDevice(i.original, disk.device));
      const tracker = trackers.find((t) => sameDevice(t.device, disk.device));
      if (image === undefined || tracker === undefined) throw new Error(`the kernel reported no image or tracker for disk ${disk.id}`);
      // The map is only readable while the snapshot exists; it is kept for the changes queries.
      const cbtMap = await engine.readCbtMap(disk.device);
      captures.push({
        diskId: disk.id,
        capture: {
          imagePath: image.path, imageMajor: image.image.major, imageMinor: image.image.minor, generationId: tracker.generationId,
          snapshotNumber: tracker.snapshotNumber, cbtBlockSize: tracker.cbtBlockSize, sizeBytes: tracker.sizeBytes, cbtMap,
        },
      });
    }
    this.state.transaction(() => {
      for (const { diskId, capture } of captures) this.state.volumes.recordCapture(snapshotId, diskId, capture);
      this.options.exports.publish(snapshotId, captures.map((c) => c.diskId));
      this.state.snapshots.setState(snapshotId, 'ok');
    });
    faultPoint('create:done');
  }

  // ---- delete ---------------------------------------------------------------------------------

  deleteSnapshot(id: string): Promise<void> {
    return this.lifecycle.run(async () => {
      await this.finishLeftovers();
      const row = this.state.snapshots.get(id);
      if (row === undefined) return;
      this.state.snapshots.setState(id, 'deleting');
      faultPoint('delete:marked');
      // Consumers stop before the kernel snapshot goes, so none reads a vanishing image.
      const exportNames = this.options.exports.withdraw(id);
      for (const name of exportNames) this.options.log.info({ snapshot: id, export: name }, 'export withdrawn');
      await this.dropSnapshot(row);
      this.options.log.info({ snapshot: id }, 'snapshot deleted');
    });
  }

  /** Destroys the kernel snapshot, releases its snapstores, then deletes files and rows. */
  private async dropSnapshot(row: SnapshotRow): Promise<void> {
    if (row.engineHandle !== null) await this.destroyIgnoringGone(row.engineHandle);
    faultPoint('delete:destroyed');
    await this.assertNoImages(row.id);
    for (const store of this.state.snapstores.of(row.id)) {
      const watcher = this.watchers.get(store.id);
      if (watcher !== undefined) {
        await watcher.release();
      } else {
        await this.options.engine.cleanupSnapstore(store.id);
        await deleteSnapstoreFiles(this.state, store);
      }
      this.watchers.delete(store.id);
      faultPoint('delete:released');
    }
    this.state.snapshots.delete(row.id);
  }

  /**
   * A snapstore may be released only once no image of its disk is left (spec 9.4): the kernel
   * would go on writing into its files, and its TERMINATE would never come.
   */
  private async assertNoImages(snapshotId: string): Promise<void> {
    const images = await this.options.engine.listImages();
    for (const volume of this.state.volumes.of(snapshotId)) {
      if (images.some((i) => sameDevice(i.original, device(volume.originalMajor, volume.originalMinor)))) {
        throw new Error(`the kernel still has an image of disk ${volume.diskId}: snapshot ${snapshotId}'s snapstores are kept until it is gone`);
      }
    }
  }

  private async destroyIgnoringGone(handle: string): Promise<void> {
    try {
      await this.options.engine.destroySnapshot(handle);
    } catch (err) {
      if (errorCode(err) !== 'ENODATA') throw err;
    }
  }

  // ---- queries --------------------------------------------------------------------------------

  async listSnapshots(): Promise<Snapshot[]> {
    return this.state.snapshots.list().filter((r) => r.state === 'ok' || r.state === 'failed').map((r) => this.toSnapshot(r));
  }

  async getSnapshot(id: string): Promise<Snapshot> {
    const row = this.state.snapshots.get(id);
    if (row === undefined || row.state === 'creating' || row.state === 'deleting') throw notFound(`snapshot ${id} not found`);
    return this.toSnapshot(row);
  }

  async changes(snapshotId: string, diskId: string, request: ChangesRequest): Promise<SnapshotChanges> {
    const volume = this.volumeOf(await this.getSnapshot(snapshotId), diskId);
    const result = computeChanges({
      map: volume.cbtMap, blockSize: volume.cbtBlockSize, deviceSize: volume.sizeBytes,
      generationId: volume.generationId, snapshotNumber: volume.snapshotNumber,
      previousGenerationId: request.previousGenerationId, previousNumber: request.previousNumber,
    });
    return { trackedDiskId: diskId, snapshotId, cbtBlockSize: volume.cbtBlockSize, ...result };
  }

  async listSnapstores(): Promise<SnapstoreInfo[]> {
    const stores: SnapstoreInfo[] = [];
    for (const row of this.state.snapstores.list()) {
      if (row.state === 'creating') continue;
      const fill = (await this.watchers.get(row.id)?.fill()) ?? recordedFill(row);
      stores.push({
        id: row.id,
        trackedDiskId: row.diskId,
        storageLocation: row.location,
        allocatedBytes: this.state.files.bytesAddedTo(row.id),
        usedBytes: fill.filledBytes,
        usedBytesAsOf: fill.measuredAt,
        atRisk: this.atRiskReason(row),
      });
    }
    return stores;
  }

  /** Snapstores of live snapshots whose growth is stalled: those snapshots may overflow. */
  atRiskSnapstores(): AtRiskSnapstore[] {
    return this.state.snapstores.list().flatMap((row) => {
      const reason = this.atRiskReason(row);
      return reason === null ? [] : [{ snapstoreId: row.id, snapshotId: row.snapshotId, trackedDiskId: row.diskId, location: row.location, reason }];
    });
  }

  /** A failed snapshot is past risk: its failure says what happened. */
  private atRiskReason(row: SnapstoreRow): string | null {
    return row.atRisk !== null && this.state.snapshots.get(row.snapshotId)?.state === 'ok' ? row.atRisk : null;
  }

  private volumeOf(snapshot: Snapshot, diskId: string): CapturedVolume {
    const volume = this.state.volumes.get(snapshot.id, diskId);
    if (volume === undefined) throw notFound(`snapshot ${snapshot.id} has no volume of disk ${diskId}`);
    return volume;
  }

  private toSnapshot(row: SnapshotRow): Snapshot {
    const volumes: VolumeSnapshot[] = this.state.volumes.captured(row.id).map((v) => ({
      trackedDiskId: v.diskId,
      original: { devicePath: v.originalPath, major: v.originalMajor, minor: v.originalMinor },
      image: { devicePath: v.imagePath, major: v.imageMajor, minor: v.imageMinor },
      snapshotNumber: v.snapshotNumber,
      generationId: v.generationId,
      cbtBlockSize: v.cbtBlockSize,
      sizeBytes: v.sizeBytes,
    }));
    const atRisk = this.state.snapstores.of(row.id).map((store) => this.atRiskReason(store)).filter((r) => r !== null);
    return {
      id: row.id,
      createdAt: new Date(row.createdAt),
      volumes,
      state: row.state === 'failed' ? { status: 'failed', reason: row.failure ?? 'unknown' } : { status: 'ok' },
      atRisk: atRisk.length === 0 ? null : atRisk.join('; '),
      exports: this.options.exports.addressesOf(row.id),
    };
  }

  // ---- health ---------------------------------------------------------------------------------

  private watch(store: SnapstoreRow, snapstore: Snapstore | null): SnapstoreWatcher {
    const watcher = new SnapstoreWatcher(store, snapstore, {
      engine: this.options.engine,
      state: this.state,
      log: this.options.log,
      chunkBytes: this.options.snapStoreFileSize,
      retryMs: this.options.growthRetryMs,
      pollMs: this.options.healthIntervalMs,
      onOverflow: (row, reason) => this.markFailed(row.snapshotId, reason),
    });
    this.watchers.set(store.id, watcher);
    return watcher;
  }

  private markFailed(snapshotId: string, reason: string): void {
    const row = this.state.snapshots.get(snapshotId);
    if (row === undefined || row.state !== 'ok') return;
    const stores = this.state.snapstores.of(snapshotId);
    // A growth that had stalled is usually why: say so.
    const stalled = stores.map((store) => store.atRisk).filter((risk) => risk !== null);
    const full = stalled.length === 0 ? reason : `${reason} (${stalled.join('; ')})`;
    this.state.snapshots.setState(snapshotId, 'failed', full);
    this.options.log.error({ snapshot: snapshotId, reason: full }, 'snapshot failed');
    // Space for a dead snapstore would be wasted: its watchers stop growing it.
    for (const store of stores) void this.watchers.get(store.id)?.stop();
    this.options.exports.fail(snapshotId, full);
  }

  /** Asks the kernel about every live snapshot: overflow events can be missed across restarts. */
  private async checkHealth(): Promise<void> {
    for (const row of this.state.snapshots.list()) {
      if (row.state !== 'ok') continue;
      for (const volume of this.state.volumes.of(row.id)) {
        try {
          const health = await this.options.engine.snapshotHealth(device(volume.originalMajor, volume.originalMinor));
          if (!health.ok) this.markFailed(row.id, `disk ${volume.diskId}: ${health.reason}`);
        } catch (err) {
          if (errorCode(err) === 'ENODATA') this.markFailed(row.id, `disk ${volume.diskId}: the kernel no longer has its snapstore`);
          else this.options.log.warn({ err, snapshot: row.id }, 'snapshot health query failed');
        }
      }
    }
  }

}
