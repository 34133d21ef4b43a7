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
// "Kernel" state lives in a state directory and survives agent restarts; a new boot id (a
// reboot) discards it, as a reboot discards the module's state.
import { execFile } from 'node:child_process';
import crypto from 'node:crypto';
import { EventEmitter } from 'node:events';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { fileLayout, queryBlockDevice } from '../native/blockdev';
import { DirectReader } from '../native/reader';
import { SerialQueue } from '../serial';
import { EngineError } from './errors';
import { spansThatMayDiffer } from './layout';
import type {
  ByteRange, DeviceId, ImageReader, SnapshotEngine, SnapshotHealth, SnapshotImage, SnapshotInfo, Snapstore,
  SnapstoreEvent, SnapstoreOptions, SnapstoreUsage, TrackerInfo,
} from './types';

const execFileAsync = promisify(execFile);

/** Device numbers of the local/experimental range, for disks that are plain files and for images. */
export const SIMULATED_DISK_MAJOR = 240;
export const SIMULATED_IMAGE_MAJOR = 241;

export const COW_BLOCK_SIZE = 16 * 1024;
const BASE_CBT_BLOCK_SIZE = 256 * 1024;
const MAX_CBT_BLOCKS = 2 ** 28;
const COMPARE_CHUNK = 4 * 1024 * 1024;
const ENODATA = 61;

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

interface TrackerState {
  device: DeviceId;
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
  bootId: string;
  nextImageMinor: number;
  trackers: TrackerState[];
  snapstores: SnapstoreState[];
  snapshots: SnapshotState[];
}

const key = (device: DeviceId): string => `${device.major}_${device.minor}`;
const same = (a: DeviceId, b: DeviceId): boolean => a.major === b.major && a.minor === b.minor;
const show = (device: DeviceId): string => `${device.major}:${device.minor}`;

function cbtBlockSizeFor(sizeBytes: number): number {
  let blockSize = BASE_CBT_BLOCK_SIZE;
  while (Math.ceil(sizeBytes / blockSize) > MAX_CBT_BLOCKS) blockSize *= 2;
  return blockSize;
}

const sizeOf = (file: string): number => queryBlockDevice(file).size;

/** Point-in-time copy: a reflink where the filesystem can, else a copy that keeps holes. */
async function copyPointInTime(source: string, target: string): Promise<void> {
  await execFileAsync('cp', ['--reflink=auto', '--sparse=always', source, target]);
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
  const [fa, fb] = await Promise.all([fsp.open(a, 'r'), fsp.open(b, 'r')]);
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
  private state: ModelState | null = null;
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
    for (const dir of ['cbt', 'ref', 'images']) await fsp.mkdir(path.join(this.options.stateDir, dir), { recursive: true });
    this.diskList = this.options.disks.map((disk, index) => {
      const info = queryBlockDevice(disk);
      const device = info.kind === 'block'
        ? { major: info.major, minor: info.minor }
        : { major: SIMULATED_DISK_MAJOR, minor: index };
      return { path: disk, device };
    });
    const bootId = this.options.bootId ?? fs.readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
    const saved = await this.readState();
    if (saved !== null && saved.bootId === bootId) {
      this.state = saved;
    } else {
      // A reboot: the module's state is gone, and with it every image and map.
      for (const dir of ['cbt', 'ref', 'images']) {
        await fsp.rm(path.join(this.options.stateDir, dir), { recursive: true, force: true });
        await fsp.mkdir(path.join(this.options.stateDir, dir), { recursive: true });
      }
      this.state = { bootId, nextImageMinor: 0, trackers: [], snapstores: [], snapshots: [] };
      await this.saveState();
    }
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
      if (tracker !== undefined) {
        // The module answers EALREADY here, after re-creating a tracker whose disk was resized.
        if (tracker.sizeBytes !== sizeOf(disk.path)) await this.createTracker(disk);
        return;
      }
      await this.createTracker(disk);
    });
  }

  stopTracking(device: DeviceId): Promise<void> {
    return this.queue.run(async () => {
      const state = this.live();
      if (this.tracker(device) === undefined) throw new EngineError('ENODATA', 'TRACKING_REMOVE', `${show(device)} is not tracked`);
      if (this.snapshotOf(device) !== undefined) {
        throw new EngineError('EBUSY', 'TRACKING_REMOVE', `${show(device)} is part of a snapshot`);
      }
      state.trackers = state.trackers.filter((t) => !same(t.device, device));
      await this.saveState();
      await this.removeTrackerFiles(device);
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

  async readCbtMap(device: DeviceId): Promise<Buffer> {
    if (this.tracker(device) === undefined) throw new EngineError('ENODATA', 'TRACKING_READ_CBT_BITMAP', `${show(device)} is not tracked`);
    if (this.snapshotOf(device) === undefined) {
      throw new EngineError('EPERM', 'TRACKING_READ_CBT_BITMAP', `${show(device)} is not held by a snapshot`);
    }
    return fsp.readFile(this.cbtFile(device, 'snap'));
  }

  private async createTracker(disk: SimulatedDisk): Promise<void> {
    const state = this.live();
    const sizeBytes = sizeOf(disk.path);
    const cbtBlockSize = cbtBlockSizeFor(sizeBytes);
    const mapSize = Math.ceil(sizeBytes / cbtBlockSize);
    await this.removeTrackerFiles(disk.device);
    await fsp.writeFile(this.cbtFile(disk.device, 'live'), Buffer.alloc(mapSize));
    await fsp.writeFile(this.cbtFile(disk.device, 'snap'), Buffer.alloc(mapSize));
    // The reference is what the disk held when tracking began: later differences are writes.
    await copyPointInTime(disk.path, this.refFile(disk.device));
    state.trackers = state.trackers.filter((t) => !same(t.device, disk.device));
    const generationId = crypto.randomUUID();
    state.trackers.push({
      device: { ...disk.device }, sizeBytes, cbtBlockSize, active: 1, activeGenerationId: generationId, reported: 0, generationId,
    });
    await this.saveState();
  }

  private async removeTrackerFiles(device: DeviceId): Promise<void> {
    for (const file of [this.cbtFile(device, 'live'), this.cbtFile(device, 'snap'), this.refFile(device)]) {
      await fsp.rm(file, { force: true });
    }
  }

  // ---- snapstores -----------------------------------------------------------------------------

  createSnapstore(options: SnapstoreOptions): Promise<Snapstore> {
    return this.queue.run(async () => {
      const state = this.live();
      if (!/^[0-9a-f]{32}$/.test(options.id)) throw new EngineError('EINVAL', 'SNAPSTORE_CREATE', 'the id must be 32 hex digits');
      if (options.devices.length === 0) throw new EngineError('EINVAL', 'SNAPSTORE_CREATE', 'no devices');
      for (const device of options.devices) this.disk(device, 'SNAPSTORE_CREATE');
      // A device has one snapstore record: a new snapstore takes it over.
      for (const other of state.snapstores) {
        other.devices = other.devices.filter((d) => !options.devices.some((mine) => same(d, mine)));
      }
      state.snapstores.push({
        id: options.id, devices: options.devices.map((d) => ({ ...d })), storage: options.storage,
        thresholdBytes: options.thresholdBytes, capacityBytes: 0, filledBytes: 0, hasMemory: false,
        halffillArmed: true, overflowed: false, cleanedUp: false,
      });
      await this.saveState();
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
      // The kernel cuts the portion into copy-on-write blocks and drops the remainder.
      snapstore.capacityBytes += total - (total % COW_BLOCK_SIZE);
      snapstore.halffillArmed = true;
      await this.saveState();
    });
  }

  /** @internal used by SimulatedSnapstore */
  addMemory(id: string, bytes: number): Promise<void> {
    return this.queue.run(async () => {
      const snapstore = this.snapstore(id, 'SNAPSTORE_MEMORY');
      if (snapstore.storage !== null || snapstore.hasMemory) {
        throw new EngineError('EINVAL', 'SNAPSTORE_MEMORY', 'only an empty memory snapstore takes memory, once');
      }
      snapstore.hasMemory = true;
      snapstore.capacityBytes = bytes - (bytes % COW_BLOCK_SIZE);
      snapstore.halffillArmed = true;
      await this.saveState();
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
      const snapstore = this.live().snapstores.find((s) => s.id === id);
      if (snapstore === undefined) return false;
      snapstore.cleanedUp = true;
      if (!snapstore.devices.some((device) => this.snapshotOf(device) !== undefined)) this.terminate(snapstore);
      await this.saveState();
      return true;
    });
  }

  private terminate(snapstore: SnapstoreState): void {
    const state = this.live();
    state.snapstores = state.snapstores.filter((s) => s !== snapstore);
    const object = this.snapstoreObjects.get(snapstore.id);
    this.snapstoreObjects.delete(snapstore.id);
    object?.emit('event', { type: 'terminate', filledBytes: snapstore.filledBytes } satisfies SnapstoreEvent);
  }

  // ---- snapshots ------------------------------------------------------------------------------

  createSnapshot(devices: DeviceId[]): Promise<SnapshotInfo> {
    return this.queue.run(async () => {
      const state = this.live();
      if (devices.length === 0) throw new EngineError('ENODEV', 'SNAPSHOT_CREATE', 'no devices');
      devices.forEach((device, index) => {
        if (devices.findIndex((d) => same(d, device)) !== index) {
          throw new EngineError('EINVAL', 'SNAPSHOT_CREATE', `${show(device)} is listed twice`);
        }
        this.disk(device, 'SNAPSHOT_CREATE');
        if (this.snapshotOf(device) !== undefined) {
          throw new EngineError('EALREADY', 'SNAPSHOT_CREATE', `${show(device)} is already in a snapshot`);
        }
        const snapstore = this.snapstoreRecord(device);
        if (snapstore === undefined) throw new EngineError('ENODATA', 'SNAPSHOT_CREATE', `${show(device)} has no snapstore`);
        if (snapstore.overflowed) throw new EngineError('EDEADLK', 'SNAPSHOT_CREATE', `the snapstore of ${show(device)} is corrupt`);
      });

      const handle = crypto.randomBytes(8).toString('hex');
      const images: SnapshotImage[] = [];
      try {
        for (const device of devices) images.push(await this.capture(device));
      } catch (err) {
        for (const image of images) await fsp.rm(image.path, { force: true });
        throw err;
      }
      state.snapshots.push({ handle, devices: devices.map((d) => ({ ...d })), images });
      await this.saveState();
      return { handle, devices: devices.map((d) => ({ ...d })), images: images.map((i) => ({ ...i })) };
    });
  }

  /** Captures one device: image, CBT stamps and the map copy the snapshot will show. */
  private async capture(device: DeviceId): Promise<SnapshotImage> {
    const state = this.live();
    const disk = this.disk(device, 'SNAPSHOT_CREATE');
    const size = sizeOf(disk.path);
    let tracker = this.tracker(device);
    // Untracked devices are tracked on the spot; a resized one gets a new tracker.
    if (tracker === undefined || tracker.sizeBytes !== size) {
      await this.createTracker(disk);
      tracker = this.tracker(device)!;
    }

    const minor = state.nextImageMinor++;
    const image: SnapshotImage = {
      original: { ...device },
      image: { major: SIMULATED_IMAGE_MAJOR, minor },
      path: path.join(this.options.stateDir, 'images', `veeamimage${minor}`),
    };
    await copyPointInTime(disk.path, image.path);

    const live = await fsp.readFile(this.cbtFile(device, 'live'));
    const stamp = tracker.active;
    await forEachDifferentBlock(image.path, this.refFile(device), size, tracker.cbtBlockSize, (index) => {
      live[index] = Math.max(live[index]!, stamp);
    });
    await fsp.writeFile(this.cbtFile(device, 'snap'), live);
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
    await fsp.writeFile(this.cbtFile(device, 'live'), live);
    // The image never changes, so a hard link to it is the next reference at no cost.
    await fsp.rm(this.refFile(device), { force: true });
    await fsp.link(image.path, this.refFile(device));
    this.copiedBlocks.set(image.path, new Set());
    return image;
  }

  destroySnapshot(handle: string): Promise<void> {
    return this.queue.run(async () => {
      const state = this.live();
      const snapshot = state.snapshots.find((s) => s.handle === handle);
      if (snapshot === undefined) throw new EngineError('ENODATA', 'SNAPSHOT_DESTROY', 'no such snapshot');
      state.snapshots = state.snapshots.filter((s) => s !== snapshot);
      for (const image of snapshot.images) {
        await fsp.rm(image.path, { force: true });
        this.copiedBlocks.delete(image.path);
        this.scannedStamps.delete(image.path);
      }
      // Snapstores cleaned up while this snapshot held them go away now.
      for (const snapstore of [...state.snapstores]) {
        if (snapstore.cleanedUp && !snapstore.devices.some((d) => this.snapshotOf(d) !== undefined)) this.terminate(snapstore);
      }
      await this.saveState();
    });
  }

  async listSnapshots(): Promise<SnapshotInfo[]> {
    return this.live().snapshots.map((s) => ({
      handle: s.handle,
      devices: s.devices.map((d) => ({ ...d })),
      images: s.images.map((i) => ({ ...i, original: { ...i.original }, image: { ...i.image } })),
    }));
  }

  async listImages(): Promise<SnapshotImage[]> {
    return this.live().snapshots.flatMap((s) => s.images.map((i) => ({ ...i, original: { ...i.original }, image: { ...i.image } })));
  }

  async snapshotHealth(device: DeviceId): Promise<SnapshotHealth> {
    const snapstore = this.snapstoreRecord(device);
    if (snapstore === undefined) throw new EngineError('ENODATA', 'SNAPSHOT_ERRNO', `${show(device)} has no snapstore`);
    if (!snapstore.overflowed) return { ok: true };
    return { ok: false, errno: ENODATA, code: 'ENODATA', reason: 'the snapstore ran out of space' };
  }

  async openImage(image: SnapshotImage): Promise<ImageReader> {
    const snapshot = this.live().snapshots.find((s) => s.images.some((i) => same(i.image, image.image)));
    if (snapshot === undefined) throw new EngineError('ENOENT', 'open', `image ${show(image.image)} does not exist`);
    const reader = await DirectReader.open(snapshot.images.find((i) => same(i.image, image.image))!.path);
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
    const state = this.state;
    if (state === null) return;
    const events: Array<[SnapstoreState, SnapstoreEvent]> = [];
    let changed = false;
    /** Blocks a restarted engine finds copied that an earlier one already counted, per snapstore. */
    const counted = new Map<string, number>();
    for (const snapshot of state.snapshots) {
      for (const image of snapshot.images) {
        const snapstore = this.snapstoreServing(image.original);
        if (snapstore === undefined || snapstore.overflowed) continue;
        const disk = this.disk(image.original, 'scan');
        const origin = await fsp.stat(disk.path);
        const stamp = `${origin.mtimeMs}/${origin.ctimeMs}/${origin.size}`;
        if (origin.isFile() && this.scannedStamps.get(image.path) === stamp) continue;
        this.scannedStamps.set(image.path, stamp);
        const known = this.copiedBlocks.get(image.path);
        // A new engine object (an agent restart) does not know which blocks were counted: the
        // snapstore's fill says how many, and they are not counted twice.
        if (known === undefined && !counted.has(snapstore.id)) counted.set(snapstore.id, snapstore.filledBytes / COW_BLOCK_SIZE);
        const copied = known ?? new Set<number>();
        this.copiedBlocks.set(image.path, copied);
        const size = (await fsp.stat(image.path)).size;
        await forEachDifferentBlock(disk.path, image.path, size, COW_BLOCK_SIZE, (index) => {
          if (copied.has(index) || snapstore.overflowed) return;
          copied.add(index);
          const credit = counted.get(snapstore.id) ?? 0;
          if (credit > 0) {
            counted.set(snapstore.id, credit - 1);
            return;
          }
          changed = true;
          if (snapstore.filledBytes + COW_BLOCK_SIZE > snapstore.capacityBytes) {
            snapstore.overflowed = true;
            events.push([snapstore, { type: 'overflow', filledBytes: snapstore.filledBytes, errno: -22 }]);
            return;
          }
          snapstore.filledBytes += COW_BLOCK_SIZE;
          if (snapstore.halffillArmed && snapstore.capacityBytes - snapstore.filledBytes < snapstore.thresholdBytes) {
            snapstore.halffillArmed = false;
            events.push([snapstore, { type: 'halffill', filledBytes: snapstore.filledBytes }]);
          }
        });
      }
    }
    if (changed) await this.saveState();
    for (const [snapstore, event] of events) this.snapstoreObjects.get(snapstore.id)?.emit('event', event);
  }

  // ---- state ----------------------------------------------------------------------------------


  private live(): ModelState {
    if (this.state === null) throw new EngineError('ENODEV', 'engine', 'the simulated engine is not started');
    return this.state;
  }

  private disk(device: DeviceId, operation: string): SimulatedDisk {
    const disk = this.diskList.find((d) => same(d.device, device));
    if (disk === undefined) throw new EngineError('ENODEV', operation, `${show(device)} is not one of the simulated disks`);
    return disk;
  }

  private tracker(device: DeviceId): TrackerState | undefined {
    return this.live().trackers.find((t) => same(t.device, device));
  }

  private snapshotOf(device: DeviceId): SnapshotState | undefined {
    return this.live().snapshots.find((s) => s.devices.some((d) => same(d, device)));
  }

  /** The snapstore record a new snapshot of `device` would use: created and not cleaned up. */
  private snapstoreRecord(device: DeviceId): SnapstoreState | undefined {
    return this.live().snapstores.find((s) => !s.cleanedUp && s.devices.some((d) => same(d, device)));
  }

  /** The snapstore receiving `device`'s copy-on-write data, cleaned up or not. */
  private snapstoreServing(device: DeviceId): SnapstoreState | undefined {
    return this.live().snapstores.find((s) => s.devices.some((d) => same(d, device)));
  }

  private snapstore(id: string, operation: string): SnapstoreState {
    const snapstore = this.live().snapstores.find((s) => s.id === id && !s.cleanedUp);
    if (snapstore === undefined) throw new EngineError('ENODATA', operation, `no snapstore ${id}`);
    return snapstore;
  }

  private cbtFile(device: DeviceId, which: 'live' | 'snap'): string {
    return path.join(this.options.stateDir, 'cbt', `${key(device)}.${which}`);
  }

  private refFile(device: DeviceId): string {
    return path.join(this.options.stateDir, 'ref', `${key(device)}.img`);
  }

  private async readState(): Promise<ModelState | null> {
    try {
      return JSON.parse(await fsp.readFile(path.join(this.options.stateDir, 'state.json'), 'utf8')) as ModelState;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw err;
    }
  }

  private async saveState(): Promise<void> {
    const file = path.join(this.options.stateDir, 'state.json');
    await fsp.writeFile(`${file}.tmp`, JSON.stringify(this.live(), null, 1));
    await fsp.rename(`${file}.tmp`, file);
  }
}
