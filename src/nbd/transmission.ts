// The NBD transmission phase: requests in, replies out, several in flight and answered in the
// order they complete (the protocol allows it). Every export is read-only.
//
// Read data goes from the image reader to the socket without a copy: in plaintext the reply
// header and the reader's buffer are written corked, as one writev; over TLS, one after the
// other, since Node's TLS would join a writev's buffers in a copy. A simple reply cannot report
// an error once its header is out, so the whole read completes before anything is sent;
// structured replies use the same path (one OFFSET_DATA chunk per read), which also honours
// "don't fragment" for free.
// Reads of adjacent ranges that arrive together (a sequential copy keeps dozens in flight) are
// read from the image as one, and each reply gets its slice: disks do better with fewer, larger
// requests.
//
// Memory is bounded per connection: requests stop being read while too many reads are in flight
// or too many reply bytes wait in the socket, and resume as the client takes its replies.
// A client is cut only when it stops taking its replies: progress is what the kernel accepted
// from the connection, measured below Node's stream (one 32 MiB reply is one write, however
// slowly it leaves), and never bytes still queued or the socket's own idle timer.
import type net from 'node:net';
import tls from 'node:tls';
import type { ImageReader } from '../core/image';
import type { Logger } from '../core/log';
import { countServedBytes } from '../metrics/metrics';
import { recycleReadBuffer } from '../native/reader';
import { AgentError, isAgentError } from '../core/errors';
import { throttle, type ReadLimits } from '../doors/limits';
import { nbdErrorOf } from './errors';
import { contextExtents } from './contexts';
import { closeGently, type Session } from './handshake';
import {
  Command, CommandFlag, decodeRequest, encodeBlockStatusChunk, encodeErrorChunk, encodeNoneChunk, encodeOffsetDataHeader,
  encodeSimpleReply, MAX_EXTENTS_PER_CHUNK, MAX_PAYLOAD, NbdError, ReplyFlag, REQUEST_LENGTH, REQUEST_MAGIC,
  type Request,
} from './wire';

/** Read bytes in progress or waiting in the socket before the connection stops taking requests. */
const MAX_PENDING_BYTES = 64 * 1024 * 1024;
const MAX_PENDING_REQUESTS = 128;
/** Adjacent reads are merged up to this size (larger requests stopped paying off on the disks measured). */
const MAX_MERGED_READ = 2 * 1024 * 1024;
/** Over TLS, replies up to this size are joined with their header into one record's worth. */
const SMALL_TLS_REPLY = 16 * 1024;
/** A client that takes none of its replies for this long has gone away without saying so. */
export const DEFAULT_STALL_TIMEOUT_MS = 60_000;
/** Progress is sampled this many times per stall timeout: a stall is cut within 1 + 1/n timeouts. */
const STALL_SAMPLES = 8;
/** After a shutdown, how long new requests still get ESHUTDOWN before the connection is closed. */
const SHUTDOWN_GRACE_MS = 1000;

export interface TransmissionSettings {
  log: Logger;
  /** Close a connection with no request in flight and no traffic for this long; 0 = never. */
  idleTimeoutMs: number;
  /** The agent's read-rate limits, if any. */
  limits?: ReadLimits | undefined;
  /** Close a connection whose replies wait and none of whose bytes the client took for this long. */
  stallTimeoutMs: number;
}

interface RequestError {
  error: number;
  message: string;
}

interface PendingRead {
  request: Request;
  /** Set once a reply went out early (ESHUTDOWN): the data is dropped when it arrives. */
  answered: boolean;
}

const WRITE_COMMANDS = new Set<number>([Command.WRITE, Command.TRIM, Command.WRITE_ZEROES]);
const SERVED_COMMANDS = new Set<number>([Command.READ, Command.CACHE, Command.BLOCK_STATUS]);

/** Why a request cannot be served, or null when it can. Checked before anything is dispatched. */
function checkRequest(request: Request, session: Session): RequestError | null {
  const { type, flags, offset, length } = request;
  if (WRITE_COMMANDS.has(type)) return { error: NbdError.EPERM, message: 'the export is read-only' };
  if (!SERVED_COMMANDS.has(type)) {
    const why = type === Command.FLUSH ? 'NBD_CMD_FLUSH is not offered on a read-only export' : `command ${type} is not supported`;
    return { error: NbdError.EINVAL, message: why };
  }
  const allowedFlags = type === Command.READ ? (session.structuredReplies ? CommandFlag.DF : 0)
    : type === Command.BLOCK_STATUS ? CommandFlag.REQ_ONE : 0;
  if ((flags & ~allowedFlags) !== 0) {
    return { error: NbdError.EINVAL, message: `command flags 0x${flags.toString(16)} are not valid for command ${type}` };
  }
  const size = session.export.sizeBytes;
  if (offset > size || length > size - offset) {
    return { error: NbdError.EINVAL, message: `range [${offset}, ${offset + length}) is past the end of the export (${size} bytes)` };
  }
  if (type === Command.READ && length > MAX_PAYLOAD) {
    return { error: NbdError.EINVAL, message: `a read of ${length} bytes exceeds the maximum payload of ${MAX_PAYLOAD}` };
  }
  if (session.blockSizeAgreed) {
    // The export's unaligned tail, if any, stays reachable: a request may end at the export's end.
    const { minimum } = session.blockSize;
    if (offset % minimum !== 0 || (length % minimum !== 0 && offset + length !== size)) {
      return { error: NbdError.EINVAL, message: `range [${offset}, ${offset + length}) is not aligned to the minimum block size ${minimum}` };
    }
  }
  if (type === Command.BLOCK_STATUS) {
    if (!session.structuredReplies) return { error: NbdError.EINVAL, message: 'block status needs structured replies' };
    if (session.contexts.length === 0) return { error: NbdError.EINVAL, message: 'no metadata context was selected' };
    if (length === 0) return { error: NbdError.EINVAL, message: 'block status of an empty range' };
  }
  return null;
}

/** The libuv stream under a socket: what it has been given, and what of it the kernel has not taken yet. */
interface StreamHandle {
  bytesWritten?: number;
  writeQueueSize?: number;
}

/**
 * Bytes of `socket` still on their way to the kernel, and how many the kernel has taken so far.
 * Node's stream reports a large write only once it is complete; its handle counts as it goes.
 */
function transportProgress(transport: net.Socket): { queued: number; taken: number } {
  const handle = (transport as unknown as { _handle?: StreamHandle | null })._handle;
  const queued = handle?.writeQueueSize ?? 0;
  return { queued, taken: (handle?.bytesWritten ?? 0) - queued };
}

/** A callback that runs `action` on its `count`th call. */
function afterAll(count: number, action: () => void): () => void {
  let remaining = count;
  return () => {
    if (--remaining === 0) action();
  };
}

export class Transmission {
  /** Resolves when the socket has closed; reads may still be running (closing the reader waits for them). */
  readonly done: Promise<void>;

  private readonly socket: net.Socket;
  private readonly encrypted: boolean;
  private readonly reader: ImageReader | null;
  private input: Buffer | null = null;
  /** Bytes of a refused write's payload still to skip. */
  private discarding = 0;
  private readonly pending = new Set<PendingRead>();
  private pendingBytes = 0;
  /** Adjacent reads of the current burst of requests, not yet started. */
  private run: PendingRead[] = [];
  private runBytes = 0;
  /** Requests are not being read because too much is in flight. */
  private held = false;
  /** No more requests are read: DISC, end of input or a framing error. */
  private stopped = false;
  private closed = false;
  private failure: string | null;
  private shutdownReason: string | null = null;
  private shutdownTimer: NodeJS.Timeout | null = null;
  private readonly idleTimer: NodeJS.Timeout | null;
  private readonly stallTimer: NodeJS.Timeout;
  /** What the kernel had taken and what waited when last sampled, and when the client last made progress (or nothing waited). */
  private lastTaken = 0;
  private lastUnsent = 0;
  private lastProgressAt = Date.now();
  private readsServed = 0;
  private bytesServed = 0;

  constructor(private readonly session: Session, private readonly settings: TransmissionSettings) {
    this.socket = session.socket;
    this.encrypted = session.socket instanceof tls.TLSSocket;
    // Node's TLS copies the buffers of a writev into one block before encrypting them. Without
    // _writev the stream hands its queued replies over one at a time, each encrypted in place.
    if (this.encrypted) this.socket._writev = undefined;
    this.reader = throttle(session.reader, this.socket, settings.limits);
    this.failure = session.export.failure;
    this.done = new Promise((resolve) => {
      this.socket.once('close', () => {
        this.closed = true;
        if (this.shutdownTimer !== null) clearTimeout(this.shutdownTimer);
        if (this.idleTimer !== null) clearTimeout(this.idleTimer);
        clearInterval(this.stallTimer);
        settings.log.info({ reads: this.readsServed, bytes: this.bytesServed }, 'NBD connection closed');
        resolve();
      });
    });
    this.socket.on('error', (err) => settings.log.debug({ err: err.message }, 'NBD socket error'));
    this.socket.on('data', this.onData);
    this.socket.on('end', () => this.stop('the client closed its side'));
    this.socket.on('drain', () => this.resumeIfRoom());
    this.stallTimer = setInterval(() => this.checkProgress(), Math.max(1, settings.stallTimeoutMs / STALL_SAMPLES));
    this.idleTimer = settings.idleTimeoutMs > 0 ? setTimeout(() => this.onIdle(), settings.idleTimeoutMs) : null;
    // The handshake read the socket in paused mode; bytes it did not consume are delivered now.
    this.socket.resume();
  }

  /** The export's snapshot failed: reads answer EIO from now on, block status goes on. */
  exportFailed(reason: string): void {
    this.failure = reason;
    this.settings.log.info({ reason }, 'export failed: reads now answer EIO');
  }

  /**
   * The export is going away (or the server is): requests waiting for data and any that arrive
   * in the next moment are answered ESHUTDOWN, then the connection is closed.
   */
  shutDown(reason: string): void {
    if (this.shutdownReason !== null || this.closed) return;
    this.shutdownReason = reason;
    this.settings.log.info({ reason }, 'shutting the NBD connection down');
    for (const entry of this.pending) {
      if (!entry.answered) {
        entry.answered = true;
        this.replyError(entry.request, NbdError.ESHUTDOWN, reason);
      }
    }
    this.shutdownTimer = setTimeout(() => this.stop(reason), SHUTDOWN_GRACE_MS);
  }

  private readonly onData = (chunk: Buffer): void => {
    if (this.stopped) return;
    this.idleTimer?.refresh();
    if (this.discarding > 0) {
      const skipped = Math.min(this.discarding, chunk.length);
      this.discarding -= skipped;
      if (skipped === chunk.length) return;
      chunk = chunk.subarray(skipped);
    }
    this.input = this.input === null ? chunk : Buffer.concat([this.input, chunk]);
    this.processInput();
  };

  private processInput(): void {
    const input = this.input;
    if (input === null) return;
    let at = 0;
    while (!this.stopped && input.length - at >= REQUEST_LENGTH) {
      const request = decodeRequest(input, at);
      if (request.magic !== REQUEST_MAGIC) {
        this.settings.log.info({ magic: request.magic.toString(16) }, 'bad NBD request magic: closing the connection');
        this.stop('bad request magic');
        break;
      }
      if (this.mustWait(request)) {
        this.held = true;
        this.socket.pause();
        break;
      }
      at += REQUEST_LENGTH;
      if (request.type === Command.WRITE) {
        const inHand = Math.min(request.length, input.length - at);
        at += inHand;
        this.discarding = request.length - inHand;
      }
      this.handle(request);
    }
    this.input = at >= input.length || this.stopped ? null : input.subarray(at);
    this.startRun();
  }

  private mustWait(request: Request): boolean {
    if (this.pending.size >= MAX_PENDING_REQUESTS) return true;
    const load = this.pendingBytes + this.socket.writableLength;
    const cost = request.type === Command.READ ? request.length : 0;
    // One request always goes when nothing is pending, however large it is.
    return load > 0 && load + cost > MAX_PENDING_BYTES;
  }

  private resumeIfRoom(): void {
    if (!this.held || this.stopped || this.closed) return;
    this.held = false;
    this.processInput();
    if (!this.held && !this.stopped) this.socket.resume();
  }

  private handle(request: Request): void {
    if (request.type === Command.DISC) {
      this.stop('the client disconnected (NBD_CMD_DISC)');
      return;
    }
    if (this.shutdownReason !== null) {
      this.replyError(request, NbdError.ESHUTDOWN, this.shutdownReason);
      return;
    }
    const refusal = checkRequest(request, this.session);
    if (refusal !== null) {
      this.settings.log.debug({ type: request.type, offset: request.offset, length: request.length, error: refusal.message }, 'NBD request refused');
      this.replyError(request, refusal.error, refusal.message);
      return;
    }
    switch (request.type) {
      case Command.READ:
        this.read(request);
        break;
      case Command.BLOCK_STATUS:
        this.blockStatus(request);
        break;
      case Command.CACHE:
        // A hint; the reader keeps no cache worth warming.
        this.replyDone(request);
        break;
    }
  }

  /** Accepts a read: it joins the run of adjacent reads, which starts at the end of the burst. */
  private read(request: Request): void {
    const entry: PendingRead = { request, answered: false };
    this.pending.add(entry);
    this.pendingBytes += request.length;
    const last = this.run.at(-1)?.request;
    const adjacent = last !== undefined && last.offset + last.length === request.offset;
    if (!adjacent || this.runBytes + request.length > MAX_MERGED_READ) this.startRun();
    this.run.push(entry);
    this.runBytes += request.length;
  }

  /** Reads the current run from the image at once and answers each request with its slice. */
  private startRun(): void {
    const run = this.run;
    if (run.length === 0) return;
    this.run = [];
    this.runBytes = 0;
    if (run.length === 1 || this.failure !== null || this.reader === null) {
      for (const entry of run) this.readAlone(entry);
      return;
    }
    const start = run[0].request.offset;
    const last = run.at(-1)!.request;
    this.reader.read(start, last.offset + last.length - start).then(
      (data) => {
        const written = afterAll(run.length, () => recycleReadBuffer(data));
        for (const entry of run) {
          const from = entry.request.offset - start;
          this.finishRead(entry, data.subarray(from, from + entry.request.length), null, written);
        }
      },
      // Each request on its own, so an error reaches exactly the requests whose bytes are bad.
      () => { for (const entry of run) this.readAlone(entry); },
    );
  }

  private readAlone(entry: PendingRead): void {
    const { request } = entry;
    let reading: Promise<Buffer>;
    if (this.failure !== null || this.reader === null) {
      reading = Promise.reject(this.snapshotFailure());
    } else {
      reading = request.length === 0 ? Promise.resolve(Buffer.alloc(0)) : this.reader.read(request.offset, request.length);
    }
    reading.then((data) => this.finishRead(entry, data, null, () => recycleReadBuffer(data)), (err: unknown) => this.finishRead(entry, null, err));
  }

  /** `written` runs once the data went to the socket; a read that is not sent leaves its buffer to the collector. */
  private finishRead(entry: PendingRead, data: Buffer | null, err: unknown, written?: () => void): void {
    this.pending.delete(entry);
    this.pendingBytes -= entry.request.length;
    this.idleTimer?.refresh();
    if (!entry.answered && !this.closed) {
      // Data read before the failure was noticed may already be the corrupted kind.
      if (data !== null && this.failure !== null) {
        data = null;
        err = this.snapshotFailure();
      }
      if (data !== null) {
        this.sendData(entry.request, data, written);
      } else {
        const { request } = entry;
        const message = (err as Error)?.message ?? String(err);
        if (this.failure === null && !isAgentError(err, 'cancelled')) this.settings.log.warn({ offset: request.offset, length: request.length, err: message }, 'NBD read failed');
        this.replyError(request, nbdErrorOf(err), message);
      }
    }
    if (this.stopped) this.closeWhenAnswered();
    else this.resumeIfRoom();
  }

  private snapshotFailure(): AgentError {
    return new AgentError('conflict', `the snapshot failed: ${this.failure ?? 'its image cannot be opened'}`, { code: 'EIO' });
  }

  private sendData(request: Request, data: Buffer, written?: () => void): void {
    if (!this.writable()) return;
    this.readsServed++;
    this.bytesServed += data.length;
    countServedBytes('nbd', this.session.export.trackedDiskId, data.length);
    const header = this.session.structuredReplies
      ? (data.length === 0 ? encodeNoneChunk(request.cookie) : encodeOffsetDataHeader(request.cookie, ReplyFlag.DONE, request.offset, data.length))
      : encodeSimpleReply(request.cookie, 0);
    if (data.length === 0) {
      this.socket.write(header);
    } else if (!this.encrypted) {
      this.socket.cork();
      this.socket.write(header);
      this.socket.write(data, written);
      this.socket.uncork();
    } else if (data.length <= SMALL_TLS_REPLY) {
      this.socket.write(Buffer.concat([header, data]), written);
    } else {
      // Two records, the header's tiny; the data goes to the cipher straight from the reader.
      this.socket.write(header);
      this.socket.write(data, written);
    }
  }

  private blockStatus(request: Request): void {
    if (!this.writable()) return;
    const { contexts } = this.session;
    const maxExtents = (request.flags & CommandFlag.REQ_ONE) !== 0 ? 1 : MAX_EXTENTS_PER_CHUNK;
    this.socket.write(Buffer.concat(contexts.map(({ id, context }, index) => {
      const extents = contextExtents(context, this.session.export, request.offset, request.length, maxExtents);
      const flags = index === contexts.length - 1 ? ReplyFlag.DONE : 0;
      return encodeBlockStatusChunk(request.cookie, flags, id, extents);
    })));
  }

  private replyDone(request: Request): void {
    if (!this.writable()) return;
    this.socket.write(this.session.structuredReplies ? encodeNoneChunk(request.cookie) : encodeSimpleReply(request.cookie, 0));
  }

  private replyError(request: Request, error: number, message: string): void {
    if (!this.writable()) return;
    this.socket.write(this.session.structuredReplies ? encodeErrorChunk(request.cookie, error, message) : encodeSimpleReply(request.cookie, error));
  }

  private writable(): boolean {
    return !this.closed && !this.socket.destroyed && !this.socket.writableEnded;
  }

  /** Reads no more requests; the connection closes once every pending request is answered. */
  private stop(reason: string): void {
    if (!this.stopped) this.settings.log.debug({ reason }, 'NBD connection stops taking requests');
    this.stopped = true;
    this.input = null;
    this.socket.off('data', this.onData);
    this.socket.pause();
    this.closeWhenAnswered();
  }

  private closeWhenAnswered(): void {
    for (const entry of this.pending) if (!entry.answered) return;
    closeGently(this.socket);
  }

  /** Replies waiting while the kernel took nothing for the stall timeout: the client has gone. */
  private checkProgress(): void {
    const now = Date.now();
    const { queued, taken } = transportProgress(this.session.transport);
    const unsent = this.socket.writableLength + queued;
    // Less unsent is progress too, should the handle ever stop counting.
    const progressed = taken !== this.lastTaken || unsent < this.lastUnsent;
    this.lastUnsent = unsent;
    if (unsent === 0 || progressed) {
      this.lastTaken = taken;
      this.lastProgressAt = now;
      return;
    }
    if (now - this.lastProgressAt < this.settings.stallTimeoutMs) return;
    this.settings.log.info({ unsent, stallTimeoutMs: this.settings.stallTimeoutMs }, 'NBD client stopped taking its replies: closing the connection');
    this.socket.destroy();
  }

  private onIdle(): void {
    if (this.pending.size > 0) {
      this.idleTimer?.refresh();
      return;
    }
    this.settings.log.info({ idleTimeoutMs: this.settings.idleTimeoutMs }, 'NBD connection idle: closing it');
    this.stop('idle');
  }
}
