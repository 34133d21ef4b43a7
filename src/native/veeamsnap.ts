// Typed facade over the veeamsnap control device (/dev/veeamsnap): one async method per ioctl.
// The addon does the syscalls (off the event loop) and owns the packed layouts; this file
// gives them types, converts byte ranges once, and holds the pure /proc/kallsyms helper.
// Policy (EALREADY as success, retries, waiting for image nodes, ioctl serialisation) belongs
// to the engine above. Every kernel failure rejects with a SystemError whose `syscall` is the
// ioctl's name (e.g. 'IOCTL_TRACKING_ADD') and whose `code` is the errno name.
import { binding, type NativeControlHandle } from './binding';
import type { DeviceId } from '../core/devices';

export const DEFAULT_CONTROL_DEVICE = '/dev/veeamsnap';

/** The kernel truncates byte ranges to 512-byte sectors, so ranges must be aligned to them. */
export const SECTOR_SIZE = 512;

/** The symbol the module requires as element 0 of IOCTL_SET_KERNEL_ENTRIES (module 5.0.2+). */
export const KERNEL_ENTRY_BASE_SYMBOL = '__request_module';

/** A byte count: a bigint, or a number that is a safe integer. */
export type Bytes = bigint | number;

/** A span of a block device in bytes as the ABI takes it: bigint allowed, multiples of 512. */
export interface KernelRange {
  offset: Bytes;
  length: Bytes;
}

/** Where a snapstore keeps COW data: kernel memory, several devices, or one device's ranges. */
export type SnapstoreStorage = 'memory' | 'multidev' | DeviceId;

export interface ModuleVersion {
  major: number;
  minor: number;
  revision: number;
  build: number;
}

export interface CompatibilityFlags {
  raw: bigint;
  snapstore: boolean;
  btrfs: boolean;
  multidev: boolean;
  /** IOCTL_SET_KERNEL_ENTRIES / IOCTL_GET_UNRESOLVED_KERNEL_ENTRIES exist. */
  kernelEntries: boolean;
}

/** One tracked device, from IOCTL_TRACKING_COLLECT. */
export interface VeeamsnapTracker {
  device: DeviceId;
  capacityBytes: bigint;
  /** CBT blocks = map bytes; 0 if the tracker has no map. */
  cbtMapSize: number;
  /** Snap number of the last captured snapshot (0..255); 0 if none in this map. */
  snapNumber: number;
  /** 16 bytes identifying the CBT generation of `snapNumber`. */
  generationId: Buffer;
}

/** A snapshot image: /dev/veeamimage<image.minor> shows `original` at snapshot time. */
export interface ImageInfo {
  original: DeviceId;
  image: DeviceId;
}

/** A kernel symbol address for IOCTL_SET_KERNEL_ENTRIES. */
export interface KernelEntry {
  name: string;
  address: bigint;
}

/** The range form the addon encodes: byte offsets, `right` exclusive. */
export interface WireRange {
  left: bigint;
  right: bigint;
}

const U64_MAX = (1n << 64n) - 1n;

function toBigInt(value: Bytes, what: string): bigint {
  if (typeof value === 'bigint') return value;
  if (!Number.isSafeInteger(value)) throw new RangeError(`${what} must be a safe integer or a bigint`);
  return BigInt(value);
}

/**
 * The single conversion from the API's byte ranges to the kernel's {left, right} (right
 * exclusive, so a FIEMAP extent is [physical, physical + length), never "- 1"). Rejects empty,
 * negative, overflowing and non-512-aligned ranges: the kernel would silently truncate them.
 */
export function toWireRanges(ranges: readonly KernelRange[]): WireRange[] {
  if (ranges.length === 0) throw new RangeError('at least one range is required');
  return ranges.map((range, i) => {
    const left = toBigInt(range.offset, `ranges[${i}].offset`);
    const length = toBigInt(range.length, `ranges[${i}].length`);
    const sector = BigInt(SECTOR_SIZE);
    if (left < 0n || length <= 0n || left + length > U64_MAX) {
      throw new RangeError(`ranges[${i}] must be a non-empty span within 0..2^64-1`);
    }
    if (left % sector !== 0n || length % sector !== 0n) {
      throw new RangeError(`ranges[${i}] must be aligned to ${SECTOR_SIZE} bytes`);
    }
    return { left, right: left + length };
  });
}

/**
 * Finds `names` among the core-kernel text symbols of /proc/kallsyms text (lines
 * "<hex address> <type> <name> [module]"). Only lines without a [module] suffix and with type
 * T or t count. Names not found are absent from the result; a 0 address (kptr_restrict hides
 * it) is returned as 0n for the caller to refuse.
 */
export function findKernelSymbols(kallsyms: string, names: readonly string[]): Map<string, bigint> {
  const wanted = new Set(names);
  const found = new Map<string, bigint>();
  for (const line of kallsyms.split('\n')) {
    const fields = line.trim().split(/\s+/);
    if (fields.length !== 3 || (fields[1] !== 'T' && fields[1] !== 't')) continue;
    const [address, , name] = fields as [string, string, string];
    if (!wanted.has(name) || found.has(name) || !/^[0-9a-fA-F]+$/.test(address)) continue;
    found.set(name, BigInt(`0x${address}`));
  }
  return found;
}

/**
 * The IOCTL_SET_KERNEL_ENTRIES list for `unresolved` names, all taken from one kallsyms text:
 * the base symbol first, as the module requires. Throws if a symbol is missing or reads as 0,
 * since a 0 address would point the module at the wrong function.
 */
export function kernelEntriesFromKallsyms(kallsyms: string, unresolved: readonly string[]): KernelEntry[] {
  const names = [KERNEL_ENTRY_BASE_SYMBOL, ...unresolved.filter((n) => n !== KERNEL_ENTRY_BASE_SYMBOL)];
  const found = findKernelSymbols(kallsyms, names);
  return names.map((name) => {
    const address = found.get(name);
    if (address === undefined) throw new Error(`kernel symbol ${name} not found in /proc/kallsyms`);
    if (address === 0n) throw new Error(`kernel symbol ${name} reads as address 0 (kptr_restrict? run as root)`);
    return { name, address };
  });
}


/**
 * An open control device. Every method is one ioctl (or one two-phase enumeration) run on the
 * libuv pool and returns a Promise, including the quick ones, so callers can queue them
 * uniformly. ioctls act on module-global state: any open control device sees everything.
 */
export class VeeamsnapControl {
  private constructor(
    private readonly handle: NativeControlHandle,
    readonly devicePath: string,
  ) {}

  /** Opens the control device (O_RDWR). `devicePath` lets tests point elsewhere. */
  static async open(devicePath: string = DEFAULT_CONTROL_DEVICE): Promise<VeeamsnapControl> {
    const handle = new binding.VeeamsnapControlHandle(devicePath);
    await handle.open();
    return new VeeamsnapControl(handle, devicePath);
  }

  /** IOCTL_GETVERSION. */
  version(): Promise<ModuleVersion> {
    return this.call('IOCTL_GETVERSION') as Promise<ModuleVersion>;
  }

  /** IOCTL_COMPATIBILITY_FLAGS. */
  compatibilityFlags(): Promise<CompatibilityFlags> {
    return this.call('IOCTL_COMPATIBILITY_FLAGS') as Promise<CompatibilityFlags>;
  }

  /** IOCTL_GET_UNRESOLVED_KERNEL_ENTRIES: names the module still needs; [] when none. */
  unresolvedKernelEntries(): Promise<string[]> {
    return this.call('IOCTL_GET_UNRESOLVED_KERNEL_ENTRIES') as Promise<string[]>;
  }

  /**
   * IOCTL_SET_KERNEL_ENTRIES. `entries[0]` must be KERNEL_ENTRY_BASE_SYMBOL; build the list
   * with kernelEntriesFromKallsyms. An empty list is refused (it crashes the module).
   */
  async setKernelEntries(entries: readonly KernelEntry[]): Promise<void> {
    await this.call('IOCTL_SET_KERNEL_ENTRIES', { entries });
  }

  /** IOCTL_TRACKING_ADD (blocks while it freezes the device). EALREADY: already tracked. */
  async trackingAdd(device: DeviceId): Promise<void> {
    await this.call('IOCTL_TRACKING_ADD', { device });
  }

  /** IOCTL_TRACKING_REMOVE (blocks while it freezes the device). Discards the CBT map. */
  async trackingRemove(device: DeviceId): Promise<void> {
    await this.call('IOCTL_TRACKING_REMOVE', { device });
  }

  /** IOCTL_TRACKING_COLLECT: count, then fetch (counting again if trackers appeared). */
  trackingCollect(): Promise<VeeamsnapTracker[]> {
    return this.call('IOCTL_TRACKING_COLLECT') as Promise<VeeamsnapTracker[]>;
  }

  /** IOCTL_TRACKING_BLOCK_SIZE: the module parameter in bytes, not necessarily a map's. */
  trackingBlockSize(): Promise<number> {
    return this.call('IOCTL_TRACKING_BLOCK_SIZE') as Promise<number>;
  }

  /**
   * IOCTL_TRACKING_READ_CBT_BITMAP: up to `length` map bytes from `offset` (< map size) of an
   * original device currently held by a snapshot (EPERM otherwise). The Buffer holds what the
   * kernel copied, which may be shorter: compare its length with what you asked for.
   */
  readCbtMap(device: DeviceId, offset: number, length: number): Promise<Buffer> {
    return this.call('IOCTL_TRACKING_READ_CBT_BITMAP', { device, offset, length }) as Promise<Buffer>;
  }

  /** IOCTL_SNAPSTORE_CREATE: a snapstore without space and without events. `id`: 16 bytes. */
  async snapstoreCreate(id: Buffer, storage: SnapstoreStorage, devices: readonly DeviceId[]): Promise<void> {
    await this.call('IOCTL_SNAPSTORE_CREATE', { id, storage, devices });
  }

  /** IOCTL_SNAPSTORE_MEMORY: the (only) buffer of a memory snapstore, in bytes. */
  async snapstoreMemory(id: Buffer, bytes: Bytes): Promise<void> {
    await this.call('IOCTL_SNAPSTORE_MEMORY', { id, size: bytes });
  }

  /** IOCTL_SNAPSTORE_FILE: byte ranges of the snapstore's storage device. */
  async snapstoreFile(id: Buffer, ranges: readonly KernelRange[]): Promise<void> {
    await this.call('IOCTL_SNAPSTORE_FILE', { id, ranges: toWireRanges(ranges) });
  }

  /** IOCTL_SNAPSTORE_FILE_MULTIDEV: byte ranges on `device` for a multi-device snapstore. */
  async snapstoreFileMultidev(id: Buffer, device: DeviceId, ranges: readonly KernelRange[]): Promise<void> {
    await this.call('IOCTL_SNAPSTORE_FILE_MULTIDEV', { id, device, ranges: toWireRanges(ranges) });
  }

  /**
   * IOCTL_SNAPSTORE_CLEANUP (destructive: never a usage query). Resolves with the COW bytes
   * used, or null when the kernel knew no snapstore by that id.
   */
  snapstoreCleanup(id: Buffer): Promise<bigint | null> {
    return this.call('IOCTL_SNAPSTORE_CLEANUP', { id }) as Promise<bigint | null>;
  }

  /** IOCTL_SNAPSHOT_CREATE (blocks while devices are frozen). Resolves with the opaque id. */
  snapshotCreate(devices: readonly DeviceId[]): Promise<bigint> {
    return this.call('IOCTL_SNAPSHOT_CREATE', { devices }) as Promise<bigint>;
  }

  /** IOCTL_SNAPSHOT_DESTROY (blocks while devices are thawed). */
  async snapshotDestroy(snapshotId: bigint): Promise<void> {
    await this.call('IOCTL_SNAPSHOT_DESTROY', { snapshotId });
  }

  /**
   * IOCTL_SNAPSHOT_ERRNO: 0 if the device's COW state is healthy, else a negative errno
   * (-61 ENODATA: the snapstore overflowed). Rejects with ENODATA if no snapstore serves it.
   */
  snapshotErrno(device: DeviceId): Promise<number> {
    return this.call('IOCTL_SNAPSHOT_ERRNO', { device }) as Promise<number>;
  }

  /**
   * IOCTL_COLLECT_SNAPSHOT_IMAGES: probes with count 0, then fetches with room for every image
   * the module can hold, so the kernel never sees a too-small capacity. Do not run it while a
   * snapshotCreate is in flight (the module counts outside its lock).
   */
  collectSnapshotImages(): Promise<ImageInfo[]> {
    return this.call('IOCTL_COLLECT_SNAPSHOT_IMAGES') as Promise<ImageInfo[]>;
  }

  /** Closes the descriptor; calls already in flight finish first. Later calls reject (EBADF). */
  close(): void {
    this.handle.close();
  }

  // async: argument errors thrown by the encoder become rejections too.
  private async call(name: string, args?: object): Promise<unknown> {
    return this.handle.ioctl(name, args);
  }
}
