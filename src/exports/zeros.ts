// What is known to be all zeros in a snapshot image. An image never changes while it is served,
// so whatever a pass over its bytes found out (a digest pass, a zero-marking changes query)
// stays true for the export's life: the registry keeps it in memory per export, and NBD's
// base:allocation reports it as NBD_STATE_ZERO. It is lost on restart, which costs only the
// hint, never correctness.
import type { ByteRange } from '../core/devices';

/** Where the zero-or-not state that holds at a position ends. */
export interface ZeroState {
  zero: boolean;
  /** The first byte past this state; Infinity when nothing is known beyond. */
  end: number;
}

/** Known-zero byte ranges of one image: sorted, disjoint, and merged where they touch. */
export class ZeroExtents {
  private readonly starts: number[] = [];
  private readonly ends: number[] = [];

  /** Index of the first range ending at or after `position`. */
  private firstEndingFrom(position: number): number {
    let low = 0;
    let high = this.ends.length;
    while (low < high) {
      const middle = (low + high) >>> 1;
      if (this.ends[middle] < position) low = middle + 1;
      else high = middle;
    }
    return low;
  }

  /** Records that [offset, offset + length) reads as zeros. */
  add(offset: number, length: number): void {
    if (length <= 0) return;
    let start = offset;
    let end = offset + length;
    const first = this.firstEndingFrom(start);
    let last = first;
    // Every range that overlaps or touches the new one melts into it.
    while (last < this.starts.length && this.starts[last] <= end) {
      start = Math.min(start, this.starts[last]);
      end = Math.max(end, this.ends[last]);
      last++;
    }
    this.starts.splice(first, last - first, start);
    this.ends.splice(first, last - first, end);
  }

  /** Whether the byte at `position` is known to be zero, and up to where that answer holds. */
  stateAt(position: number): ZeroState {
    const index = this.firstEndingFrom(position + 1);
    if (index < this.starts.length && this.starts[index] <= position) return { zero: true, end: this.ends[index] };
    return { zero: false, end: index < this.starts.length ? this.starts[index] : Infinity };
  }

  /** Whether every byte of [offset, offset + length) is known to be zero. */
  covers(offset: number, length: number): boolean {
    const state = this.stateAt(offset);
    return state.zero && state.end >= offset + length;
  }

  get ranges(): ByteRange[] {
    return this.starts.map((start, index) => ({ offset: start, length: this.ends[index] - start }));
  }
}

const ZEROS = Buffer.alloc(1024 * 1024);

/** Whether `buffer` holds only zero bytes; memcmp against zeros, which stops at the first other byte. */
export function isAllZero(buffer: Uint8Array): boolean {
  for (let at = 0; at < buffer.length; at += ZEROS.length) {
    const slice = buffer.subarray(at, Math.min(at + ZEROS.length, buffer.length));
    if (Buffer.compare(slice, ZEROS.subarray(0, slice.length)) !== 0) return false;
  }
  return true;
}
