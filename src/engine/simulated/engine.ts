// A model of the snapshot modules for machines that do not have them (CI, laptops, the demo).
//
// Disks are regular files or loop devices that any process may write to, so the model cannot
// intercept writes the way the module does. It observes them instead, by content:
// - CBT: the engine keeps a reference copy of each disk as it was at the last capture (a hard
//   link to that capture's image, so it costs nothing). At the next capture every tracking
//   block that differs from the reference is stamped with the active snapshot number, which is
//   exactly the stamp the module would have given the writes in between.
// - Snapstore fill: while a snapshot lives, a poller counts the copy-on-write blocks by
//   comparing each origin with its image (cow.ts).
// A write that leaves a block's content unchanged goes unseen; for a backup that is harmless.
//
// "Kernel" state lives in a state directory and survives agent restarts, kill -9 included; a
// new boot id (a reboot) discards it, as a reboot discards the module's state. The kernel does
// each operation whole or not at all, so the model does too:
// - state.json (model.ts) is the one commit point, replaced atomically (files.ts);
// - every other file is written once under a name never used before (a temporary name, then a
//   rename) and never rewritten, so a hard link to it (the reference copy) stays what it was;
// - a file exists only while the committed state names it: files made by an operation that did
//   not commit, and files a commit stopped naming, are removed after the commit and on start,
//   which undoes any step a crash left half done;
// - image minors are recorded as used before the image exists, so none is ever reused.
import crypto from 'node:crypto';
import { EventEmitter } from 'node:events';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { sameDevice, showDevice, type ByteRange, type DeviceId } from '../../core/devices';
import { errnoNumber, kernelError } from '../../core/errors';
import { faultPoint } from '../../core/faults';
import { guardReads, type ImageReader } from '../../core/image';
import { SerialQueue } from '../../core/serial';
import { currentBootId } from '../../host/boot';
import { queryBlockDevice } from '../../native/blockdev';
import { DirectReader } from '../../native/reader';
import type {
  SnapshotEngine, SnapshotHealth, SnapshotImage, SnapshotInfo, Snapstore, SnapstoreEvent, SnapstoreOptions, SnapstoreUsage, TrackerInfo,
} from '../types';
import { forEachDifferentBlock } from './compare';
import { CowCounter } from './cow';
import { copyWhole, writeWhole } from './files';
import {
  cbtBlockSizeFor, CommitPoint, COW_BLOCK_SIZE, fileKey, SIMULATED_DISK_MAJOR, SIMULATED_IMAGE_MAJOR, STATE_DIRS, STATE_FORMAT,
  type ModelState, type SimulatedDisk, type SnapshotState, type SnapstoreState, type TrackerFiles, type TrackerState,
} from './model';

const ENODATA = errnoNumber('ENODATA');

export interface SimulatedEngineOptions {
  /** Files or loop devices that act as the machine's disks. */
  disks: string[];
  /** Where the model keeps its "kernel" state, images and reference copies. */
  stateDir: string;
  /** How often live snapshots are checked for copy-on-write activity. */
  pollIntervalMs?: number;
  /** Defaults to /proc/sys/kernel/random/boot_id; a different value models a reboot. */
  bootId?: string;
}

const sizeOf = (file: string): number => queryBlockDevice(file).size;

class SimulatedSnapstore extends EventEmitter implements Snapstore {
  constructor(readonly id: string, private readonly engine: SimulatedEngine) {
    super();
  }

  addDeviceRanges(ranges: ByteRange[]): Promise<void> {
    return this.engine.addDeviceRanges(this.id, ranges);
  }

  cleanup(): Promise<{ filledBytes: number }> {
    return new Promise((resolve, reject) => {
      const onEvent = (event: SnapstoreEvent): void => {
        if (event.type === 'terminate') {
          this.off('event', onEvent);
          resolve({ filledBytes: event.filledBytes });
        }
      };
      this.on('event', onEvent);
      this.engine.requestCleanup(this.id).then((known) => {
        // Nothing will terminate a snapstore the model no longer has.
        if (!known) {
          this.off('event', onEvent);
          resolve({ filledBytes: 0 });
        }
      }, (err: unknown) => {
        this.off('event', onEvent);
        reject(err);
      });
    });
  }
}

export class SimulatedEngine implements SnapshotEngine {
  readonly kind = 'simulated';
  /** The committed state: what the "kernel" holds. Changed only by `start` and `transact`. */
  private state: ModelState | null = null;
  private diskList: SimulatedDisk[] = [];
  private readonly snapstoreObjects = new Map<string, SimulatedSnapstore>();
  private readonly cow = new CowCounter({
    diskOf: (device) => this.diskList.find((d) => sameDevice(d.device, device)),
    snapstoreServing: (device, state) => this.snapstoreServing(device, state),
  });
  private poller: NodeJS.Timeout | null = null;
  private scanning: Promise<void> | null = null;
  /** Serialises state changes, as the agent serialises ioctls. */
  private readonly queue = new SerialQueue();

  private readonly commitPoint: CommitPoint;

  constructor(private readonly options: SimulatedEngineOptions) {
    this.commitPoint = new CommitPoint(options.stateDir);
  }

  /** The configured disks and the device numbers the model gives them. */
  disks(): SimulatedDisk[] {
    return this.diskList.map((disk) => ({ ...disk }));
  }

  async start(): Promise<void> {
    if (this.state !== null) return;
    for (const dir of STATE_DIRS) await fsp.mkdir(path.join(this.options.stateDir, dir), { recursive: true });
    this.diskList = this.options.disks.map((disk, index) => {
      const info = queryBlockDevice(disk);
      const device = info.kind === 'block'
        ? { major: info.major, minor: info.minor }
        : { major: SIMULATED_DISK_MAJOR, minor: index };
      return { path: disk, device };
    });
    const bootId = this.options.bootId ?? currentBootId();
    const saved = await this.commitPoint.read();
    if (saved !== null && saved.bootId === bootId && saved.format === STATE_FORMAT) {
      this.state = saved;
    } else {
      // A reboot: the module's state is gone, and with it every image and map.
      this.state = { format: STATE_FORMAT, bootId, nextImageMinor: 0, trackers: [], snapstores: [], snapshots: [] };
      await this.commitPoint.save(this.state);
    }
    // Recovery: whatever an interrupted operation made or meant to delete is named by no committed state.
    await this.removeUnreferenced();
    (await this.transact((next) => this.cow.recount(next))).commit();
    this.poller = setInterval(() => void this.scan(), this.options.pollIntervalMs ?? 1000);
    this.poller.unref();
  }

  async close(): Promise<void> {
    if (this.poller !== null) clearInterval(this.poller);
    this.poller = null;
    await this.scanning;
    await this.queue.idle();
    this.state = null;
  }

  // ---- tracking -------------------------------------------------------------------------------

  startTracking(device: DeviceId): Promise<void> {
    return this.queue.run(async () => {
      const disk = this.disk(device, 'TRACKING_ADD');
      const tracker = this.tracker(device);
      // The module answers EALREADY here, after re-creating a tracker whose disk was resized.
      if (tracker !== undefined && tracker.sizeBytes === sizeOf(disk.path)) return;
      await this.transact((next) => this.createTracker(next, disk));
      await this.removeUnreferenced();
    });
  }

  stopTracking(device: DeviceId): Promise<void> {
    return this.queue.run(async () => {
      if (this.tracker(device) === undefined) throw kernelError('ENODATA', 'TRACKING_REMOVE', `${showDevice(device)} is not tracked`);
      if (this.snapshotOf(device) !== undefined) {
        throw kernelError('EBUSY', 'TRACKING_REMOVE', `${showDevice(device)} is part of a snapshot`);
      }
      await this.transact((next) => {
        next.trackers = next.trackers.filter((t) => !sameDevice(t.device, device));
      });
      await this.removeUnreferenced();
    });
  }

  async listTrackers(): Promise<TrackerInfo[]> {
    return this.live().trackers.map((t) => ({
      device: { ...t.device },
      sizeBytes: t.sizeBytes,
      cbtBlockSize: t.cbtBlockSize,
      cbtMapSize: Math.ceil(t.sizeBytes / t.cbtBlockSize),
      generationId: t.generationId,
      snapshotNumber: t.reported,
    }));
  }

  readCbtMap(device: DeviceId): Promise<Buffer> {
    // Queued, so that no commit replaces the map file while it is read.
    return this.queue.run(async () => {
      const tracker = this.tracker(device);
      if (tracker === undefined) throw kernelError('ENODATA', 'TRACKING_READ_CBT_BITMAP', `${showDevice(device)} is not tracked`);
      if (this.snapshotOf(device) === undefined) {
        throw kernelError('EPERM', 'TRACKING_READ_CBT_BITMAP', `${showDevice(device)} is not held by a snapshot`);
      }
      return fsp.readFile(this.file(tracker.files.snap));
    });
  }

  /** Tracks `disk` afresh in `next`: clean maps, a new generation, the disk as it is now for reference. */
  private async createTracker(next: ModelState, disk: SimulatedDisk): Promise<TrackerState> {
    const sizeBytes = sizeOf(disk.path);
    const cbtBlockSize = cbtBlockSizeFor(sizeBytes);
    const mapSize = Math.ceil(sizeBytes / cbtBlockSize);
    const files = this.newTrackerFiles(disk.device);
    await writeWhole(this.file(files.live), Buffer.alloc(mapSize));
    await writeWhole(this.file(files.snap), Buffer.alloc(mapSize));
    // Later differences from the reference are writes.
    await copyWhole(disk.path, this.file(files.ref));
    const generationId = crypto.randomUUID();
    const tracker: TrackerState = {
      device: { ...disk.device }, files, sizeBytes, cbtBlockSize, active: 1, activeGenerationId: generationId, reported: 0, generationId,
    };
    next.trackers = [...next.trackers.filter((t) => !sameDevice(t.device, disk.device)), tracker];
    return tracker;
  }

  /** Names for a new set of tracker files: unique, so no live file is ever overwritten. */
  private newTrackerFiles(device: DeviceId): TrackerFiles {
    const name = `${fileKey(device)}.${crypto.randomBytes(8).toString('hex')}`;
    return { live: path.join('cbt', `${name}.live`), snap: path.join('cbt', `${name}.snap`), ref: path.join('ref', `${name}.img`) };
  }

  // ---- snapstores -----------------------------------------------------------------------------

  createSnapstore(options: SnapstoreOptions): Promise<Snapstore> {
    return this.queue.run(async () => {
      if (!/^[0-9a-f]{32}$/.test(options.id)) throw kernelError('EINVAL', 'SNAPSTORE_CREATE', 'the id must be 32 hex digits');
      if (options.devices.length === 0) throw kernelError('EINVAL', 'SNAPSTORE_CREATE', 'no devices');
      for (const device of options.devices) this.disk(device, 'SNAPSTORE_CREATE');
      await this.transact((next) => {
        // A device has one snapstore record: a new snapstore takes it over.
        for (const other of next.snapstores) {
          other.devices = other.devices.filter((d) => !options.devices.some((mine) => sameDevice(d, mine)));
        }
        next.snapstores.push({
          id: options.id, devices: options.devices.map((d) => ({ ...d })), storage: options.storage,
          thresholdBytes: options.thresholdBytes, capacityBytes: 0, filledBytes: 0,
          halffillArmed: true, overflowed: false, cleanedUp: false,
        });
      });
      const snapstore = new SimulatedSnapstore(options.id, this);
      this.snapstoreObjects.set(options.id, snapstore);
      return snapstore;
    });
  }

  addSnapstoreSpace(id: string, ranges: ByteRange[]): Promise<void> {
    return this.addDeviceRanges(id, ranges);
  }

  /** @internal used by SimulatedSnapstore */
  addDeviceRanges(id: string, ranges: ByteRange[]): Promise<void> {
    return this.queue.run(async () => {
      this.snapstore(id, 'SNAPSTORE_FILE');
      if (ranges.length === 0) throw kernelError('EINVAL', 'SNAPSTORE_FILE', 'no ranges');
      const total = ranges.reduce((sum, range) => sum + range.length, 0);
      await this.transact((next) => {
        const mine = this.snapstore(id, 'SNAPSTORE_FILE', next);
        // The kernel cuts the portion into copy-on-write blocks and drops the remainder.
        mine.capacityBytes += total - (total % COW_BLOCK_SIZE);
        mine.halffillArmed = true;
      });
    });
  }

  async cleanupSnapstore(id: string): Promise<void> {
    await this.requestCleanup(id);
  }

  /** The model measures the fill now: it counts the blocks copied up to this moment first. */
  async snapstoreUsage(id: string): Promise<SnapstoreUsage | null> {
    // A scan already under way may have looked at the disks before the latest writes.
    await this.scanning;
    await this.scan();
    const snapstore = this.state?.snapstores.find((s) => s.id === id);
    return snapstore === undefined ? null : { filledBytes: snapstore.filledBytes, measuredAt: new Date() };
  }

  /** @internal Cleans up; false when the snapstore is unknown (the module answers 0 then too). */
  requestCleanup(id: string): Promise<boolean> {
    return this.queue.run(async () => {
      if (!this.live().snapstores.some((s) => s.id === id)) return false;
      const terminated = await this.transact((next) => {
        next.snapstores.find((s) => s.id === id)!.cleanedUp = true;
        return this.dropUnusedCleanedUp(next);
      });
      this.announceTerminated(terminated);
      return true;
    });
  }

  /** Removes from `next` the cleaned-up snapstores no snapshot holds any more, and returns them. */
  private dropUnusedCleanedUp(next: ModelState): SnapstoreState[] {
    const unused = next.snapstores.filter((s) => s.cleanedUp && !s.devices.some((d) => this.snapshotOf(d, next) !== undefined));
    next.snapstores = next.snapstores.filter((s) => !unused.includes(s));
    return unused;
  }

  /** Emits TERMINATE for snapstores a committed change dropped. */
  private announceTerminated(snapstores: SnapstoreState[]): void {
    for (const snapstore of snapstores) {
      const object = this.snapstoreObjects.get(snapstore.id);
      this.snapstoreObjects.delete(snapstore.id);
      object?.emit('event', { type: 'terminate', filledBytes: snapstore.filledBytes } satisfies SnapstoreEvent);
    }
  }

  // ---- snapshots ------------------------------------------------------------------------------

  createSnapshot(devices: DeviceId[]): Promise<SnapshotInfo> {
    return this.queue.run(async () => {
      if (devices.length === 0) throw kernelError('ENODEV', 'SNAPSHOT_CREATE', 'no devices');
      devices.forEach((device, index) => {
        if (devices.findIndex((d) => sameDevice(d, device)) !== index) {
          throw kernelError('EINVAL', 'SNAPSHOT_CREATE', `${showDevice(device)} is listed twice`);
        }
        this.disk(device, 'SNAPSHOT_CREATE');
        if (this.snapshotOf(device) !== undefined) {
          throw kernelError('EALREADY', 'SNAPSHOT_CREATE', `${showDevice(device)} is already in a snapshot`);
        }
        const snapstore = this.snapstoreRecord(device);
        if (snapstore === undefined) throw kernelError('ENODATA', 'SNAPSHOT_CREATE', `${showDevice(device)} has no snapstore`);
        if (snapstore.overflowed) throw kernelError('EDEADLK', 'SNAPSHOT_CREATE', `the snapstore of ${showDevice(device)} is corrupt`);
      });

      const minors = await this.transact((next) => devices.map(() => next.nextImageMinor++));
      faultPoint('engine:create:reserved');
      // All devices are captured into one uncommitted state: a failure or a crash before the
      // commit leaves the trackers, maps and references exactly as they were.
      const snapshot = await this.transact(async (next) => {
        const images: SnapshotImage[] = [];
        for (const [index, device] of devices.entries()) images.push(await this.capture(next, device, minors[index]));
        const created: SnapshotState = { handle: crypto.randomBytes(8).toString('hex'), devices: devices.map((d) => ({ ...d })), images };
        next.snapshots.push(created);
        return created;
      });
      faultPoint('engine:create:committed');
      await this.removeUnreferenced();
      for (const image of snapshot.images) this.cow.imageCreated(image.path);
      return structuredClone(snapshot);
    });
  }

  /** Captures one device into `next`: image, CBT stamps and the map copy the snapshot will show. */
  private async capture(next: ModelState, device: DeviceId, minor: number): Promise<SnapshotImage> {
    const disk = this.disk(device, 'SNAPSHOT_CREATE');
    const size = sizeOf(disk.path);
    let tracker = this.tracker(device, next);
    // Untracked devices are tracked on the spot; a resized one gets a new tracker.
    if (tracker === undefined || tracker.sizeBytes !== size) tracker = await this.createTracker(next, disk);

    const image: SnapshotImage = {
      original: { ...device },
      image: { major: SIMULATED_IMAGE_MAJOR, minor },
      path: path.join(this.options.stateDir, 'images', `veeamimage${minor}`),
    };
    await copyWhole(disk.path, image.path);
    faultPoint('engine:create:image');

    const live = await fsp.readFile(this.file(tracker.files.live));
    const stamp = tracker.active;
    await forEachDifferentBlock(image.path, this.file(tracker.files.ref), size, tracker.cbtBlockSize, (index) => {
      live[index] = Math.max(live[index], stamp);
    });
    const files = this.newTrackerFiles(device);
    await writeWhole(this.file(files.snap), live);
    tracker.reported = stamp;
    tracker.generationId = tracker.activeGenerationId;
    if (stamp === 255) {
      // The wrap: a new generation starts with a clean map; it is reported from the next capture.
      live.fill(0);
      tracker.active = 1;
      tracker.activeGenerationId = crypto.randomUUID();
    } else {
      tracker.active = stamp + 1;
    }
    await writeWhole(this.file(files.live), live);
    faultPoint('engine:create:ref');
    // The image never changes, so a hard link to it is the next reference at no cost.
    await fsp.link(image.path, this.file(files.ref));
    tracker.files = files;
    faultPoint('engine:create:captured');
    return image;
  }

  destroySnapshot(handle: string): Promise<void> {
    return this.queue.run(async () => {
      const snapshot = this.live().snapshots.find((s) => s.handle === handle);
      if (snapshot === undefined) throw kernelError('ENODATA', 'SNAPSHOT_DESTROY', 'no such snapshot');
      const terminated = await this.transact((next) => {
        next.snapshots = next.snapshots.filter((s) => s.handle !== handle);
        // Snapstores cleaned up while this snapshot held them go away now.
        return this.dropUnusedCleanedUp(next);
      });
      faultPoint('engine:destroy:committed');
      await this.removeUnreferenced();
      for (const image of snapshot.images) {
        this.cow.imageDestroyed(image.path);
      }
      this.announceTerminated(terminated);
    });
  }

  async listSnapshots(): Promise<SnapshotInfo[]> {
    return structuredClone(this.live().snapshots);
  }

  async listImages(): Promise<SnapshotImage[]> {
    return structuredClone(this.live().snapshots.flatMap((s) => s.images));
  }

  async snapshotHealth(device: DeviceId): Promise<SnapshotHealth> {
    const snapstore = this.snapstoreRecord(device);
    if (snapstore === undefined) throw kernelError('ENODATA', 'SNAPSHOT_ERRNO', `${showDevice(device)} has no snapstore`);
    if (!snapstore.overflowed) return { ok: true };
    return { ok: false, errno: ENODATA, code: 'ENODATA', reason: 'the snapstore ran out of space' };
  }

  async openImage(image: SnapshotImage): Promise<ImageReader> {
    const snapshot = this.live().snapshots.find((s) => s.images.some((i) => sameDevice(i.image, image.image)));
    if (snapshot === undefined) throw kernelError('ENOENT', 'open', `image ${showDevice(image.image)} does not exist`);
    const reader = await DirectReader.open(snapshot.images.find((i) => sameDevice(i.image, image.image))!.path);
    const corrupt = (): boolean => this.snapstoreServing(image.original)?.overflowed === true;
    return guardReads(reader, async (_offset, _length, use) => {
      if (corrupt()) throw kernelError('EIO', 'read', 'the snapshot data is corrupt: its snapstore overflowed');
      const result = await use();
      // An overflow during the read may have corrupted what was read, as in the module.
      if (corrupt()) throw kernelError('EIO', 'read', 'the snapshot data is corrupt: its snapstore overflowed');
      return result;
    });
  }

  // ---- copy-on-write accounting ---------------------------------------------------------------

  /** Counts the copy-on-write blocks written since the last count; fires HALFFILL and OVERFLOW. */
  scan(): Promise<void> {
    if (this.scanning === null) {
      this.scanning = this.queue.run(async () => {
        if (this.state === null) return;
        const count = await this.transact((next) => this.cow.count(next));
        count.commit();
        for (const [id, event] of count.events) this.snapstoreObjects.get(id)?.emit('event', event);
      }).finally(() => {
        this.scanning = null;
      });
    }
    return this.scanning;
  }

  // ---- state ----------------------------------------------------------------------------------

  /**
   * Applies `change` to a copy of the state and adopts the copy once it is saved: a change
   * that fails or is killed leaves the committed state as it was, and the files it made are
   * removed (at once, or by the next start).
   */
  private async transact<T>(change: (next: ModelState) => T | Promise<T>): Promise<T> {
    const next = structuredClone(this.live());
    try {
      const result = await change(next);
      await this.commitPoint.save(next);
      this.state = next;
      return result;
    } catch (err) {
      // What the change made is named by no committed state; if removing it fails, start does it.
      await this.removeUnreferenced().catch(() => undefined);
      throw err;
    }
  }

  /** Deletes every file of the state directories that the committed state does not name. */
  private async removeUnreferenced(): Promise<void> {
    const state = this.live();
    const named = new Set([
      ...state.snapshots.flatMap((s) => s.images.map((i) => i.path)),
      ...state.trackers.flatMap(({ files }) => [files.live, files.snap, files.ref].map((file) => this.file(file))),
    ]);
    for (const dir of STATE_DIRS) {
      for (const name of await fsp.readdir(path.join(this.options.stateDir, dir))) {
        const file = path.join(this.options.stateDir, dir, name);
        if (!named.has(file)) await fsp.rm(file, { force: true });
      }
    }
  }

  private live(): ModelState {
    if (this.state === null) throw kernelError('ENODEV', 'engine', 'the simulated engine is not started');
    return this.state;
  }

  private disk(device: DeviceId, operation: string): SimulatedDisk {
    const disk = this.diskList.find((d) => sameDevice(d.device, device));
    if (disk === undefined) throw kernelError('ENODEV', operation, `${showDevice(device)} is not one of the simulated disks`);
    return disk;
  }

  private tracker(device: DeviceId, state = this.live()): TrackerState | undefined {
    return state.trackers.find((t) => sameDevice(t.device, device));
  }

  private snapshotOf(device: DeviceId, state = this.live()): SnapshotState | undefined {
    return state.snapshots.find((s) => s.devices.some((d) => sameDevice(d, device)));
  }

  /** The snapstore record a new snapshot of `device` would use: created and not cleaned up. */
  private snapstoreRecord(device: DeviceId): SnapstoreState | undefined {
    return this.live().snapstores.find((s) => !s.cleanedUp && s.devices.some((d) => sameDevice(d, device)));
  }

  /** The snapstore receiving `device`'s copy-on-write data, cleaned up or not. */
  private snapstoreServing(device: DeviceId, state = this.live()): SnapstoreState | undefined {
    return state.snapstores.find((s) => s.devices.some((d) => sameDevice(d, device)));
  }

  private snapstore(id: string, operation: string, state = this.live()): SnapstoreState {
    const snapstore = state.snapstores.find((s) => s.id === id && !s.cleanedUp);
    if (snapstore === undefined) throw kernelError('ENODATA', operation, `no snapstore ${id}`);
    return snapstore;
  }

  /** The absolute path of a file named relative to the state directory. */
  private file(relative: string): string {
    return path.join(this.options.stateDir, relative);
  }
}
