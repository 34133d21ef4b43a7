// The model's "kernel" state: what the module would hold in memory (trackers, snapstores,
// snapshots), as one JSON document, state.json, that is the commit point of every operation
// (engine.ts says how a change is committed), and the files it names.
import fsp from 'node:fs/promises';
import path from 'node:path';
import type { DeviceId } from '../../core/devices';
import type { SnapshotImage } from '../types';
import { writeDurably } from './files';

/** Device numbers of the local/experimental range, for disks that are plain files and for images. */
export const SIMULATED_DISK_MAJOR = 240;
export const SIMULATED_IMAGE_MAJOR = 241;

export const COW_BLOCK_SIZE = 16 * 1024;
const BASE_CBT_BLOCK_SIZE = 256 * 1024;
const MAX_CBT_BLOCKS = 2 ** 28;
/** Bumped when the layout of the state directory changes: an older one is discarded, as a module reload does. */
export const STATE_FORMAT = 2;
export const STATE_DIRS = ['cbt', 'ref', 'images'];

export interface SimulatedDisk {
  path: string;
  device: DeviceId;
}

/** A tracker's files, relative to the state directory; each written once, replaced by new names. */
export interface TrackerFiles {
  /** The CBT map being stamped now. */
  live: string;
  /** The CBT map as of the last capture: what readCbtMap shows. */
  snap: string;
  /** The disk as it was at the last capture (a hard link to that capture's image). */
  ref: string;
}

export interface TrackerState {
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

export interface SnapstoreState {
  id: string;
  devices: DeviceId[];
  storage: DeviceId;
  thresholdBytes: number;
  capacityBytes: number;
  filledBytes: number;
  /** HALFFILL may fire: set at creation and whenever space is added. */
  halffillArmed: boolean;
  overflowed: boolean;
  /** Cleanup was asked while a snapshot still used it: it terminates at that snapshot's destroy. */
  cleanedUp: boolean;
}

export interface SnapshotState {
  handle: string;
  devices: DeviceId[];
  images: SnapshotImage[];
}

export interface ModelState {
  format: number;
  bootId: string;
  /** Saved before the image that takes it exists, so a minor is never reused. */
  nextImageMinor: number;
  trackers: TrackerState[];
  snapstores: SnapstoreState[];
  snapshots: SnapshotState[];
}

/** A device as part of a file name. */
export const fileKey = (device: DeviceId): string => `${device.major}_${device.minor}`;

export function cbtBlockSizeFor(sizeBytes: number): number {
  let blockSize = BASE_CBT_BLOCK_SIZE;
  while (Math.ceil(sizeBytes / blockSize) > MAX_CBT_BLOCKS) blockSize *= 2;
  return blockSize;
}

/** state.json: read at start, replaced whole at every commit. */
export class CommitPoint {
  private savedJson = '';

  constructor(private readonly dir: string) {}

  private get file(): string {
    return path.join(this.dir, 'state.json');
  }

  /** The committed state, or null when there is none. */
  async read(): Promise<ModelState | null> {
    try {
      const json = await fsp.readFile(this.file, 'utf8');
      this.savedJson = json;
      return JSON.parse(json) as ModelState;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw err;
    }
  }

  /** Commits `state`; an unchanged state is not written again. */
  async save(state: ModelState): Promise<void> {
    const json = JSON.stringify(state);
    if (json === this.savedJson) return;
    await writeDurably(this.file, json);
    this.savedJson = json;
  }
}
