// The snapshot engine: the only door between the agent and the kernel. Everything above this
// interface speaks in these domain terms and never knows which implementation is underneath:
// veeamsnap.ts and blksnap.ts drive the kernel modules, simulated/ models them for machines
// without one.
import type { EventEmitter } from 'node:events';
import type { ByteRange, DeviceId } from '../core/devices';
import type { ImageReader } from '../core/image';

export interface TrackerInfo {
  device: DeviceId;
  /** Capacity of the tracked device in bytes. */
  sizeBytes: number;
  /** Bytes covered by one byte of the CBT map; the last block may be partial. */
  cbtBlockSize: number;
  /** Bytes in the CBT map: ceil(sizeBytes / cbtBlockSize). */
  cbtMapSize: number;
  /** Changes whenever stamps of different eras could be confused (re-track, resize, wrap). */
  generationId: string;
  /** Number of the last snapshot taken of this device in this generation, 0 before the first. */
  snapshotNumber: number;
}

export type SnapstoreEvent =
  /** Free space fell below the threshold: add more. Fires once per refill. */
  | { type: 'halffill'; filledBytes: number }
  /** The snapstore ran out of space: every snapshot it serves is now corrupt. */
  | { type: 'overflow'; filledBytes: number; errno: number }
  /** The snapstore is gone from the kernel: its files may be deleted. */
  | { type: 'terminate'; filledBytes: number };

export interface SnapstoreOptions {
  /** 16 random bytes as 32 hex digits; the caller persists it before calling. */
  id: string;
  /** Original devices whose copy-on-write data this snapstore receives. */
  devices: DeviceId[];
  /** The block device that will hold the space: the filesystem device of the snapstore files. */
  storage: DeviceId;
  /** Free-space threshold in bytes below which `halffill` fires. */
  thresholdBytes: number;
}

/** A snapstore created by this engine object, with its event stream. */
export interface Snapstore extends EventEmitter {
  readonly id: string;
  /** Adds space as byte ranges of the storage device (file extents beneath the filesystem). */
  addDeviceRanges(ranges: ByteRange[]): Promise<void>;
  /** Asks the kernel to drop the snapstore; resolves once `terminate` has been seen. */
  cleanup(): Promise<{ filledBytes: number }>;
  on(event: 'event', listener: (event: SnapstoreEvent) => void): this;
  /** The event stream broke; no more events will come. */
  on(event: 'error', listener: (err: Error) => void): this;
}

export interface SnapshotImage {
  original: DeviceId;
  image: DeviceId;
  /** Path of the image, opened read-only with O_DIRECT by readers. */
  path: string;
}

/**
 * A live snapshot. `handle` is an opaque token to persist (it lets a later engine object destroy
 * the snapshot after an agent restart); it never reaches API clients.
 */
export interface SnapshotInfo {
  handle: string;
  devices: DeviceId[];
  images: SnapshotImage[];
}

/** A snapstore's fill as an engine knows it. */
export interface SnapstoreUsage {
  /** Copy-on-write bytes consumed: a high-water mark that never shrinks. */
  filledBytes: number;
  /**
   * When `filledBytes` was true: the time of the query for an engine that can measure the fill,
   * else the time of the kernel's last report of it (veeamsnap: creation or the last event).
   */
  measuredAt: Date;
}

export type SnapshotHealth = { ok: true } | { ok: false; errno: number; code: string; reason: string };

/**
 * What an engine keeps across agent restarts within one boot (which kernel snapshot a handle
 * names...), as one document. The agent's database implements it and forgets it after a
 * reboot (agent/recovery.ts); the engine never sees the boot.
 */
export interface EngineMemory {
  read(): string | undefined;
  write(document: string): void;
}

export interface SnapshotEngine {
  readonly kind: 'veeamsnap' | 'blksnap' | 'simulated';
  /** Prepares the engine (kernel entries, control device); idempotent. */
  start(): Promise<void>;
  /** Releases file descriptors and threads; kernel state is left as it is. */
  close(): Promise<void>;

  /** Puts a device under change tracking; tracking an already tracked device succeeds. */
  startTracking(device: DeviceId): Promise<void>;
  stopTracking(device: DeviceId): Promise<void>;
  listTrackers(): Promise<TrackerInfo[]>;
  /** The CBT map as of the live snapshot of `device`; fails with EPERM when there is none. */
  readCbtMap(device: DeviceId): Promise<Buffer>;

  createSnapstore(options: SnapstoreOptions): Promise<Snapstore>;
  /** Adds device space to a snapstore by id, without its event stream (after an agent restart). */
  addSnapstoreSpace(id: string, ranges: ByteRange[]): Promise<void>;
  /** Drops a snapstore by id without its event stream (after an agent restart). */
  cleanupSnapstore(id: string): Promise<void>;
  /**
   * A snapstore's fill, as fresh as the engine can know it, without changing anything. Null when
   * the engine knows nothing of it: veeamsnap has no fill query, only the fill carried by the
   * events of the snapstore's pipe, and a restarted agent never gets that pipe back.
   */
  snapstoreUsage(id: string): Promise<SnapstoreUsage | null>;

  /** Captures all devices at once; every device must have a snapstore. */
  createSnapshot(devices: DeviceId[]): Promise<SnapshotInfo>;
  destroySnapshot(handle: string): Promise<void>;
  /** Snapshots this engine created that still exist, also those of an earlier agent process. */
  listSnapshots(): Promise<SnapshotInfo[]>;
  listImages(): Promise<SnapshotImage[]>;
  /** Health of the snapshot data of one original device. */
  snapshotHealth(device: DeviceId): Promise<SnapshotHealth>;
  openImage(image: SnapshotImage): Promise<ImageReader>;
}
