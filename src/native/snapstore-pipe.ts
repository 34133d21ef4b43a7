// Typed facade over one snapstore pipe: a dedicated open of the control device that carries
// the "stretch" snapstore protocol (spec §4). Commands are written; the kernel's events arrive
// on a native reader thread and are emitted here. Events carry no snapstore id, so a pipe
// serves exactly one snapstore: open one per snapstore, and keep ioctls on VeeamsnapControl.
import { EventEmitter } from 'node:events';

import { binding, type NativePipeHandle } from './binding';
import type { DeviceId } from '../core/devices';
import { DEFAULT_CONTROL_DEVICE, toWireRanges, type Bytes, type KernelRange, type SnapstoreStorage } from './veeamsnap';

/** The answer to INITIATE: errno 0 = created; otherwise the errno it failed with. */
export interface AckEvent {
  type: 'ack';
  errno: number;
  code: string | null;
}

/** Free space fell below the INITIATE threshold (once per refill): add space with nextPortion. */
export interface HalffillEvent {
  type: 'halffill';
  /** COW bytes in use. */
  filledBytes: bigint;
}

/** The snapstore ran out of space. Terminal: the snapshot data of its devices is corrupt. */
export interface OverflowEvent {
  type: 'overflow';
  /** What the kernel reports (EINVAL in 13.1). */
  errno: number;
  code: string | null;
  filledBytes: bigint;
}

/** The snapstore is gone: its storage is no longer referenced and its files may be deleted. */
export interface TerminateEvent {
  type: 'terminate';
  /** COW bytes in use. The kernel sends 512-byte sectors here; this is already bytes. */
  filledBytes: bigint;
}

/** A read the module's protocol does not define (unknown code or size), passed on raw. */
export interface UnknownEvent {
  type: 'unknown';
  code: number | null;
  bytes: Buffer;
}

export type SnapstorePipeEvent = AckEvent | HalffillEvent | OverflowEvent | TerminateEvent | UnknownEvent;

export interface SnapstorePipeEvents {
  ack: [AckEvent];
  halffill: [HalffillEvent];
  overflow: [OverflowEvent];
  terminate: [TerminateEvent];
  unknown: [UnknownEvent];
  /** read() failed or hit end of file; the reader has stopped and no event follows. */
  error: [Error];
}

/**
 * One pipe and its reader thread. While open it keeps the event loop alive (like a socket);
 * close() stops the reader, closes the fd and lets the process exit. Closing does not destroy
 * the snapstore: its later events are lost (spec §4.6). Listen for 'error'.
 */
export class SnapstorePipe extends EventEmitter<SnapstorePipeEvents> {
  private snapstore: Buffer | null = null;
  private initiated = false;
  private closing: Promise<void> | null = null;

  private constructor(
    private readonly handle: NativePipeHandle,
    readonly devicePath: string,
  ) {
    super();
  }

  /** Opens a new pipe (O_RDWR) and starts its reader. `devicePath` lets tests point elsewhere. */
  static async open(devicePath: string = DEFAULT_CONTROL_DEVICE): Promise<SnapstorePipe> {
    let pipe: SnapstorePipe | null = null;
    // Events are built by snapstore_pipe.cc in the SnapstorePipeEvent shape.
    const handle = new binding.SnapstorePipeHandle(devicePath, (err, event) => pipe?.deliver(err, event as SnapstorePipeEvent | undefined));
    pipe = new SnapstorePipe(handle, devicePath);
    await handle.open();
    return pipe;
  }

  /** The id given to initiate(), once it was written. */
  get snapstoreId(): Buffer | null {
    return this.snapstore;
  }

  /**
   * Writes INITIATE: creates snapstore `id` (16 bytes, fresh) bound to this pipe for `devices`,
   * with HALFFILL firing when free space drops below `emptyLimit` bytes. The kernel answers
   * with an 'ack' event, also when the write fails; only one INITIATE per pipe is allowed, so
   * after a failure close this pipe and open another.
   */
  async initiate(id: Buffer, storage: SnapstoreStorage, devices: readonly DeviceId[], emptyLimit: Bytes): Promise<void> {
    if (this.initiated) throw new Error('this pipe already sent INITIATE: use one pipe per snapstore');
    this.initiated = true;
    await this.write('INITIATE', { id, emptyLimit, storage, devices });
    this.snapstore = Buffer.from(id);
  }

  /** Writes NEXT_PORTION: adds byte ranges of the storage device to this pipe's snapstore. */
  async nextPortion(ranges: readonly KernelRange[]): Promise<void> {
    await this.write('NEXT_PORTION', { id: this.requireSnapstore(), ranges: toWireRanges(ranges) });
  }

  /** Writes NEXT_PORTION_MULTIDEV: adds byte ranges on `device` to a multi-device snapstore. */
  async nextPortionMultidev(device: DeviceId, ranges: readonly KernelRange[]): Promise<void> {
    await this.write('NEXT_PORTION_MULTIDEV', { id: this.requireSnapstore(), device, ranges: toWireRanges(ranges) });
  }

  /** Stops the reader thread and closes the fd. No event is emitted after this is called. */
  close(): Promise<void> {
    const closing = this.closing ?? this.handle.close();
    this.closing = closing;
    return closing;
  }

  private requireSnapstore(): Buffer {
    if (this.snapstore === null) throw new Error('no snapstore on this pipe: call initiate() first');
    return this.snapstore;
  }

  // The module reports a malformed command only by a short count (spec §4.2).
  private async write(name: string, args: object): Promise<void> {
    const { written, length } = await this.handle.write(name, args);
    if (written !== length) {
      throw Object.assign(new Error(`${name} ${this.devicePath}: short write (${written} of ${length} bytes)`), {
        code: 'EIO',
        syscall: name,
        path: this.devicePath,
      });
    }
  }

  private deliver(err: Error | null, event?: SnapstorePipeEvent): void {
    if (this.closing !== null) return;
    if (err !== null) this.emit('error', err);
    // Each event goes out under its own type, which SnapstorePipeEvents pairs with it.
    else if (event !== undefined) EventEmitter.prototype.emit.call(this, event.type, event);
  }
}
