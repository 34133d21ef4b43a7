// GET|HEAD .../consume/{disk}: the bytes of a snapshot image, with HTTP Range support.
//
// Range rules (RFC 9110 section 14), decided here once:
// - no Range, a Range in another unit than bytes, or any If-Range (we have no validators, so
//   the condition can never hold): 200 with the whole image;
// - one range: 206 with Content-Range; several: 206 multipart/byteranges, parts in the order
//   asked and not merged (a client that asks twice for the same bytes gets them twice);
// - suffix ranges (bytes=-N) give the last N bytes, ends past the image are clamped;
// - no satisfiable range, a malformed bytes range set, or more than maxRanges ranges: 416 with
//   Content-Range: bytes */SIZE (RFC 9110 15.5.17 allows rejecting invalid or excessive sets;
//   sending a whole disk to a client that asked for pieces of it would be worse).
// Content-Length is always exact. Bytes go from the reader's buffers to the socket without a
// copy, with a bounded number of reads ahead, and only while the socket keeps up. A read error
// before the first byte is an ordinary error response; after it, the connection is destroyed
// (the error middleware of app.ts) so the client never mistakes a short body for a complete one.
import crypto from 'node:crypto';
import type { ServerResponse } from 'node:http';
import type { RouterMiddleware } from '@koa/router';
import rangeParser from 'range-parser';
import type { ByteRange } from '../core/devices';
import type { ImageReader } from '../core/image';
import { AgentError, isAgentError } from '../core/errors';
import { countServedBytes } from '../metrics/metrics';
import type { AgentService } from './service';
import { recycleReadBuffer } from '../native/reader';
import { throttle, type ReadLimits } from '../doors/limits';
import { HttpError } from './errors';
import { clientGone, drained } from './stream';

export interface ConsumeOptions {
  /** Bytes per read; reads are aligned to multiples of it. */
  chunkSize: number;
  /**
   * The first read of each range ends at a multiple of this (smaller) size, so the first bytes
   * leave sooner: most consumers fetch many small ranges, where that latency is what counts.
   */
  firstChunkSize: number;
  /** Reads in flight or waiting for the socket, at most. */
  readAhead: number;
  /** More ranges than this in one request are refused with 416. */
  maxRanges: number;
  /** The agent's read-rate limits, if any. */
  limits?: ReadLimits;
}

// 1 MiB reads: with 2 MiB, each write's plaintext and ciphertext no longer stay in the CPU caches
// between encryption and the socket copy; bench/http served 10 MiB ranges 10-20% faster with 1 MiB.
export const DEFAULT_CONSUME_OPTIONS: ConsumeOptions = { chunkSize: 1024 * 1024, firstChunkSize: 256 * 1024, readAhead: 4, maxRanges: 256 };

/** Inclusive byte positions, as HTTP writes them. */
export interface HttpRange {
  start: number;
  end: number;
}

export type RangeSelection = { kind: 'whole' } | { kind: 'ranges'; ranges: HttpRange[] };

function notSatisfiable(size: number, details: string): HttpError {
  return new HttpError(416, 'Range Not Satisfiable', details, { 'Content-Range': `bytes */${size}`, 'Accept-Ranges': 'bytes' });
}

/**
 * A suffix longer than the image means the whole image (RFC 9110 14.1.3); range-parser would
 * call it unsatisfiable.
 */
function clampSuffixes(rangeSet: string, size: number): string {
  return rangeSet.split(',').map((spec) => {
    const suffix = /^\s*-(\d+)\s*$/.exec(spec);
    return suffix !== null && Number(suffix[1]) > size ? `-${size}` : spec;
  }).join(',');
}

/** Which bytes a request asks for (the header's rules above). */
export function selectRanges(size: number, range: string | undefined, ifRange: string | undefined, maxRanges: number): RangeSelection {
  if (range === undefined || range === '' || (ifRange !== undefined && ifRange !== '')) return { kind: 'whole' };
  const equals = range.indexOf('=');
  const unit = (equals < 0 ? range : range.slice(0, equals)).trim().toLowerCase();
  if (unit !== 'bytes') return { kind: 'whole' };
  const parsed = rangeParser(size, `bytes=${clampSuffixes(range.slice(equals + 1), size)}`);
  if (parsed === -2) throw notSatisfiable(size, `malformed Range header ${JSON.stringify(range)}`);
  if (parsed === -1) throw notSatisfiable(size, `no range of ${JSON.stringify(range)} lies within the image of ${size} bytes`);
  if (parsed.length > maxRanges) throw notSatisfiable(size, `${parsed.length} ranges in one request; at most ${maxRanges} are served`);
  return { kind: 'ranges', ranges: parsed.map(({ start, end }) => ({ start, end })) };
}

/** What the body is made of: literal bytes (multipart framing) and image ranges to read. */
export type BodyPiece = Buffer | ByteRange;

export interface ResponseLayout {
  status: 200 | 206;
  headers: Record<string, string>;
  pieces: BodyPiece[];
}

const OCTET_STREAM = 'application/octet-stream';

export function layoutResponse(selection: RangeSelection, size: number): ResponseLayout {
  const base = { 'Accept-Ranges': 'bytes', 'Cache-Control': 'no-store' };
  if (selection.kind === 'whole') {
    return { status: 200, headers: { ...base, 'Content-Type': OCTET_STREAM, 'Content-Length': String(size) }, pieces: [{ offset: 0, length: size }] };
  }
  const { ranges } = selection;
  if (ranges.length === 1) {
    const { start, end } = ranges[0];
    return {
      status: 206,
      headers: { ...base, 'Content-Type': OCTET_STREAM, 'Content-Length': String(end - start + 1), 'Content-Range': `bytes ${start}-${end}/${size}` },
      pieces: [{ offset: start, length: end - start + 1 }],
    };
  }
  const boundary = crypto.randomBytes(12).toString('hex');
  const pieces: BodyPiece[] = [];
  ranges.forEach(({ start, end }, index) => {
    pieces.push(Buffer.from(`${index === 0 ? '' : '\r\n'}--${boundary}\r\nContent-Type: ${OCTET_STREAM}\r\nContent-Range: bytes ${start}-${end}/${size}\r\n\r\n`));
    pieces.push({ offset: start, length: end - start + 1 });
  });
  pieces.push(Buffer.from(`\r\n--${boundary}--\r\n`));
  const length = pieces.reduce((sum, piece) => sum + piece.length, 0);
  return {
    status: 206,
    headers: { ...base, 'Content-Type': `multipart/byteranges; boundary=${boundary}`, 'Content-Length': String(length) },
    pieces,
  };
}

const nextMultiple = (offset: number, size: number): number => (Math.floor(offset / size) + 1) * size;

/**
 * Splits image ranges into reads: the first up to a multiple of firstChunkSize, the rest at
 * multiples of chunkSize, so every read but a range's first starts aligned.
 */
function* chunked(pieces: BodyPiece[], options: ConsumeOptions): Generator<BodyPiece> {
  for (const piece of pieces) {
    if (Buffer.isBuffer(piece)) {
      yield piece;
      continue;
    }
    const end = piece.offset + piece.length;
    for (let offset = piece.offset; offset < end;) {
      const boundary = offset === piece.offset ? nextMultiple(offset, options.firstChunkSize) : nextMultiple(offset, options.chunkSize);
      const next = Math.min(end, boundary);
      yield { offset, length: next - offset };
      offset = next;
    }
  }
}

function readImage(reader: ImageReader, range: ByteRange): Promise<Buffer> {
  return reader.read(range.offset, range.length).catch((err: unknown) => {
    // The reader's own verdict (a snapshot that failed during the read: 409; a cancelled read) stands as it is.
    if (isAgentError(err)) throw err;
    const code = (err as { code?: unknown }).code;
    throw new AgentError('internal', `reading the snapshot image at offset ${range.offset} failed: ${typeof code === 'string' ? code : (err as Error).message}`, { cause: err });
  });
}

const ignoreRejection = (): void => {};

/**
 * Writes the pieces to `res` in order, reading at most `readAhead` chunks ahead of the socket;
 * `sent` is told the size of each buffer handed to the socket.
 */
export async function sendPieces(res: ServerResponse, reader: ImageReader, pieces: BodyPiece[], options: ConsumeOptions,
  sent: (bytes: number) => void): Promise<void> {
  const source = chunked(pieces, options);
  const ahead: Array<Promise<Buffer>> = [];
  const fill = (): void => {
    while (ahead.length < options.readAhead) {
      const next = source.next();
      if (next.done === true) return;
      const piece = next.value;
      const pending = Buffer.isBuffer(piece) ? Promise.resolve(piece) : readImage(reader, piece);
      // Awaited in order below; until then a failure must not count as unhandled.
      pending.catch(ignoreRejection);
      ahead.push(pending);
    }
  };
  try {
    for (fill(); ahead.length > 0; fill()) {
      const buffer = await ahead.shift()!;
      if (res.destroyed) throw clientGone();
      // Headers go out on their own once the first read succeeded: written together with a
      // buffer, TLS would copy that buffer into one contiguous block.
      if (!res.headersSent) res.flushHeaders();
      sent(buffer.length);
      // Once written, the chunk goes straight back to the reader's pool (see recycleReadBuffer).
      if (!res.write(buffer, () => recycleReadBuffer(buffer))) await drained(res);
    }
  } finally {
    // The reader may only close once no read is using it.
    await Promise.allSettled(ahead);
  }
  res.end();
}

export function consumeImage(service: AgentService, options: ConsumeOptions): RouterMiddleware {
  return async (ctx) => {
    const reader = throttle(await service.openImage(ctx.params.snapshotId, ctx.params.diskId), ctx.req.socket, options.limits);
    try {
      const selection = selectRanges(reader.size, ctx.get('Range'), ctx.get('If-Range'), options.maxRanges);
      const layout = layoutResponse(selection, reader.size);
      ctx.status = layout.status;
      ctx.set(layout.headers);
      if (ctx.method === 'HEAD') return;
      ctx.respond = false;
      await sendPieces(ctx.res, reader, layout.pieces, options, (bytes) => countServedBytes('http', ctx.params.diskId, bytes));
    } finally {
      await reader.close();
    }
  };
}
