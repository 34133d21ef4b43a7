// A model of the veeamsnap module for machines that do not have it (CI, laptops, the demo).
//
// Disks are regular files or loop devices that any process may write to, so the model cannot
// intercept writes the way the module does. It observes them instead, by content:
// - CBT: the engine keeps a reference copy of each disk as it was at the last capture (a hard
//   link to that capture's image, so it costs nothing). At the next capture every tracking
//   block that differs from the reference is stamped with the active snapshot number, which is
//   exactly the stamp the module would have given the writes in between.
// - Snapstore fill: while a snapshot lives, a poller compares each origin with its image in
//   16 KiB copy-on-write blocks; every block that differs has been copied by the module, and
//   counts against the space the watchers gave the snapstore.
// A write that leaves a block's content unchanged goes unseen; for a backup that is harmless.
//
// "Kernel" state lives in a state directory and survives agent restarts, kill -9 included; a
// new boot id (a reboot) discards it, as a reboot discards the module's state. The kernel does
// each operation whole or not at all, so the model does too:
// - state.json is the one commit point, replaced atomically (write, fsync, rename);
// - every other file is written once under a name never used before (a temporary name, then a
//   rename) and never rewritten, so a hard link to it (the reference copy) stays what it was;
// - a file exists only while the committed state names it: files made by an operation that did
//   not commit, and files a commit stopped naming, are removed after the commit and on start,
//   which undoes any step a crash left half done;
// - image minors are recorded as used before the image exists, so none is ever reused.
import { execFile } from 'node:child_process';
import crypto from 'node:crypto';
import { EventEmitter } from 'node:events';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { faultPoint } from '../core/faults';
import { fileLayout, queryBlockDevice } from '../native/blockdev';
import { DirectReader } from '../native/reader';
import { SerialQueue } from '../core/serial';
import { EngineError } from './errors';
import { spansThatMayDiffer } from './layout';
import type {
  ByteRange, DeviceId, ImageReader, SnapshotEngine, SnapshotHealth, SnapshotImage, SnapshotInfo, Snapstore,
  SnapstoreEvent, SnapstoreOptions, SnapstoreUsage, TrackerInfo,
} from './types';
import { sameDevice, showDevice } from '../core/devices';

const execFileAsync = promisify(execFile);

/** Device numbers of the local/experimental range, for disks that are plain files and for images. */
export const SIMULATED_DISK_MAJOR = 240;
export const SIMULATED_IMAGE_MAJOR = 241;

export const COW_BLOCK_SIZE = 16 * 1024;
const BASE_CBT_BLOCK_SIZE = 256 * 1024;
const MAX_CBT_BLOCKS = 2 ** 28;
const COMPARE_CHUNK = 4 * 1024 * 1024;
const ENODATA = 61;
/** Bumped when the layout of the state directory changes: an older one is discarded, as a module reload does. */
const STATE_FORMAT = 2;
const STATE_DIRS = ['cbt', 'ref', 'images'];

export interface SimulatedDisk {
  path: string;
  device: DeviceId;
}

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

/** A tracker's files, relative to the state directory; each written once, replaced by new names. */
interface TrackerFiles {
  /** The CBT map being stamped now. */
  live: string;
  /** The CBT map as of the last capture: what readCbtMap shows. */
  snap: string;
  /** The disk as it was at the last capture (a hard link to that capture's image). */
  ref: string;
}

interface TrackerState {
  device: DeviceId;
  files: TrackerFiles;
  sizeBytes: number;
  cbtBlockSize: number;
  /** Number stamped on writes now (1..255), and the generation it belongs to. */
  active: number;
  activeGenerationId: string;
  /** Number and generation of the last capture, as TRACKING_COLLECT reports them. */
  reported: number;
  generationId: string;
}

interface SnapstoreState {
  id: string;
  devices: DeviceId[];
  storage: DeviceId | null;
  thresholdBytes: number;
  capacityBytes: number;
  filledBytes: number;
  hasMemory: boolean;
  /** HALFFILL may fire: set at creation and whenever space is added. */
  halffillArmed: boolean;
  overflowed: boolean;
  /** Cleanup was asked while a snapshot still used it: it terminates at that snapshot's destroy. */
  cleanedUp: boolean;
}

interface SnapshotState {
  handle: string;
  devices: DeviceId[];
  images: SnapshotImage[];
}

interface ModelState {
  format: number;
  bootId: string;
  /** Saved before the image that takes it exists, so a minor is never reused. */
  nextImageMinor: number;
  trackers: TrackerState[];
  snapstores: SnapstoreState[];
  snapshots: SnapshotState[];
}

const key = (device: DeviceId): string => `${device.major}_${device.minor}`;

function cbtBlockSizeFor(sizeBytes: number): number {
  let blockSize = BASE_CBT_BLOCK_SIZE;
  while (Math.ceil(sizeBytes / blockSize) > MAX_CBT_BLOCKS) blockSize *= 2;
  return blockSize;
}

const sizeOf = (file: string): number => queryBlockDevice(file).size;

// ---- file steps: a file appears whole under its final name, or not at all ------------------
// Model files only have to outlive the agent process, and the page cache does: a power cut is a
// reboot, which discards them anyway (see the boot id). So data files are renamed into place
// without fsync; only the commit point is fsynced, so that it is always whole and readable.

/** Writes the commit point: whole, and on disk before the call returns. */
async function writeDurably(file: string, data: string): Promise<void> {
  const handle = await fsp.open(`${file}.tmp`, 'w');
  try {
    await handle.writeFile(data);
    await handle.sync();
  } finally {
    await handle.close();
  }
  await fsp.rename(`${file}.tmp`, file);
  const dir = await fsp.open(path.dirname(file), 'r');
  try {
    await dir.sync();
  } finally {
    await dir.close();
  }
}

async function writeWhole(file: string, data: Buffer): Promise<void> {
  await fsp.writeFile(`${file}.tmp`, data);
  await fsp.rename(`${file}.tmp`, file);
}

/** Point-in-time copy: a reflink where the filesystem can, else a copy that keeps holes. */
async function copyWhole(source: string, file: string): Promise<void> {
  await fsp.rm(`${file}.tmp`, { force: true });
  await execFileAsync('cp', ['--reflink=auto', '--sparse=always', source, `${file}.tmp`]);
  await fsp.rename(`${file}.tmp`, file);
}

/** The spans of two files that need reading to compare them: all of it when a map is unavailable. */
async function spansToCompare(a: string, b: string, size: number): Promise<Array<[number, number]>> {
  try {
    return spansThatMayDiffer(await fileLayout(a), await fileLayout(b), size);
  } catch {
    // A block device or a filesystem without FIEMAP: read everything.
    return [[0, size]];
  }
}

/**
 * Calls `visit(index)` for every `blockSize` block whose content differs between the two
 * files. Only spans their extent maps do not prove equal are read, so holes and reflinked
 * extents cost nothing.
 */
async function forEachDifferentBlock(a: string, b: string, size: number, blockSize: number,
  visit: (index: number) => void): Promise<void> {
  const spans = await spansToCompare(a, b, size);
  const fa = await fsp.open(a, 'r');
  const fb = await fsp.open(b, 'r').catch(async (err: unknown) => {
    await fa.close();
    throw err;
  });
  try {
    const chunk = Math.max(blockSize, COMPARE_CHUNK - (COMPARE_CHUNK % blockSize));
    const bufA = Buffer.allocUnsafe(chunk);
    const bufB = Buffer.allocUnsafe(chunk);
    let compared = 0; // blocks before this offset are done
    for (const [spanStart, spanEnd] of spans) {
      const first = Math.max(compared, Math.floor(spanStart / blockSize) * blockSize);
      const last = Math.min(size, Math.ceil(spanEnd / blockSize) * blockSize);
      for (let offset = first; offset < last; offset += chunk) {
        const length = Math.min(chunk, last - offset);
        const [ra, rb] = await Promise.all([fa.read(bufA, 0, length, offset), fb.read(bufB, 0, length, offset)]);
        // Past the end of a shorter file reads as zeros, as a grown disk's new space does.
        bufA.fill(0, ra.bytesRead, length);
        bufB.fill(0, rb.bytesRead, length);
        for (let start = 0; start < length; start += blockSize) {
          const end = Math.min(start + blockSize, length);
          if (bufA.compare(bufB, start, end, start, end) !== 0) visit((offset + start) / blockSize);
        }
      }
      compared = Math.max(compared, last);
    }
  } finally {
    await Promise.all([fa.close(), fb.close()]);
  }
}

class SimulatedSnapstore extends EventEmitter implements Snapstore {
  constructor(readonly id: string, private readonly engine: SimulatedEngine) {
    super();
  }

  addDeviceRanges(ranges: ByteRange[]): Promise<void> {
    return this.engine.addDeviceRanges(this.id, ranges);
  }

  addMemory(bytes: number): Promise<void> {
    return this.engine.addMemory(this.id, bytes);
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
      }, (err) => {
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
  private savedJson = '';
  private diskList: SimulatedDisk[] = [];
  private readonly snapstoreObjects = new Map<string, SimulatedSnapstore>();
  /** Copy-on-write blocks already counted, per snapshot image path. */
  private readonly copiedBlocks = new Map<string, Set<number>>();
  /** Modification stamp of each regular-file origin at its last scan: unchanged files need none. */
  private readonly scannedStamps = new Map<string, string>();
  private poller: NodeJS.Timeout | null = null;
  private scanning: Promise<void> | null = null;
  /** Serialises state changes, as the agent serialises ioctls. */
  private readonly queue = new SerialQueue();

  constructor(private readonly options: SimulatedEngineOptions) {}

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
    const bootId = this.options.bootId ?? fs.readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
    const saved = await this.readState();
    if (saved !== null && saved.bootId === bootId && saved.format === STATE_FORMAT) {
      this.state = saved;
      this.savedJson = JSON.stringify(saved);
    } else {
      // A reboot: the module's state is gone, and with it every image and map.
      this.state = { format: STATE_FORMAT, bootId, nextImageMinor: 0, trackers: [], snapstores: [], snapshots: [] };
      await this.saveState(this.state);
    }
    // Recovery: whatever an interrupted operation made or meant to delete is named by no committed state.
    await this.removeUnreferenced();
    await this.recountCopiedBlocks();
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
      if (this.tracker(device) === undefined) throw new EngineError('ENODATA', 'TRACKING_REMOVE', `${showDevice(device)} is not tracked`);
      if (this.snapshotOf(device) !== undefined) {
        throw new EngineError('EBUSY', 'TRACKING_REMOVE', `${showDevice(device)} is part of a snapshot`);
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
      if (tracker === undefined) throw new EngineError('ENODATA', 'TRACKING_READ_CBT_BITMAP', `${showDevice(device)} is not tracked`);
      if (this.snapshotOf(device) === undefined) {
        throw new EngineError('EPERM', 'TRACKING_READ_CBT_BITMAP', `${showDevice(device)} is not held by a snapshot`);
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
    const name = `${key(device)}.${crypto.randomBytes(8).toString('hex')}`;
    return { live: path.join('cbt', `${name}.live`), snap: path.join('cbt', `${name}.snap`), ref: path.join('ref', `${name}.img`) };
  }

  // ---- snapstores -----------------------------------------------------------------------------

  createSnapstore(options: SnapstoreOptions): Promise<Snapstore> {
    return this.queue.run(async () => {
      if (!/^[0-9a-f]{32}$/.test(options.id)) throw new EngineError('EINVAL', 'SNAPSTORE_CREATE', 'the id must be 32 hex digits');
      if (options.devices.length === 0) throw new EngineError('EINVAL', 'SNAPSTORE_CREATE', 'no devices');
      for (const device of options.devices) this.disk(device, 'SNAPSTORE_CREATE');
      await this.transact((next) => {
        // A device has one snapstore record: a new snapstore takes it over.
        for (const other of next.snapstores) {
          other.devices = other.devices.filter((d) => !options.devices.some((mine) => sameDevice(d, mine)));
        }
        next.snapstores.push({
          id: options.id, devices: options.devices.map((d) => ({ ...d })), storage: options.storage,
          thresholdBytes: options.thresholdBytes, capacityBytes: 0, filledBytes: 0, hasMemory: false,
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
      const snapstore = this.snapstore(id, 'SNAPSTORE_FILE');
      if (snapstore.storage === null) throw new EngineError('EFAULT', 'SNAPSTORE_FILE', 'a memory snapstore takes no device ranges');
      if (ranges.length === 0) throw new EngineError('EINVAL', 'SNAPSTORE_FILE', 'no ranges');
      const total = ranges.reduce((sum, range) => sum + range.length, 0);
      await this.transact((next) => {
        const mine = this.snapstore(id, 'SNAPSTORE_FILE', next);
        // The kernel cuts the portion into copy-on-write blocks and drops the remainder.
        mine.capacityBytes += total - (total % COW_BLOCK_SIZE);
        mine.halffillArmed = true;
      });
    });
  }

  /** @internal used by SimulatedSnapstore */
  addMemory(id: string, bytes: number): Promise<void> {
    return this.queue.run(async () => {
      const snapstore = this.snapstore(id, 'SNAPSTORE_MEMORY');
      if (snapstore.storage !== null || snapstore.hasMemory) {
        throw new EngineError('EINVAL', 'SNAPSTORE_MEMORY', 'only an empty memory snapstore takes memory, once');
      }
      await this.transact((next) => {
        const mine = this.snapstore(id, 'SNAPSTORE_MEMORY', next);
        mine.hasMemory = true;
        mine.capacityBytes = bytes - (bytes % COW_BLOCK_SIZE);
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
      if (devices.length === 0) throw new EngineError('ENODEV', 'SNAPSHOT_CREATE', 'no devices');
      devices.forEach((device, index) => {
        if (devices.findIndex((d) => sameDevice(d, device)) !== index) {
          throw new EngineError('EINVAL', 'SNAPSHOT_CREATE', `${showDevice(device)} is listed twice`);
        }
        this.disk(device, 'SNAPSHOT_CREATE');
        if (this.snapshotOf(device) !== undefined) {
          throw new EngineError('EALREADY', 'SNAPSHOT_CREATE', `${showDevice(device)} is already in a snapshot`);
        }
        const snapstore = this.snapstoreRecord(device);
        if (snapstore === undefined) throw new EngineError('ENODATA', 'SNAPSHOT_CREATE', `${showDevice(device)} has no snapstore`);
        if (snapstore.overflowed) throw new EngineError('EDEADLK', 'SNAPSHOT_CREATE', `the snapstore of ${showDevice(device)} is corrupt`);
      });

      const minors = await this.transact((next) => devices.map(() => next.nextImageMinor++));
      faultPoint('engine:create:reserved');
      // All devices are captured into one uncommitted state: a failure or a crash before the
      // commit leaves the trackers, maps and references exactly as they were.
      const snapshot = await this.transact(async (next) => {
        const images: SnapshotImage[] = [];
        for (const [index, device] of devices.entries()) images.push(await this.capture(next, device, minors[index]!));
        const created: SnapshotState = { handle: crypto.randomBytes(8).toString('hex'), devices: devices.map((d) => ({ ...d })), images };
        next.snapshots.push(created);
        return created;
      });
      faultPoint('engine:create:committed');
      await this.removeUnreferenced();
      for (const image of snapshot.images) this.copiedBlocks.set(image.path, new Set());
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
      live[index] = Math.max(live[index]!, stamp);
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
      if (snapshot === undefined) throw new EngineError('ENODATA', 'SNAPSHOT_DESTROY', 'no such snapshot');
      const terminated = await this.transact((next) => {
        next.snapshots = next.snapshots.filter((s) => s.handle !== handle);
        // Snapstores cleaned up while this snapshot held them go away now.
        return this.dropUnusedCleanedUp(next);
      });
      faultPoint('engine:destroy:committed');
      await this.removeUnreferenced();
      for (const image of snapshot.images) {
        this.copiedBlocks.delete(image.path);
        this.scannedStamps.delete(image.path);
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
    if (snapstore === undefined) throw new EngineError('ENODATA', 'SNAPSHOT_ERRNO', `${showDevice(device)} has no snapstore`);
    if (!snapstore.overflowed) return { ok: true };
    return { ok: false, errno: ENODATA, code: 'ENODATA', reason: 'the snapstore ran out of space' };
  }

  async openImage(image: SnapshotImage): Promise<ImageReader> {
    const snapshot = this.live().snapshots.find((s) => s.images.some((i) => sameDevice(i.image, image.image)));
    if (snapshot === undefined) throw new EngineError('ENOENT', 'open', `image ${showDevice(image.image)} does not exist`);
    const reader = await DirectReader.open(snapshot.images.find((i) => sameDevice(i.image, image.image))!.path);
    const corrupt = (): boolean => this.snapstoreServing(image.original)?.overflowed === true;
    return {
      path: reader.path,
      size: reader.size,
      logicalBlockSize: reader.logicalBlockSize,
      read: async (offset, length) => {
        if (corrupt()) throw new EngineError('EIO', 'read', 'the snapshot data is corrupt: its snapstore overflowed');
        const data = await reader.read(offset, length);
        // An overflow during the read may have corrupted what was read, as in the module.
        if (corrupt()) throw new EngineError('EIO', 'read', 'the snapshot data is corrupt: its snapstore overflowed');
        return data;
      },
      close: () => reader.close(),
    };
  }

  // ---- copy-on-write accounting ---------------------------------------------------------------

  /** Counts the copy-on-write blocks written since the last scan; fires HALFFILL and OVERFLOW. */
  scan(): Promise<void> {
    if (this.scanning === null) {
      this.scanning = this.queue.run(() => this.scanOnce()).finally(() => {
        this.scanning = null;
      });
    }
    return this.scanning;
  }

  private async scanOnce(): Promise<void> {
    if (this.state === null) return;
    const events: Array<[string, SnapstoreEvent]> = [];
    // What was counted is remembered only once the fill it accounts for is committed.
    const counted = new Map<string, Set<number>>();
    const stamps = new Map<string, string>();
    await this.transact(async (next) => {
      for (const snapshot of next.snapshots) {
        for (const image of snapshot.images) {
          const snapstore = this.snapstoreServing(image.original, next);
          if (snapstore === undefined || snapstore.overflowed) continue;
          const disk = this.disk(image.original, 'scan');
          const origin = await fsp.stat(disk.path);
          const stamp = `${origin.mtimeMs}/${origin.ctimeMs}/${origin.size}`;
          if (origin.isFile() && this.scannedStamps.get(image.path) === stamp) continue;
          stamps.set(image.path, stamp);
          const copied = new Set(this.copiedBlocks.get(image.path));
          counted.set(image.path, copied);
          const size = (await fsp.stat(image.path)).size;
          await forEachDifferentBlock(disk.path, image.path, size, COW_BLOCK_SIZE, (index) => {
            if (copied.has(index) || snapstore.overflowed) return;
            copied.add(index);
            if (snapstore.filledBytes + COW_BLOCK_SIZE > snapstore.capacityBytes) {
              snapstore.overflowed = true;
              events.push([snapstore.id, { type: 'overflow', filledBytes: snapstore.filledBytes, errno: -22 }]);
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
    });
    for (const [imagePath, copied] of counted) this.copiedBlocks.set(imagePath, copied);
    for (const [imagePath, stamp] of stamps) this.scannedStamps.set(imagePath, stamp);
    for (const [id, event] of events) this.snapstoreObjects.get(id)?.emit('event', event);
  }

  /**
   * After a restart, which blocks were copied is no longer in memory; every block where an
   * origin differs from its image was copied, so those are remembered as counted, and a
   * snapstore's fill is at least what they take (more when writes came while no one counted).
   */
  private async recountCopiedBlocks(): Promise<void> {
    const copiedPerImage = new Map<string, Set<number>>();
    await this.transact(async (next) => {
      const provenFill = new Map<SnapstoreState, number>();
      for (const image of next.snapshots.flatMap((s) => s.images)) {
        // A disk no longer configured cannot be compared; its snapshot can still be destroyed.
        const disk = this.diskList.find((d) => sameDevice(d.device, image.original));
        if (disk === undefined) continue;
        const copied = new Set<number>();
        const size = (await fsp.stat(image.path)).size;
        await forEachDifferentBlock(disk.path, image.path, size, COW_BLOCK_SIZE, (index) => copied.add(index));
        copiedPerImage.set(image.path, copied);
        const snapstore = this.snapstoreServing(image.original, next);
        if (snapstore !== undefined) provenFill.set(snapstore, (provenFill.get(snapstore) ?? 0) + copied.size * COW_BLOCK_SIZE);
      }
      for (const [snapstore, filled] of provenFill) {
        if (snapstore.overflowed || filled <= snapstore.filledBytes) continue;
        snapstore.overflowed = filled > snapstore.capacityBytes;
        snapstore.filledBytes = Math.min(filled, snapstore.capacityBytes);
      }
    });
    for (const [imagePath, copied] of copiedPerImage) this.copiedBlocks.set(imagePath, copied);
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
      await this.saveState(next);
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
      ...state.trackers.flatMap((t) => Object.values(t.files).map((file) => this.file(file))),
    ]);
    for (const dir of STATE_DIRS) {
      for (const name of await fsp.readdir(path.join(this.options.stateDir, dir))) {
        const file = path.join(this.options.stateDir, dir, name);
        if (!named.has(file)) await fsp.rm(file, { force: true });
      }
    }
  }

  private live(): ModelState {
    if (this.state === null) throw new EngineError('ENODEV', 'engine', 'the simulated engine is not started');
    return this.state;
  }

  private disk(device: DeviceId, operation: string): SimulatedDisk {
    const disk = this.diskList.find((d) => sameDevice(d.device, device));
    if (disk === undefined) throw new EngineError('ENODEV', operation, `${showDevice(device)} is not one of the simulated disks`);
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
    if (snapstore === undefined) throw new EngineError('ENODATA', operation, `no snapstore ${id}`);
    return snapstore;
  }

  /** The absolute path of a file named relative to the state directory. */
  private file(relative: string): string {
    return path.join(this.options.stateDir, relative);
  }

  private async readState(): Promise<ModelState | null> {
    try {
      return JSON.parse(await fsp.readFile(path.join(this.options.stateDir, 'state.json'), 'utf8')) as ModelState;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw err;
    }
  }

  /** Commits `state`; an unchanged state is not written again. */
  private async saveState(state: ModelState): Promise<void> {
    const json = JSON.stringify(state);
    if (json === this.savedJson) return;
    await writeDurably(path.join(this.options.stateDir, 'state.json'), json);
    this.savedJson = json;
  }
}
