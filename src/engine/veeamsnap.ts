// The engine on the real veeamsnap kernel module, through the native binding.
//
// Policy the binding leaves to us lives here: kernel entries resolved at start, EALREADY on
// tracking add taken as success, ioctls serialised (the module does not serialise them), image
// nodes waited for after a snapshot, and the module's snapshot id kept inside the engine: it is
// a kernel heap address, so callers get a random handle and only the engine's own state file
// maps it back (which is what lets a restarted agent destroy a snapshot it made).
import crypto from 'node:crypto';
import { EventEmitter } from 'node:events';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { isSystemError } from '../native/binding';
import { DirectReader } from '../native/reader';
import { SnapstorePipe } from '../native/snapstore-pipe';
import { DEFAULT_CONTROL_DEVICE, VeeamsnapControl, kernelEntriesFromKallsyms, type VeeamsnapTracker as KernelTracker } from '../native/veeamsnap';
import { SerialQueue } from '../core/serial';
import { errnoName, kernelError } from '../core/errors';
import { sameDevice, showDevice, type ByteRange, type DeviceId } from '../core/devices';
import type { ImageReader } from '../core/image';
import type {
  SnapshotEngine, SnapshotHealth, SnapshotImage, SnapshotInfo, Snapstore, SnapstoreEvent, SnapstoreOptions, SnapstoreUsage, TrackerInfo, EngineMemory,
} from './types';

const CBT_READ_CHUNK = 4 * 1024 * 1024;
const ACK_TIMEOUT_MS = 10_000;

export interface VeeamsnapEngineOptions {
  /** Where the engine keeps the handle -> kernel snapshot id map (agent state, not public). */
  memory: EngineMemory;
  controlDevice?: string;
  /** Directory holding the veeamimageN nodes. */
  devDir?: string;
  /** How long to wait for an image node after a snapshot is created. */
  imageNodeTimeoutMs?: number;
  kallsymsPath?: string;
}

interface Handles {
  /** handle -> kernel snapshot id (hex) and its devices. */
  snapshots: Record<string, { kernelId: string; devices: DeviceId[] }>;
}


/** The 16 generation bytes in the canonical UUID text form. */
export function generationUuid(bytes: Buffer): string {
  const hex = bytes.toString('hex');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/** The smallest power of two B >= 512 with ceil(capacity / B) = mapSize (spec §3.2). */
export function deriveCbtBlockSize(capacityBytes: number, mapSize: number, fallback: number): number {
  if (mapSize === 0) return fallback;
  for (let blockSize = 512; blockSize <= 2 ** 40; blockSize *= 2) {
    if (Math.ceil(capacityBytes / blockSize) === mapSize) return blockSize;
  }
  return fallback;
}

/** How long a cleaned-up snapstore's TERMINATE may take before the pipe is given up on. */
const TERMINATE_WAIT_MS = 10_000;

export class VeeamsnapSnapstore extends EventEmitter implements Snapstore {
  private terminated: Promise<{ filledBytes: number }>;
  /** The module's only fill reports are its events; a new snapstore holds nothing. */
  private lastUsage: SnapstoreUsage = { filledBytes: 0, measuredAt: new Date() };

  constructor(readonly id: string, private readonly pipe: SnapstorePipe,
    private readonly control: Pick<VeeamsnapControl, 'snapstoreCleanup'>, private readonly terminateWaitMs = TERMINATE_WAIT_MS) {
    super();
    pipe.on('halffill', ({ filledBytes }) => this.emitEvent({ type: 'halffill', filledBytes: Number(filledBytes) }));
    pipe.on('overflow', ({ errno, filledBytes }) => this.emitEvent({ type: 'overflow', errno, filledBytes: Number(filledBytes) }));
    this.terminated = new Promise((resolve) => {
      pipe.once('terminate', ({ filledBytes }) => {
        const event = { type: 'terminate', filledBytes: Number(filledBytes) } as const;
        this.emitEvent(event);
        void pipe.close();
        resolve(event);
      });
    });
    // A failing pipe must not crash the agent; its snapstore simply reports nothing more.
    pipe.on('error', (err) => this.emit('error', err));
  }

  get usage(): SnapstoreUsage {
    return { ...this.lastUsage };
  }

  private emitEvent(event: SnapstoreEvent): void {
    this.lastUsage = { filledBytes: event.filledBytes, measuredAt: new Date() };
    this.emit('event', event);
  }

  async addDeviceRanges(ranges: ByteRange[]): Promise<void> {
    await this.pipe.nextPortion(ranges);
  }

  async cleanup(): Promise<{ filledBytes: number }> {
    const filled = await this.control.snapstoreCleanup(Buffer.from(this.id, 'hex'));
    if (filled === null) {
      // The kernel no longer knows it: nothing will ever terminate it.
      await this.pipe.close();
      return { filledBytes: 0 };
    }
    // The ioctl has released the snapstore; TERMINATE only confirms it. A pipe whose reader
    // failed or a notification that never comes must not hold a delete up forever.
    let giveUp: NodeJS.Timeout | undefined;
    let onError: (() => void) | undefined;
    const withoutPipe = new Promise<{ filledBytes: number }>((resolve) => {
      const done = (): void => resolve({ filledBytes: Number(filled) });
      giveUp = setTimeout(done, this.terminateWaitMs);
      onError = done;
      this.pipe.once('error', onError);
    });
    try {
      return await Promise.race([this.terminated, withoutPipe]);
    } finally {
      clearTimeout(giveUp);
      this.pipe.off('error', onError!);
      await this.pipe.close();
    }
  }

  close(): Promise<void> {
    return this.pipe.close();
  }
}

export class VeeamsnapEngine implements SnapshotEngine {
  readonly kind = 'veeamsnap';
  private control: VeeamsnapControl | null = null;
  private readonly snapstores = new Set<VeeamsnapSnapstore>();
  private readonly queue = new SerialQueue();
  private handles: Handles | null = null;
  private moduleBlockSize = 256 * 1024;

  constructor(private readonly options: VeeamsnapEngineOptions) {}

  private get controlDevice(): string {
    return this.options.controlDevice ?? DEFAULT_CONTROL_DEVICE;
  }

  async start(): Promise<void> {
    if (this.control !== null) return;
    let control: VeeamsnapControl;
    try {
      control = await VeeamsnapControl.open(this.controlDevice);
    } catch (err) {
      if (isSystemError(err, 'ENOENT')) {
        throw kernelError('ENOENT', 'start', `${this.controlDevice} does not exist: is the veeamsnap module loaded (modprobe veeamsnap)?`);
      }
      throw err;
    }
    try {
      const unresolved = await control.unresolvedKernelEntries();
      if (unresolved.length > 0) {
        const kallsyms = await fsp.readFile(this.options.kallsymsPath ?? '/proc/kallsyms', 'utf8');
        let entries;
        try {
          entries = kernelEntriesFromKallsyms(kallsyms, unresolved);
        } catch (err) {
          throw kernelError('ENOENT', 'start', `cannot resolve the kernel entries veeamsnap needs (${unresolved.join(', ')}): ${(err as Error).message}`);
        }
        await control.setKernelEntries(entries);
      }
      this.moduleBlockSize = await control.trackingBlockSize();
      this.handles = this.loadHandles();
    } catch (err) {
      control.close();
      throw err;
    }
    this.control = control;
  }

  async close(): Promise<void> {
    await this.queue.idle();
    // Closing the pipes does not touch the snapstores; their later events are simply lost.
    await Promise.all([...this.snapstores].map((s) => s.close()));
    this.snapstores.clear();
    this.control?.close();
    this.control = null;
  }

  // ---- tracking -------------------------------------------------------------------------------

  startTracking(device: DeviceId): Promise<void> {
    return this.queue.run(async () => {
      try {
        await this.live().trackingAdd(device);
      } catch (err) {
        if (!isSystemError(err, 'EALREADY')) throw err;
      }
    });
  }

  stopTracking(device: DeviceId): Promise<void> {
    return this.queue.run(() => this.live().trackingRemove(device));
  }

  async listTrackers(): Promise<TrackerInfo[]> {
    const trackers = await this.live().trackingCollect();
    return trackers.map((t) => this.toTracker(t));
  }

  private toTracker(t: KernelTracker): TrackerInfo {
    const sizeBytes = Number(t.capacityBytes);
    return {
      device: { ...t.device },
      sizeBytes,
      cbtBlockSize: deriveCbtBlockSize(sizeBytes, t.cbtMapSize, this.moduleBlockSize),
      cbtMapSize: t.cbtMapSize,
      generationId: generationUuid(t.generationId),
      snapshotNumber: t.snapNumber,
    };
  }

  async readCbtMap(device: DeviceId): Promise<Buffer> {
    const control = this.live();
    const tracker = (await control.trackingCollect()).find((t) => sameDevice(t.device, device));
    if (tracker === undefined) throw kernelError('ENODATA', 'IOCTL_TRACKING_READ_CBT_BITMAP', `${showDevice(device)} is not tracked`);
    const map = Buffer.alloc(tracker.cbtMapSize);
    for (let offset = 0; offset < map.length; offset += CBT_READ_CHUNK) {
      const length = Math.min(CBT_READ_CHUNK, map.length - offset);
      const chunk = await control.readCbtMap(device, offset, length);
      if (chunk.length !== length) {
        throw kernelError('EIO', 'IOCTL_TRACKING_READ_CBT_BITMAP', `short CBT read: ${chunk.length} of ${length} bytes at ${offset}`);
      }
      chunk.copy(map, offset);
    }
    return map;
  }

  // ---- snapstores -----------------------------------------------------------------------------

  createSnapstore(options: SnapstoreOptions): Promise<Snapstore> {
    return this.queue.run(async () => {
      if (!/^[0-9a-f]{32}$/.test(options.id)) throw kernelError('EINVAL', 'INITIATE', 'the id must be 32 hex digits');
      const pipe = await SnapstorePipe.open(this.controlDevice);
      try {
        const ack = new Promise<number>((resolve, reject) => {
          const timer = setTimeout(() => reject(kernelError('ETIMEDOUT', 'INITIATE', 'no acknowledgement from the module')), ACK_TIMEOUT_MS);
          pipe.once('ack', ({ errno }) => {
            clearTimeout(timer);
            resolve(errno);
          });
        });
        ack.catch(() => undefined);
        await pipe.initiate(Buffer.from(options.id, 'hex'), options.storage, options.devices, options.thresholdBytes);
        const errno = await ack;
        if (errno !== 0) throw kernelError('EIO', 'INITIATE', `the module refused the snapstore (errno ${errno})`);
      } catch (err) {
        await pipe.close();
        throw err;
      }
      const snapstore = new VeeamsnapSnapstore(options.id, pipe, this.live());
      this.snapstores.add(snapstore);
      snapstore.on('event', (event: SnapstoreEvent) => {
        if (event.type === 'terminate') this.snapstores.delete(snapstore);
      });
      return snapstore;
    });
  }

  addSnapstoreSpace(id: string, ranges: ByteRange[]): Promise<void> {
    return this.queue.run(() => this.live().snapstoreFile(Buffer.from(id, 'hex'), ranges));
  }

  cleanupSnapstore(id: string): Promise<void> {
    return this.queue.run(async () => {
      await this.live().snapstoreCleanup(Buffer.from(id, 'hex'));
    });
  }

  /** The fill of the snapstore's last event: the module has no query (SNAPSTORE_CLEANUP would drop it). */
  async snapstoreUsage(id: string): Promise<SnapstoreUsage | null> {
    return [...this.snapstores].find((s) => s.id === id)?.usage ?? null;
  }

  // ---- snapshots ------------------------------------------------------------------------------

  createSnapshot(devices: DeviceId[]): Promise<SnapshotInfo> {
    return this.queue.run(async () => {
      const control = this.live();
      // The module would break the other snapshot on EALREADY (spec §8.6): refuse it here.
      const before = await control.collectSnapshotImages();
      const busy = devices.find((d) => before.some((image) => sameDevice(image.original, d)));
      if (busy !== undefined) throw kernelError('EALREADY', 'IOCTL_SNAPSHOT_CREATE', `${showDevice(busy)} is already in a snapshot`);

      const kernelId = await control.snapshotCreate(devices);
      // Persisted at once, so that even a crash in the next steps leaves a way to destroy it.
      const handle = crypto.randomBytes(8).toString('hex');
      this.saveHandle(handle, { kernelId: kernelId.toString(16), devices });
      try {
        const after = await control.collectSnapshotImages();
        const images: SnapshotImage[] = devices.map((device) => {
          const found = after.filter((i) => sameDevice(i.original, device) && !before.some((b) => sameDevice(b.image, i.image)));
          if (found.length !== 1) {
            throw kernelError('EIO', 'IOCTL_COLLECT_SNAPSHOT_IMAGES', `expected one new image of ${showDevice(device)}, found ${found.length}`);
          }
          return { original: { ...device }, image: { ...found[0].image }, path: this.imagePath(found[0].image) };
        });
        await Promise.all(images.map((image) => this.waitForNode(image)));
        return { handle, devices: devices.map((d) => ({ ...d })), images };
      } catch (err) {
        await control.snapshotDestroy(kernelId).catch(() => undefined);
        this.saveHandle(handle, null);
        throw err;
      }
    });
  }

  destroySnapshot(handle: string): Promise<void> {
    return this.queue.run(async () => {
      const entry = this.handles?.snapshots[handle];
      if (entry === undefined) throw kernelError('ENODATA', 'IOCTL_SNAPSHOT_DESTROY', 'no such snapshot');
      try {
        await this.live().snapshotDestroy(BigInt(`0x${entry.kernelId}`));
      } finally {
        // Gone either way: destroyed now, or unknown to the kernel already.
        this.saveHandle(handle, null);
      }
    });
  }

  async listSnapshots(): Promise<SnapshotInfo[]> {
    const images = await this.listImages();
    return Object.entries(this.handles?.snapshots ?? {}).map(([handle, entry]) => ({
      handle,
      devices: entry.devices.map((d) => ({ ...d })),
      images: images.filter((i) => entry.devices.some((d) => sameDevice(d, i.original))),
    }));
  }

  async listImages(): Promise<SnapshotImage[]> {
    const images = await this.live().collectSnapshotImages();
    return images.map((i) => ({ original: { ...i.original }, image: { ...i.image }, path: this.imagePath(i.image) }));
  }

  async snapshotHealth(device: DeviceId): Promise<SnapshotHealth> {
    const errno = await this.live().snapshotErrno(device);
    if (errno === 0) return { ok: true };
    const code = errnoName(-errno);
    const reason = code === 'ENODATA' ? 'the snapstore ran out of space' : `the snapshot data is corrupt (${code})`;
    return { ok: false, errno: -errno, code, reason };
  }

  openImage(image: SnapshotImage): Promise<ImageReader> {
    return DirectReader.open(image.path);
  }

  // ---- helpers --------------------------------------------------------------------------------

  private imagePath(image: DeviceId): string {
    return path.join(this.options.devDir ?? '/dev', `veeamimage${image.minor}`);
  }

  /** The module creates image nodes asynchronously (spec §1.5). */
  private async waitForNode(image: SnapshotImage): Promise<void> {
    const deadline = Date.now() + (this.options.imageNodeTimeoutMs ?? 10_000);
    for (;;) {
      try {
        const stat = fs.statSync(image.path);
        if (stat.isBlockDevice()) return;
      } catch {
        // Not there yet.
      }
      if (Date.now() > deadline) {
        throw kernelError('ETIMEDOUT', 'IOCTL_SNAPSHOT_CREATE', `the image node ${image.path} of ${showDevice(image.original)} did not appear`);
      }
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  }


  private live(): VeeamsnapControl {
    if (this.control === null) throw kernelError('ENODEV', 'engine', 'the veeamsnap engine is not started');
    return this.control;
  }

  /** The handles this boot's agents recorded; the agent forgets them after a reboot. */
  private loadHandles(): Handles {
    const saved = this.options.memory.read();
    return saved === undefined ? { snapshots: {} } : JSON.parse(saved) as Handles;
  }

  private saveHandle(handle: string, entry: Handles['snapshots'][string] | null): void {
    const handles = this.handles!;
    if (entry === null) delete handles.snapshots[handle];
    else handles.snapshots[handle] = entry;
    this.options.memory.write(JSON.stringify(handles));
  }
}

