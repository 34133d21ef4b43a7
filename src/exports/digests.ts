// What reading an image's bytes tells about them, for both uses that read to find out:
// - digests: SHA-256 of each block of a window, and whether the block is all zeros (the REST
//   digests route: a client compares them with its own copy and fetches only what differs);
// - zero marking: which CBT blocks of changed ranges are all zeros (the changes route's
//   markZeroRanges), so a client can write holes instead of copying zeros.
// Both go through an ImageReader (the registry's, under the door's limits), several blocks in
// flight and results taken in order. Digests never bring the bytes to JavaScript: the native
// reader checks a block for zeros and hashes it on its own threads (ImageReader.digest). A zero
// block's digest is the known digest of zeros, so sparse images cost no hashing. Every zero
// found is recorded in the export's ZeroExtents.
import { webcrypto } from 'node:crypto';
import type { ByteRange } from '../core/devices';
import { invalid } from '../core/errors';
import type { ImageReader } from '../core/image';
import { isAllZero, type ZeroExtents } from './zeros';

export const DIGEST_ALGORITHM = 'sha256';
const SUBTLE_ALGORITHM = 'SHA-256';
export const MIN_DIGEST_BLOCK_SIZE = 64 * 1024;
export const MAX_DIGEST_BLOCK_SIZE = 64 * 1024 * 1024;
export const DEFAULT_DIGEST_BLOCK_SIZE = 4 * 1024 * 1024;
/** Bytes of a SHA-256 digest. */
export const DIGEST_LENGTH = 32;

/** What a client asked for; absent values take their defaults. */
export interface DigestRequest {
  blockSize?: number | undefined;
  start?: number | undefined;
  length?: number | undefined;
}

export interface DigestWindow {
  blockSize: number;
  start: number;
  length: number;
}

/** The window of `request` over an image of `imageSize` bytes; Invalid when it does not fit. */
export function digestWindow(request: DigestRequest, imageSize: number): DigestWindow {
  const blockSize = request.blockSize ?? DEFAULT_DIGEST_BLOCK_SIZE;
  const start = request.start ?? 0;
  if (start % blockSize !== 0) throw invalid(`start ${start} is not a multiple of block_size ${blockSize}`);
  if (start >= imageSize) throw invalid(`start ${start} is not within the image of ${imageSize} bytes`);
  const length = request.length ?? imageSize - start;
  if (start + length > imageSize) {
    throw invalid(`start ${start} + length ${length} passes the end of the image of ${imageSize} bytes`);
  }
  return { blockSize, start, length };
}

export interface BlockDigest {
  offset: number;
  length: number;
  digest: Buffer;
  zero: boolean;
}

export interface ReadPassOptions {
  /** Reads in flight (and results waiting to be taken), at most. */
  depth: number;
  /** Called with each buffer the reader gave once nothing reads it any more (the reader pool's recycling). */
  release: (buffer: Buffer) => void;
}

/**
 * Reads in flight for blocks of `blockSize`: about 16 MiB, at least 2 and at most 16 reads (4 of
 * 4 MiB read faster than 8 here: bench/digests).
 */
export const passDepth = (blockSize: number): number => Math.min(16, Math.max(2, Math.floor((16 * 1024 * 1024) / blockSize)));

const ignoreRejection = (): void => {};

/**
 * Runs tasks up to `depth` at a time and hands their results back in order. close() stops
 * starting tasks and waits for those running (a reader may only close once no read uses it).
 */
export class InOrder<T> {
  private readonly pending: Array<{ promise: Promise<T>; settled: boolean }> = [];
  private closed = false;

  constructor(private readonly tasks: Iterator<() => Promise<T>>, private readonly depth: number) {
    this.fill();
  }

  private fill(): void {
    while (!this.closed && this.pending.length < this.depth) {
      const next = this.tasks.next();
      if (next.done === true) return;
      const entry = { promise: next.value(), settled: false };
      const settle = (): void => {
        entry.settled = true;
      };
      // Taken in order by next(); until then a failure must not count as unhandled.
      entry.promise.then(settle, settle);
      entry.promise.catch(ignoreRejection);
      this.pending.push(entry);
    }
  }

  /** Whether the next result is ready, so that next() will not wait. */
  get nextReady(): boolean {
    return this.pending.length > 0 && this.pending[0].settled;
  }

  /** The next result in order, or undefined once every task's result was taken. */
  async next(): Promise<T | undefined> {
    const head = this.pending.shift();
    if (head === undefined) return undefined;
    // The next task starts while this result is awaited: `depth` stay in flight.
    this.fill();
    return head.promise;
  }

  async close(): Promise<void> {
    this.closed = true;
    const left = this.pending.splice(0);
    await Promise.allSettled(left.map((entry) => entry.promise));
  }
}

async function sha256(data: Uint8Array): Promise<Buffer> {
  return Buffer.from(await webcrypto.subtle.digest(SUBTLE_ALGORITHM, data));
}

/** The digests of zero blocks, by length: one per block size, and the odd last blocks. */
const zeroDigests = new Map<number, Promise<Buffer>>();
const MAX_ZERO_DIGESTS = 32;

function zeroDigest(length: number): Promise<Buffer> {
  let digest = zeroDigests.get(length);
  if (digest === undefined) {
    if (zeroDigests.size >= MAX_ZERO_DIGESTS) zeroDigests.clear();
    digest = sha256(new Uint8Array(length));
    zeroDigests.set(length, digest);
  }
  return digest;
}

/** Reads one range, gives the buffer to `use`, and releases it once `use` is done with it. */
async function withBlock<T>(reader: ImageReader, range: ByteRange, options: ReadPassOptions, use: (buffer: Buffer) => Promise<T> | T): Promise<T> {
  const buffer = await reader.read(range.offset, range.length);
  try {
    return await use(buffer);
  } finally {
    options.release(buffer);
  }
}

function* blocksOf(window: DigestWindow): Generator<ByteRange> {
  const end = window.start + window.length;
  for (let offset = window.start; offset < end; offset += window.blockSize) {
    yield { offset, length: Math.min(window.blockSize, end - offset) };
  }
}

function* tasksOf<T, R>(items: Iterable<T>, task: (item: T) => Promise<R>): Generator<() => Promise<R>> {
  for (const item of items) yield () => task(item);
}

/** The digests of every block of `window`, in order; zero blocks are added to `zeros`. The caller closes the result. */
export function digestBlocks(reader: ImageReader, window: DigestWindow, zeros: ZeroExtents, options: Pick<ReadPassOptions, 'depth'>): InOrder<BlockDigest> {
  const digestOf = async (block: ByteRange): Promise<BlockDigest> => {
    const summary = await reader.digest(block.offset, block.length);
    if (summary.zero) zeros.add(block.offset, block.length);
    const digest = summary.sha256 ?? await zeroDigest(block.length);
    return { ...block, digest, zero: summary.zero };
  };
  return new InOrder(tasksOf(blocksOf(window), digestOf), options.depth);
}

export interface ZeroMarkedRange extends ByteRange {
  zero: boolean;
}

interface Granule extends ZeroMarkedRange {
  /** Index of the input range it belongs to: ranges are never merged with each other. */
  range: number;
}

/** One step of a zero-marking pass: granules already known to be zero, or granules to read together. */
interface Step {
  read: boolean;
  granules: ByteRange[];
  range: number;
}

/**
 * Cuts each range into granules at multiples of `granularity` (the last may be shorter) and
 * groups them into steps: runs already known to be zero, and reads of at most `readSize` bytes.
 */
function* stepsOf(ranges: readonly ByteRange[], granularity: number, readSize: number, known: ZeroExtents): Generator<Step> {
  for (const [index, range] of ranges.entries()) {
    const end = range.offset + range.length;
    let step: Step | null = null;
    let stepBytes = 0;
    for (let offset = range.offset; offset < end;) {
      const next = Math.min(end, (Math.floor(offset / granularity) + 1) * granularity);
      const granule = { offset, length: next - offset };
      const read = !known.covers(granule.offset, granule.length);
      if (step !== null && (step.read !== read || (read && stepBytes + granule.length > readSize))) {
        yield step;
        step = null;
      }
      if (step === null) {
        step = { read, granules: [], range: index };
        stepBytes = 0;
      }
      step.granules.push(granule);
      stepBytes += granule.length;
      offset = next;
    }
    if (step !== null) yield step;
  }
}

/**
 * `ranges` (ascending, disjoint) split where the image switches between all-zero and not, at
 * multiples of `granularity` (the CBT block): each piece says whether it is all zeros. Granules
 * already known to be zero are not read; those found to be are added to `known`.
 */
export async function markZeroRanges(reader: ImageReader, ranges: readonly ByteRange[], granularity: number, known: ZeroExtents,
  options: ReadPassOptions & { readSize: number; signal?: AbortSignal }): Promise<ZeroMarkedRange[]> {
  const readSize = Math.max(granularity, options.readSize - (options.readSize % granularity));
  const runStep = async (step: Step): Promise<Granule[]> => {
    if (!step.read) return step.granules.map((granule) => ({ ...granule, zero: true, range: step.range }));
    // No more reads once nobody waits for the answer.
    options.signal?.throwIfAborted();
    const first = step.granules[0];
    const last = step.granules[step.granules.length - 1];
    const span = { offset: first.offset, length: last.offset + last.length - first.offset };
    return withBlock(reader, span, options, (buffer) => step.granules.map((granule) => {
      const at = granule.offset - span.offset;
      const zero = isAllZero(buffer.subarray(at, at + granule.length));
      if (zero) known.add(granule.offset, granule.length);
      return { ...granule, zero, range: step.range };
    }));
  };
  const pass = new InOrder(tasksOf(stepsOf(ranges, granularity, readSize, known), runStep), options.depth);
  const marked: Array<ZeroMarkedRange & { range: number }> = [];
  try {
    for (let granules = await pass.next(); granules !== undefined; granules = await pass.next()) {
      options.signal?.throwIfAborted();
      for (const granule of granules) {
        const previous = marked.at(-1);
        if (previous !== undefined && previous.range === granule.range && previous.zero === granule.zero) previous.length += granule.length;
        else marked.push({ ...granule });
      }
    }
  } finally {
    await pass.close();
  }
  return marked.map(({ offset, length, zero }) => ({ offset, length, zero }));
}
