// Typed facade over the blksnap v1 control device (/dev/veeamblksnap, docs/blksnap.md): one
// async method per ioctl, and the event waiter of one snapshot. The addon does the syscalls off
// the event loop and owns the layouts; policy (one snapshot at a time, event accounting,
// waiting for image nodes) belongs to the engine. Every kernel failure rejects with a
// SystemError whose `syscall` is the ioctl's name and whose `code` is the errno name.
import { binding, type NativeControlHandle, type NativeEventWaiter } from './binding';
import type { DeviceId } from '../core/devices';

export const DEFAULT_BLKSNAP_CONTROL_DEVICE = '/dev/veeamblksnap';
/** The module's name in /sys/module and for modprobe; images are /dev/veeamblksnapimg<minor>. */
export const BLKSNAP_MODULE = 'veeamblksnap';
export const BLKSNAP_FILTER_MODULE = 'bdevfilter';
export const BLKSNAP_IMAGE_PREFIX = 'veeamblksnapimg';
export const SECTOR_SIZE = 512;

export interface BlksnapVersion {
  major: number;
  minor: number;
  revision: number;
  build: number;
}

export interface BlksnapTracker {
  device: DeviceId;
  blockSize: number;
  capacityBytes: bigint;
  blockCount: number;
  generationId: Buffer;
  /** The number of the last snapshot taken of this device in this generation; 0 before. */
  snapNumber: number;
}

export interface BlksnapImage {
  original: DeviceId;
  image: DeviceId;
}

export interface SectorRange {
  sectorOffset: bigint;
  sectorCount: bigint;
}

export type BlksnapEvent =
  | { type: 'low-free-space'; requestedSectors: bigint; timeLabel: bigint }
  | { type: 'corrupted'; device: DeviceId; errno: number; code: string | null; timeLabel: bigint }
  | { type: 'unknown'; code: number; timeLabel: bigint }
  /** The snapshot no longer exists: no more events will come. */
  | { type: 'gone' };


/** An open control device; the ioctls act on module-global state. */
export class BlksnapControl {
  private constructor(private readonly handle: NativeControlHandle, readonly devicePath: string) {}

  static async open(devicePath: string = DEFAULT_BLKSNAP_CONTROL_DEVICE): Promise<BlksnapControl> {
    const handle = new binding.BlksnapControlHandle(devicePath);
    await handle.open();
    return new BlksnapControl(handle, devicePath);
  }

  version(): Promise<BlksnapVersion> {
    return this.call('IOCTL_BLK_SNAP_VERSION') as Promise<BlksnapVersion>;
  }

  /** The standalone module's modification name ("standalone") and compatibility flags. */
  modification(): Promise<{ compatibilityFlags: bigint; name: string }> {
    return this.call('IOCTL_BLK_SNAP_MOD') as Promise<{ compatibilityFlags: bigint; name: string }>;
  }

  /** EBUSY while a snapshot holds the device, ENODATA if it is not tracked. */
  async trackerRemove(device: DeviceId): Promise<void> {
    await this.call('IOCTL_BLK_SNAP_TRACKER_REMOVE', { device });
  }

  trackerCollect(): Promise<BlksnapTracker[]> {
    return this.call('IOCTL_BLK_SNAP_TRACKER_COLLECT') as Promise<BlksnapTracker[]>;
  }

  /** Up to `length` bytes of the map from `offset`; EPERM unless a taken snapshot holds the device. */
  readCbtMap(device: DeviceId, offset: number, length: number): Promise<Buffer> {
    return this.call('IOCTL_BLK_SNAP_TRACKER_READ_CBT_MAP', { device, offset, length }) as Promise<Buffer>;
  }

  /** Creates (and starts tracking) but does not take; resolves with the 16-byte snapshot id. */
  snapshotCreate(devices: readonly DeviceId[]): Promise<Buffer> {
    return this.call('IOCTL_BLK_SNAP_SNAPSHOT_CREATE', { devices }) as Promise<Buffer>;
  }

  async snapshotDestroy(id: Buffer): Promise<void> {
    await this.call('IOCTL_BLK_SNAP_SNAPSHOT_DESTROY', { id });
  }

  /** Sector ranges of `device` for the snapshot's difference storage; [] only re-arms its low-space event. */
  async snapshotAppendStorage(id: Buffer, device: DeviceId, ranges: readonly SectorRange[]): Promise<void> {
    await this.call('IOCTL_BLK_SNAP_SNAPSHOT_APPEND_STORAGE', { id, device, ranges });
  }

  async snapshotTake(id: Buffer): Promise<void> {
    await this.call('IOCTL_BLK_SNAP_SNAPSHOT_TAKE', { id });
  }

  snapshotCollect(): Promise<Buffer[]> {
    return this.call('IOCTL_BLK_SNAP_SNAPSHOT_COLLECT') as Promise<Buffer[]>;
  }

  /** ENODEV before the snapshot is taken, ESRCH for an unknown id. */
  snapshotImages(id: Buffer): Promise<BlksnapImage[]> {
    return this.call('IOCTL_BLK_SNAP_SNAPSHOT_COLLECT_IMAGES', { id }) as Promise<BlksnapImage[]>;
  }

  close(): void {
    this.handle.close();
  }

  private async call(name: string, args?: object): Promise<unknown> {
    return this.handle.ioctl(name, args);
  }
}

/**
 * Reads one snapshot's event queue on a dedicated thread (the wait blocks in the kernel), each
 * wait bounded by `timeoutMs` so that stop() takes effect within that time. Events arrive in
 * order; after 'gone' or an error nothing more comes. The thread acknowledges each low-space
 * event at once with an empty append on `ackDevice`, a device of the difference storage (the
 * module needs that promptly, whatever the event loop is doing: see blksnap.cc).
 */
export class BlksnapEventWaiter {
  private readonly waiter: NativeEventWaiter;

  constructor(devicePath: string, id: Buffer, timeoutMs: number, ackDevice: DeviceId,
    onEvent: (err: Error | null, event?: BlksnapEvent) => void) {
    // Events are built by blksnap.cc in the BlksnapEvent shape.
    this.waiter = new binding.BlksnapEventWaiter(devicePath, id, timeoutMs, ackDevice, (err, event) => onEvent(err, event as BlksnapEvent | undefined));
  }

  /** Resolves once the thread has ended and every event it read was delivered. */
  stop(): Promise<void> {
    return this.waiter.stop();
  }
}

/** Byte ranges (512-aligned) as the kernel's sector ranges; throws on anything else. */
export function toSectorRanges(ranges: readonly { offset: number; length: number }[]): SectorRange[] {
  return ranges.map((range, i) => {
    if (!Number.isSafeInteger(range.offset) || !Number.isSafeInteger(range.length) || range.offset < 0 || range.length <= 0) {
      throw new RangeError(`ranges[${i}] must be a non-empty span of safe integers`);
    }
    if (range.offset % SECTOR_SIZE !== 0 || range.length % SECTOR_SIZE !== 0) {
      throw new RangeError(`ranges[${i}] must be aligned to ${SECTOR_SIZE} bytes`);
    }
    return { sectorOffset: BigInt(range.offset / SECTOR_SIZE), sectorCount: BigInt(range.length / SECTOR_SIZE) };
  });
}
