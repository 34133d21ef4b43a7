// Loads the compiled addon once and declares what it exports, so every native facade module
// (reader.ts, blockdev.ts, veeamsnap.ts...) calls it through types; nothing else in the agent
// touches the .node file. Values whose shape a facade defines come back as `unknown` and are
// given their type there, next to the C++ that builds them.
import path from 'node:path';
import type { DeviceId } from '../core/devices';

// dist/src/native/binding.js -> <root>/build/Release; src/native/binding.ts (ts-node style) -> same root.
const root = path.resolve(__dirname, __dirname.includes(`${path.sep}dist${path.sep}`) ? '../../..' : '../..');

/** A control device whose requests are ioctls by name (veeamsnap.cc, blksnap.cc). */
export interface NativeControlHandle {
  open(): Promise<void>;
  ioctl(name: string, args?: object): Promise<unknown>;
  close(): void;
}

export interface NativeReaderHandle {
  open(): Promise<unknown>;
  read(offset: number, length: number): Promise<Buffer>;
  digest(offset: number, length: number): Promise<unknown>;
  close(): Promise<void>;
}

export interface NativePipeHandle {
  open(): Promise<void>;
  write(name: string, args: object): Promise<{ written: number; length: number }>;
  close(): Promise<void>;
}

export interface NativeEventWaiter {
  stop(): Promise<void>;
}

/** An ioctl argument as the ABI encoders lay it out: blocks of bytes and the pointers between them. */
export interface EncodedRequest {
  /** The ioctl request number (veeamsnap leaves it out for requests of the snapstore pipe). */
  request: number;
  blocks: Buffer[];
  pointers: Array<{ block: number; offset: number; target: number }>;
}

/** The ABI codecs, exported so that tests check them against golden buffers of the spec. */
interface AbiCodecs {
  veeamsnapEncode(name: string, args: object): EncodedRequest;
  veeamsnapDecode(name: string, blocks: Buffer[], returnValue?: number): unknown;
  veeamsnapPointerPlaceholder: bigint;
  veeamsnapRequests: Record<string, number>;
  veeamsnapSizes: Record<string, number>;
  snapstorePipeDecodeEvent(bytes: Buffer): unknown;
  blksnapEncode(name: string, args: object): EncodedRequest;
  blksnapDecode(name: string, blocks: Buffer[], returnValue?: number): unknown;
  blksnapPointerPlaceholder: bigint;
  blksnapRequests: Record<string, number>;
  blksnapSizes: Record<string, number>;
}

export interface NativeBinding extends AbiCodecs {
  // reader.cc
  DirectReaderHandle: new (path: string) => NativeReaderHandle;
  recycleReadBuffer(buffer: Buffer): boolean;
  readerPoolStats(): unknown;
  ioPriorityClasses: { none: number; bestEffort: number; idle: number; lowestLevel: number };
  setReaderIoThreads(count: number): void;
  setReaderMaxPooledBytes(bytes: number): void;
  setReaderIoPriority(ioClass: number, level: number): void;
  readerThreadIds(): number[];
  // blockdev.cc
  queryBlockDevice(path: string): unknown;
  allocateFile(path: string, size: number): Promise<void>;
  punchHole(path: string, offset: number, length: number): Promise<void>;
  fileExtents(path: string): Promise<{ device: DeviceId; extents: Array<{ logical: number; physical: number; length: number; flags: number }> }>;
  fiemapFlags: Record<string, number>;
  fsStats(path: string): unknown;
  // veeamsnap.cc, snapstore_pipe.cc, blksnap.cc
  VeeamsnapControlHandle: new (devicePath: string) => NativeControlHandle;
  SnapstorePipeHandle: new (devicePath: string, onEvent: (err: Error | null, event?: unknown) => void) => NativePipeHandle;
  BlksnapControlHandle: new (devicePath: string) => NativeControlHandle;
  BlksnapEventWaiter: new (devicePath: string, id: Buffer, timeoutMs: number, ackDevice: DeviceId,
    onEvent: (err: Error | null, event?: unknown) => void) => NativeEventWaiter;
  // process.cc
  tryLockExclusive(fd: number): boolean;
  notifySocket(path: string, message: string): void;
}

// eslint-disable-next-line @typescript-eslint/no-require-imports
export const binding = require(path.join(root, 'build', 'Release', 'coriolis_native.node')) as NativeBinding;

/** An error raised by a failed syscall in the addon. */
export interface SystemError extends Error {
  code: string;
  errno: number;
  syscall: string;
  path?: string;
}

export function isSystemError(err: unknown, code?: string): err is SystemError {
  return err instanceof Error && typeof (err as SystemError).syscall === 'string' &&
    (code === undefined || (err as SystemError).code === code);
}
