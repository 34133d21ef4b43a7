// The engine on Veeam's blksnap v1 module (bdevfilter + veeamblksnap, kernels 5.10 to 6.13),
// through the native binding. docs/blksnap.md describes the module; this file absorbs where it
// differs from veeamsnap, so that the layers above stay engine-agnostic:
// - There is no tracking ioctl: a device is tracked by creating a snapshot of it and destroying
//   it untaken (verified on the module: the tracker stays, snapshot number 0).
// - There are no snapstores: each snapshot has its own difference storage, given as sector
//   ranges. Snapstores are this engine's objects: their ranges go to the snapshot that uses
//   them when it is created, and later growth goes straight to it.
// - The module asks for space with "low free space" events on a per-snapshot queue, read by a
//   waiter thread that acknowledges each at once (the module raises the next one only then).
//   Each asks for diff_storage_minimum more sectors; the engine counts what was asked and given
//   and sends the watchers `halffill`, once per refill, when less than the snapstore's threshold
//   would be free or the module was given less than it asked for.
// - The module's snapshot list keeps one snapshot only (VAL-6.3.1 inserts into it with its
//   arguments swapped: a second snapshot orphans the first for good), so this engine holds one
//   snapshot at a time and refuses a second with EBUSY.
// - Reads of an overflowed image fail with ENOSPC; they are reported as EIO like veeamsnap's.
// - The module starts a new generation at the 255th snapshot already; the engine keeps
//   presenting the old generation for that snapshot (its map holds the old generation's stamps).
import crypto from 'node:crypto';
import { EventEmitter } from 'node:events';
import fs from 'node:fs';
import path from 'node:path';
import { isSystemError } from '../native/binding';
import {
  BLKSNAP_IMAGE_PREFIX, BLKSNAP_MODULE, BlksnapControl, BlksnapEventWaiter, DEFAULT_BLKSNAP_CONTROL_DEVICE, toSectorRanges,
  type BlksnapEvent, type BlksnapTracker,
} from '../native/blksnap';
import { DirectReader } from '../native/reader';
import { SerialQueue } from '../core/serial';
import { errorCode, kernelError } from '../core/errors';
import { sameDevice, showDevice, type ByteRange, type DeviceId } from '../core/devices';
import { guardReads, type ImageReader } from '../core/image';
import type {
  SnapshotEngine, SnapshotHealth, SnapshotImage, SnapshotInfo, Snapstore, SnapstoreEvent, SnapstoreOptions, SnapstoreUsage, TrackerInfo, EngineMemory,
} from './types';

const SECTOR = 512;
const CBT_READ_CHUNK = 4 * 1024 * 1024;
/** The module's default diff_storage_minimum (1 GiB), if its parameter cannot be read. */
const DEFAULT_DIFF_STORAGE_MINIMUM_SECTORS = 2097152;
/** Generation reported for a device whose tracker the module has not created yet. */
const NO_GENERATION = '00000000-0000-0000-0000-000000000000';
const HEALTH_PROBE_BYTES = 4096;

export interface BlksnapEngineOptions {
  /** Where the engine keeps its records (handles, snapstores, generations): agent state, not public. */
  memory: EngineMemory;
  controlDevice?: string;
  /** Directory holding the veeamblksnapimgN nodes. */
  devDir?: string;
  /** /sys/module/veeamblksnap, for the module's parameters. */
  moduleDir?: string;
  imageNodeTimeoutMs?: number;
  /** Bound of each kernel event wait: how soon a waiter notices it must stop. */
  eventWaitMs?: number;
}

interface SnapstoreRecord {
  devices: DeviceId[];
  storage: DeviceId;
  ranges: ByteRange[];
  thresholdBytes: number;
  /** Cleaned up by its owner: no new snapshot may use it; it terminates when its snapshot goes. */
  cleaning: boolean;
  /** The snapshot whose difference storage holds its ranges. */
  handle: string | null;
}

interface SnapshotRecord {
  kernelId: string;
  devices: DeviceId[];
  snapstores: string[];
  /** Sectors given to the module and sectors it asked for (its creation request included). */
  givenSectors: number;
  requestedSectors: number;
  /** The module's first event is its creation request, already counted in requestedSectors. */
  creationEventSeen: boolean;
  corrupted: { errno: number; code: string } | null;
}

interface Records {
  snapshots: Record<string, SnapshotRecord>;
  snapstores: Record<string, SnapstoreRecord>;
  /** Per device "major:minor": the generation and number of its last snapshot, as presented. */
  last: Record<string, { generationId: string; number: number }>;
  /** Kernel generation -> the generation presented for its snapshot 255 (see the header). */
  wrapAliases: Record<string, string>;
}


function uuidText(bytes: Buffer): string {
  const hex = bytes.toString('hex');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

function rethrowAs(err: unknown, code: string, operation: string, detail: string): never {
  if (isSystemError(err, code)) throw kernelError(code, operation, detail);
  throw err;
}

export class BlksnapSnapstore extends EventEmitter implements Snapstore {
  /** Resolves once the snapstore is gone: cleaned up, and no snapshot uses it. */
  readonly terminated: Promise<{ filledBytes: number }>;
  private resolveTerminated!: (result: { filledBytes: number }) => void;
  filledBytes = 0;
  /** The module reports its fill only through its low-space and corruption events. */
  measuredAt = new Date();

  constructor(readonly id: string, private readonly engine: BlksnapEngine) {
    super();
    this.terminated = new Promise((resolve) => { this.resolveTerminated = resolve; });
  }

  emitEvent(event: SnapstoreEvent): void {
    if (event.type !== 'terminate') {
      this.filledBytes = Math.max(this.filledBytes, event.filledBytes);
      this.measuredAt = new Date();
    }
    this.emit('event', event);
    if (event.type === 'terminate') this.resolveTerminated({ filledBytes: event.filledBytes });
  }

  /** The event stream broke; an 'error' nobody listens to must not crash the agent. */
  fail(err: Error): void {
    if (this.listenerCount('error') > 0) this.emit('error', err);
  }

  addDeviceRanges(ranges: ByteRange[]): Promise<void> {
    return this.engine.addSnapstoreSpace(this.id, ranges);
  }

  async cleanup(): Promise<{ filledBytes: number }> {
    await this.engine.cleanupSnapstore(this.id);
    return this.terminated;
  }
}

export class BlksnapEngine implements SnapshotEngine {
  readonly kind = 'blksnap';
  private control: BlksnapControl | null = null;
  private readonly queue = new SerialQueue();
  private state: Records | null = null;
  private readonly waiters = new Map<string, BlksnapEventWaiter>();
  private readonly snapstoreObjects = new Map<string, BlksnapSnapstore>();
  /** Snapshots whose watchers were sent `halffill` and have not added space since. */
  private readonly awaitingSpace = new Set<string>();
  /** Devices to track as soon as no snapshot holds the module (see startTracking). */
  private readonly pending = new Map<string, DeviceId>();

  constructor(private readonly options: BlksnapEngineOptions) {}

  private get controlDevice(): string {
    return this.options.controlDevice ?? DEFAULT_BLKSNAP_CONTROL_DEVICE;
  }

  private get moduleDir(): string {
    return this.options.moduleDir ?? `/sys/module/${BLKSNAP_MODULE}`;
  }

  async start(): Promise<void> {
    if (this.control !== null) return;
    let control: BlksnapControl;
    try {
      control = await BlksnapControl.open(this.controlDevice);
    } catch (err) {
      rethrowAs(err, 'ENOENT', 'start', `${this.controlDevice} does not exist: is the blksnap module loaded (modprobe ${BLKSNAP_MODULE})?`);
    }
    try {
      this.state = this.loadState();
      this.control = control;
      // Whatever the kernel no longer has is forgotten; what it still has is watched again.
      const live = new Set((await control.snapshotCollect()).map((id) => id.toString('hex')));
      for (const [handle, record] of Object.entries(this.state.snapshots)) {
        if (live.has(record.kernelId)) this.startWaiter(handle, record);
        else this.forgetSnapshot(handle);
      }
      this.saveState();
    } catch (err) {
      this.control = null;
      control.close();
      throw err;
    }
  }

  async close(): Promise<void> {
    await this.queue.idle();
    await Promise.all([...this.waiters.values()].map((w) => w.stop()));
    this.waiters.clear();
    this.snapstoreObjects.clear();
    this.control?.close();
    this.control = null;
  }

  /** The module's version as /sys/module reports it (the ioctl's is the source's 1.0.0.0). */
  moduleVersion(): string | null {
    try {
      return fs.readFileSync(path.join(this.moduleDir, 'version'), 'utf8').trim();
    } catch {
      return null;
    }
  }

  // ---- tracking -------------------------------------------------------------------------------

  /**
   * Tracks from now on: a snapshot created and destroyed untaken leaves the tracker behind. While
   * another snapshot lives a second one cannot be created (see the header), so the device waits
   * until that snapshot is destroyed; it cannot be snapshotted before then either.
   */
  startTracking(device: DeviceId): Promise<void> {
    return this.queue.run(async () => {
      const control = this.live();
      if ((await control.trackerCollect()).some((t) => sameDevice(t.device, device))) return;
      if ((await control.snapshotCollect()).length > 0) {
        this.untracked(device); // a device that does not exist is refused now, not when listed
        this.pending.set(showDevice(device), { ...device });
        return;
      }
      await this.trackNow(device);
    });
  }

  private async trackNow(device: DeviceId): Promise<void> {
    const control = this.live();
    const id = await control.snapshotCreate([device]);
    await control.snapshotDestroy(id);
    this.pending.delete(showDevice(device));
  }

  stopTracking(device: DeviceId): Promise<void> {
    return this.queue.run(async () => {
      if (this.pending.delete(showDevice(device))) return;
      try {
        await this.live().trackerRemove(device);
      } catch (err) {
        rethrowAs(err, 'EBUSY', 'IOCTL_BLK_SNAP_TRACKER_REMOVE', `${showDevice(device)} is held by a snapshot`);
      }
    });
  }

  async listTrackers(): Promise<TrackerInfo[]> {
    const trackers = (await this.live().trackerCollect()).map((t) => this.toTracker(t));
    const waiting = [...this.pending.values()].filter((d) => !trackers.some((t) => sameDevice(t.device, d)));
    return [...trackers, ...waiting.map((d) => this.untracked(d))];
  }

  private toTracker(t: BlksnapTracker): TrackerInfo {
    const kernelGeneration = uuidText(t.generationId);
    const alias = t.snapNumber === 255 ? this.state!.wrapAliases[kernelGeneration] : undefined;
    return {
      device: { ...t.device },
      sizeBytes: Number(t.capacityBytes),
      cbtBlockSize: t.blockSize,
      cbtMapSize: t.blockCount,
      generationId: alias ?? kernelGeneration,
      snapshotNumber: t.snapNumber,
    };
  }

  /** What the module will report once it tracks `device`, from its parameters. */
  private untracked(device: DeviceId): TrackerInfo {
    let sizeBytes: number;
    try {
      sizeBytes = Number(fs.readFileSync(`/sys/dev/block/${showDevice(device)}/size`, 'utf8').trim()) * SECTOR;
    } catch {
      throw kernelError('ENODEV', 'startTracking', `no block device ${showDevice(device)}`);
    }
    const param = (name: string, fallback: number): number => {
      const value = Number(this.readParam(name));
      return Number.isInteger(value) && value > 0 ? value : fallback;
    };
    let shift = param('tracking_block_minimum_shift', 16);
    const maxShift = param('tracking_block_maximum_shift', 26);
    const maxCount = param('tracking_block_maximum_count', 2097152);
    while (Math.ceil(sizeBytes / 2 ** shift) > maxCount && shift < maxShift) shift++;
    return { device: { ...device }, sizeBytes, cbtBlockSize: 2 ** shift, cbtMapSize: Math.ceil(sizeBytes / 2 ** shift), generationId: NO_GENERATION, snapshotNumber: 0 };
  }

  async readCbtMap(device: DeviceId): Promise<Buffer> {
    const control = this.live();
    const tracker = (await control.trackerCollect()).find((t) => sameDevice(t.device, device));
    if (tracker === undefined) throw kernelError('ENODATA', 'IOCTL_BLK_SNAP_TRACKER_READ_CBT_MAP', `${showDevice(device)} is not tracked`);
    const map = Buffer.alloc(tracker.blockCount);
    for (let offset = 0; offset < map.length; offset += CBT_READ_CHUNK) {
      const length = Math.min(CBT_READ_CHUNK, map.length - offset);
      const chunk = await control.readCbtMap(device, offset, length);
      if (chunk.length !== length) {
        throw kernelError('EIO', 'IOCTL_BLK_SNAP_TRACKER_READ_CBT_MAP', `short CBT read: ${chunk.length} of ${length} bytes at ${offset}`);
      }
      chunk.copy(map, offset);
    }
    return map;
  }

  // ---- snapstores -----------------------------------------------------------------------------

  createSnapstore(options: SnapstoreOptions): Promise<Snapstore> {
    return this.queue.run(async () => {
      if (!/^[0-9a-f]{32}$/.test(options.id)) throw kernelError('EINVAL', 'createSnapstore', 'the id must be 32 hex digits');
      this.live();
      if (this.state!.snapstores[options.id] !== undefined) throw kernelError('EEXIST', 'createSnapstore', 'a snapstore with this id exists');
      this.state!.snapstores[options.id] = {
        devices: options.devices.map((d) => ({ ...d })), storage: { ...options.storage }, ranges: [],
        thresholdBytes: options.thresholdBytes, cleaning: false, handle: null,
      };
      this.saveState();
      const snapstore = new BlksnapSnapstore(options.id, this);
      this.snapstoreObjects.set(options.id, snapstore);
      return snapstore;
    });
  }

  /** The estimate of the last event (the module has no fill query), or null after a restart. */
  async snapstoreUsage(id: string): Promise<SnapstoreUsage | null> {
    const snapstore = this.snapstoreObjects.get(id);
    return snapstore === undefined ? null : { filledBytes: snapstore.filledBytes, measuredAt: snapstore.measuredAt };
  }

  addSnapstoreSpace(id: string, ranges: ByteRange[]): Promise<void> {
    return this.queue.run(async () => {
      const store = this.state!.snapstores[id];
      if (store === undefined || this.live() === null) throw kernelError('ENODATA', 'addSnapstoreSpace', 'no such snapstore');
      const sectors = toSectorRanges(ranges);
      const record = store.handle === null ? undefined : this.state!.snapshots[store.handle];
      if (record !== undefined) {
        await this.live().snapshotAppendStorage(Buffer.from(record.kernelId, 'hex'), store.storage, sectors);
        record.givenSectors += ranges.reduce((sum, r) => sum + r.length / SECTOR, 0);
      }
      store.ranges.push(...ranges.map((r) => ({ offset: r.offset, length: r.length })));
      this.saveState();
      if (record !== undefined) {
        this.awaitingSpace.delete(store.handle!);
        this.askForSpaceIfShort(store.handle!, record);
      }
    });
  }

  cleanupSnapstore(id: string): Promise<void> {
    return this.queue.run(async () => {
      const store = this.state!.snapstores[id];
      if (store === undefined) {
        this.snapstoreObjects.get(id)?.emitEvent({ type: 'terminate', filledBytes: 0 });
        return;
      }
      store.cleaning = true;
      if (store.handle === null) this.terminate(id);
      this.saveState();
    });
  }

  private terminate(id: string): void {
    delete this.state!.snapstores[id];
    const object = this.snapstoreObjects.get(id);
    this.snapstoreObjects.delete(id);
    object?.emitEvent({ type: 'terminate', filledBytes: object.filledBytes });
  }

  // ---- snapshots ------------------------------------------------------------------------------

  createSnapshot(devices: DeviceId[]): Promise<SnapshotInfo> {
    return this.queue.run(async () => {
      const control = this.live();
      const state = this.state!;
      if (devices.length === 0) throw kernelError('ENODEV', 'createSnapshot', 'no devices');
      if (devices.some((d, i) => devices.findIndex((e) => sameDevice(d, e)) !== i)) throw kernelError('EINVAL', 'createSnapshot', 'a device is listed twice');
      for (const record of Object.values(state.snapshots)) {
        const busy = devices.find((d) => record.devices.some((e) => sameDevice(d, e)));
        if (busy !== undefined) throw kernelError('EALREADY', 'createSnapshot', `${showDevice(busy)} is already in a snapshot`);
      }
      const stores = new Set<string>();
      for (const device of devices) {
        const found = Object.entries(state.snapstores).reverse()
          .find(([, s]) => !s.cleaning && s.handle === null && s.devices.some((d) => sameDevice(d, device)));
        if (found === undefined) throw kernelError('ENODATA', 'createSnapshot', `${showDevice(device)} has no snapstore`);
        stores.add(found[0]);
      }
      if ((await control.snapshotCollect()).length > 0) {
        throw kernelError('EBUSY', 'createSnapshot', 'the blksnap module holds another snapshot; this module version keeps one at a time');
      }

      const kernelId = await control.snapshotCreate(devices);
      const handle = crypto.randomBytes(8).toString('hex');
      const record: SnapshotRecord = {
        kernelId: kernelId.toString('hex'), devices: devices.map((d) => ({ ...d })), snapstores: [...stores],
        givenSectors: 0, requestedSectors: this.diffStorageMinimumSectors(), creationEventSeen: false, corrupted: null,
      };
      // Persisted at once, so that even a crash in the next steps leaves a way to destroy it.
      state.snapshots[handle] = record;
      for (const id of stores) state.snapstores[id].handle = handle;
      this.saveState();
      this.startWaiter(handle, record);
      try {
        for (const id of stores) {
          const store = state.snapstores[id];
          if (store.ranges.length === 0) continue;
          await control.snapshotAppendStorage(kernelId, store.storage, toSectorRanges(store.ranges));
          record.givenSectors += store.ranges.reduce((sum, r) => sum + r.length / SECTOR, 0);
        }
        await control.snapshotTake(kernelId);
        const found = await control.snapshotImages(kernelId);
        const images: SnapshotImage[] = devices.map((device) => {
          const image = found.find((i) => sameDevice(i.original, device));
          if (image === undefined) throw kernelError('EIO', 'IOCTL_BLK_SNAP_SNAPSHOT_COLLECT_IMAGES', `no image of ${showDevice(device)}`);
          return { original: { ...device }, image: { ...image.image }, path: this.imagePath(image.image) };
        });
        await Promise.all(images.map((image) => this.waitForNode(image)));
        await this.rememberGenerations(devices);
        this.saveState();
        this.askForSpaceIfShort(handle, record);
        return { handle, devices: devices.map((d) => ({ ...d })), images };
      } catch (err) {
        await this.destroyKernelSnapshot(handle).catch(() => undefined);
        throw err;
      }
    });
  }

  /** The module starts the next generation at snapshot 255 already: keep presenting the old one. */
  private async rememberGenerations(devices: DeviceId[]): Promise<void> {
    const state = this.state!;
    const trackers = await this.live().trackerCollect();
    for (const device of devices) {
      const tracker = trackers.find((t) => sameDevice(t.device, device));
      if (tracker === undefined) continue;
      const kernelGeneration = uuidText(tracker.generationId);
      const last = state.last[showDevice(device)];
      if (tracker.snapNumber === 255 && last !== undefined && last.number === 254 && last.generationId !== kernelGeneration) {
        state.wrapAliases[kernelGeneration] = last.generationId;
      }
      for (const [kernel, presented] of Object.entries(state.wrapAliases)) {
        if (presented === last?.generationId && kernel !== kernelGeneration) delete state.wrapAliases[kernel];
      }
      state.last[showDevice(device)] = { generationId: this.toTracker(tracker).generationId, number: tracker.snapNumber };
    }
  }

  destroySnapshot(handle: string): Promise<void> {
    return this.queue.run(async () => {
      if (this.state?.snapshots[handle] === undefined) throw kernelError('ENODATA', 'destroySnapshot', 'no such snapshot');
      await this.destroyKernelSnapshot(handle);
    });
  }

  /** Stops the waiter first: its wait holds a reference that would delay the module's release. */
  private async destroyKernelSnapshot(handle: string): Promise<void> {
    const record = this.state!.snapshots[handle];
    const waiter = this.waiters.get(handle);
    this.waiters.delete(handle);
    await waiter?.stop();
    try {
      await this.live().snapshotDestroy(Buffer.from(record.kernelId, 'hex'));
    } catch (err) {
      // Gone already: the module answers ENODEV for an id it does not know.
      if (!isSystemError(err, 'ENODEV')) throw err;
    }
    this.forgetSnapshot(handle);
    this.awaitingSpace.delete(handle);
    this.saveState();
    // No snapshot holds the module now: the devices waiting to be tracked can be.
    for (const device of [...this.pending.values()]) await this.trackNow(device).catch(() => undefined);
  }

  private forgetSnapshot(handle: string): void {
    const state = this.state!;
    for (const [id, store] of Object.entries(state.snapstores)) {
      if (store.handle !== handle) continue;
      store.handle = null;
      if (store.cleaning) this.terminate(id);
    }
    delete state.snapshots[handle];
  }

  async listSnapshots(): Promise<SnapshotInfo[]> {
    const control = this.live();
    const live = new Set((await control.snapshotCollect()).map((id) => id.toString('hex')));
    const out: SnapshotInfo[] = [];
    for (const [handle, record] of Object.entries(this.state!.snapshots)) {
      if (!live.has(record.kernelId)) continue;
      out.push({ handle, devices: record.devices.map((d) => ({ ...d })), images: await this.imagesOf(record.kernelId) });
    }
    return out;
  }

  async listImages(): Promise<SnapshotImage[]> {
    const ids = await this.live().snapshotCollect();
    const images = await Promise.all(ids.map((id) => this.imagesOf(id.toString('hex'))));
    return images.flat();
  }

  private async imagesOf(kernelId: string): Promise<SnapshotImage[]> {
    try {
      const images = await this.live().snapshotImages(Buffer.from(kernelId, 'hex'));
      return images.map((i) => ({ original: { ...i.original }, image: { ...i.image }, path: this.imagePath(i.image) }));
    } catch (err) {
      // Not taken yet (ENODEV) or gone (ESRCH): no images.
      if (isSystemError(err, 'ENODEV') || isSystemError(err, 'ESRCH')) return [];
      throw err;
    }
  }

  /**
   * From the corruption event when this process saw it, else from the image itself: the module
   * fails every read of a corrupted image with ENOSPC, which survives agent restarts.
   */
  async snapshotHealth(device: DeviceId): Promise<SnapshotHealth> {
    const entry = Object.values(this.state?.snapshots ?? {}).find((r) => r.devices.some((d) => sameDevice(d, device)));
    if (entry === undefined) throw kernelError('ENODATA', 'snapshotHealth', `no snapshot holds ${showDevice(device)}`);
    if (entry.corrupted !== null) return unhealthy(entry.corrupted.errno, entry.corrupted.code);
    const image = (await this.imagesOf(entry.kernelId)).find((i) => sameDevice(i.original, device));
    if (image === undefined) throw kernelError('ENODATA', 'snapshotHealth', `the module no longer has the snapshot of ${showDevice(device)}`);
    const reader = await DirectReader.open(image.path);
    try {
      await reader.read(0, Math.min(HEALTH_PROBE_BYTES, reader.size));
      return { ok: true };
    } catch (err) {
      if (isSystemError(err, 'ENOSPC') || (err as { code?: string }).code === 'ENOSPC') return unhealthy(28, 'ENOSPC');
      throw err;
    } finally {
      await reader.close();
    }
  }

  async openImage(image: SnapshotImage): Promise<ImageReader> {
    const reader = await DirectReader.open(image.path);
    return guardReads(reader, async (_offset, _length, use) => {
      try {
        return await use();
      } catch (err) {
        if (errorCode(err) !== 'ENOSPC') throw err;
        throw kernelError('EIO', 'read', `${image.path}: the snapshot is corrupt (its difference storage ran out of space)`);
      }
    });
  }

  // ---- events ---------------------------------------------------------------------------------

  private startWaiter(handle: string, record: SnapshotRecord): void {
    const ackDevice = this.state!.snapstores[record.snapstores[0]]?.storage ?? record.devices[0];
    const waiter = new BlksnapEventWaiter(this.controlDevice, Buffer.from(record.kernelId, 'hex'), this.options.eventWaitMs ?? 100, ackDevice,
      (err, event) => {
        if (err !== null) {
          for (const store of this.storesOf(record)) store.fail(err);
        } else if (event !== undefined) {
          this.onEvent(handle, record, event);
        }
      });
    this.waiters.set(handle, waiter);
  }

  private storesOf(record: SnapshotRecord): BlksnapSnapstore[] {
    return record.snapstores.flatMap((id) => this.snapstoreObjects.get(id) ?? []);
  }

  /** What the module has filled when it asks again: it asks at half a request short of what it was given. */
  private filledEstimate(record: SnapshotRecord): number {
    return Math.max(0, (record.requestedSectors - 1.5 * this.diffStorageMinimumSectors()) * SECTOR);
  }

  private onEvent(handle: string, record: SnapshotRecord, event: BlksnapEvent): void {
    if (this.state?.snapshots[handle] !== record) return;
    if (event.type === 'low-free-space') {
      // The waiter thread has already re-armed the module; here only the account is kept. The
      // creation request is counted at creation, which asks for space itself once it has given its own.
      if (!record.creationEventSeen) {
        record.creationEventSeen = true;
      } else {
        record.requestedSectors += Number(event.requestedSectors);
        this.askForSpaceIfShort(handle, record);
      }
      this.saveState();
    } else if (event.type === 'corrupted') {
      record.corrupted = { errno: event.errno, code: event.code ?? `E${event.errno}` };
      this.saveState();
      this.emitToStores(record, { type: 'overflow', filledBytes: this.filledEstimate(record), errno: event.errno });
    }
  }

  /**
   * One `halffill` per refill, as veeamsnap sends it: when less than the threshold would be free,
   * or the module was given less than it asked for (it then asks nothing more until it is).
   */
  private askForSpaceIfShort(handle: string, record: SnapshotRecord): void {
    if (this.state?.snapshots[handle] !== record || this.awaitingSpace.has(handle)) return;
    const threshold = Math.max(0, ...record.snapstores.map((id) => this.state!.snapstores[id]?.thresholdBytes ?? 0));
    const free = record.givenSectors * SECTOR - this.filledEstimate(record);
    if (record.givenSectors < record.requestedSectors || free < threshold) {
      this.awaitingSpace.add(handle);
      this.emitToStores(record, { type: 'halffill', filledBytes: this.filledEstimate(record) });
    }
  }

  private emitToStores(record: SnapshotRecord, event: SnapstoreEvent): void {
    for (const store of this.storesOf(record)) {
      if (!this.state!.snapstores[store.id]?.cleaning) store.emitEvent(event);
    }
  }

  // ---- helpers --------------------------------------------------------------------------------

  private readParam(name: string): string | null {
    try {
      return fs.readFileSync(path.join(this.moduleDir, 'parameters', name), 'utf8').trim();
    } catch {
      return null;
    }
  }

  private diffStorageMinimumSectors(): number {
    const value = Number(this.readParam('diff_storage_minimum'));
    return Number.isInteger(value) && value > 0 ? value : DEFAULT_DIFF_STORAGE_MINIMUM_SECTORS;
  }

  private imagePath(image: DeviceId): string {
    return path.join(this.options.devDir ?? '/dev', `${BLKSNAP_IMAGE_PREFIX}${image.minor}`);
  }

  private async waitForNode(image: SnapshotImage): Promise<void> {
    const deadline = Date.now() + (this.options.imageNodeTimeoutMs ?? 10_000);
    for (;;) {
      try {
        if (fs.statSync(image.path).isBlockDevice()) return;
      } catch {
        // Not there yet.
      }
      if (Date.now() > deadline) {
        throw kernelError('ETIMEDOUT', 'createSnapshot', `the image node ${image.path} of ${showDevice(image.original)} did not appear`);
      }
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  }

  private live(): BlksnapControl {
    if (this.control === null) throw kernelError('ENODEV', 'engine', 'the blksnap engine is not started');
    return this.control;
  }

  /** What this boot's agents recorded; the agent forgets it after a reboot. */
  private loadState(): Records {
    const saved = this.options.memory.read();
    return saved === undefined ? { snapshots: {}, snapstores: {}, last: {}, wrapAliases: {} } : JSON.parse(saved) as Records;
  }

  private saveState(): void {
    this.options.memory.write(JSON.stringify(this.state));
  }
}

function unhealthy(errno: number, code: string): SnapshotHealth {
  const reason = code === 'ENOSPC' ? 'the snapstore ran out of space' : `the snapshot data is corrupt (${code})`;
  return { ok: false, errno, code, reason };
}
