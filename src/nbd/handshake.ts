// The NBD handshake: fixed newstyle negotiation from the greeting to the transmission phase.
//
// With TLS required (FORCEDTLS in the protocol's terms) every option but STARTTLS and ABORT is
// refused with NBD_REP_ERR_TLS_REQD until the upgrade, and NBD_OPT_EXPORT_NAME, which cannot be
// refused, closes the connection. Anything that breaks the framing (a wrong magic, unknown
// client flags, an option too long to be real) closes the connection too: there is no way to
// find the next message in such a stream.
//
// After STARTTLS the client's certificate meets the allow-list; a client it refuses gets
// NBD_REP_ERR_POLICY to every option (never an export name, never data) until it leaves or the
// handshake deadline closes it. A client not admitted yet (before TLS, or refused) that keeps
// sending options is closed after a few, and any client that sends options without reading the
// replies is closed once too many are unread: nothing a client sends grows the server's memory.
import type net from 'node:net';
import { setImmediate as nextTurn } from 'node:timers/promises';
import type tls from 'node:tls';
import { clientIdentity, notAllowedMessage, type ClientAllowList } from '../doors/allow-list';
import type { ImageReader } from '../core/image';
import type { Export, ExportSource } from '../exports/types';
import type { Logger } from '../core/log';
import { listContexts, selectContexts, type MetaContext } from './contexts';
import type { TlsMaterial } from '../doors/tls';
import { upgradeToTls } from './tls';
import {
  ClientFlag, CLIENT_FLAGS_LENGTH, decodeExportName, decodeInfoRequest, decodeMetaContextRequest, decodeOptionHeader,
  encodeExportNameReply, encodeGreeting, encodeInfoBlockSize, encodeInfoExport, encodeInfoString, encodeMetaContextReply,
  encodeOptionError, encodeOptionReply, encodeServerReply, Info, MalformedOption, MAX_MINIMUM_BLOCK_SIZE,
  MAX_OPTION_LENGTH, MAX_PAYLOAD, MIN_PREFERRED_BLOCK_SIZE, Option, OPTION_HEADER_LENGTH, OPTION_MAGIC, OptionReply,
  TransmissionFlag, type BlockSizeConstraints,
} from './wire';
import { isFailedSnapshot } from './errors';

/** Minimum block size announced for a failed export, whose image cannot be opened to ask. */
const FALLBACK_LOGICAL_BLOCK_SIZE = 512;
/** How long a closed-by-us socket may take to say goodbye before it is destroyed. */
const CLOSE_GRACE_MS = 2000;
/** Option replies a client may leave unread when it sends its next option: a client that reads its replies has none. */
export const MAX_UNREAD_OPTION_REPLIES = 64 * 1024;
/** Options answered before the client is admitted; an honest one starts TLS at once, or gives up. */
export const MAX_OPTIONS_BEFORE_ADMISSION = 16;

export interface SelectedContext {
  /** The id the client was given in NBD_REP_META_CONTEXT. */
  id: number;
  context: MetaContext;
}

/** What the handshake agreed on, handed to the transmission phase. */
export interface Session {
  /** The TLS socket after STARTTLS, else the accepted one. */
  socket: net.Socket;
  /** The accepted socket, which carries `socket`'s encrypted bytes under TLS. */
  transport: net.Socket;
  export: Export;
  /** null when the export's snapshot has failed: reads answer EIO, block status still works. */
  reader: ImageReader | null;
  transmissionFlags: number;
  structuredReplies: boolean;
  contexts: SelectedContext[];
  blockSize: BlockSizeConstraints;
  /** The client asked for NBD_INFO_BLOCK_SIZE with NBD_OPT_GO, so it promised to honour it. */
  blockSizeAgreed: boolean;
  tls: boolean;
}

export interface HandshakeSettings {
  registry: ExportSource;
  log: Logger;
  /** null when TLS is off (loopback and Unix sockets only). */
  tls: TlsMaterial | null;
  /** Checked once TLS is up; it restricts nothing when TLS is off (the server refuses that pairing). */
  allowList: ClientAllowList;
}

class ConnectionClosed extends Error {
  constructor(message = 'the client closed the connection') {
    super(message);
    this.name = 'ConnectionClosed';
  }
}

/** A break of the protocol that leaves no way to answer: the connection is closed. */
class ProtocolViolation extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ProtocolViolation';
  }
}

/** Exactly `length` bytes from a paused socket; rejects with ConnectionClosed if it ends first. */
function readExactly(socket: net.Socket, length: number): Promise<Buffer> {
  if (length === 0) return Promise.resolve(Buffer.alloc(0));
  return new Promise((resolve, reject) => {
    const finish = (err: Error | null, chunk?: Buffer): void => {
      socket.off('readable', attempt);
      socket.off('end', onEnd);
      socket.off('close', onEnd);
      socket.off('error', onError);
      if (err !== null) reject(err);
      else resolve(chunk!);
    };
    const attempt = (): void => {
      const chunk = socket.read(length) as Buffer | null;
      if (chunk !== null && chunk.length === length) finish(null, chunk);
      else if (chunk !== null || socket.readableEnded || socket.destroyed) finish(new ConnectionClosed());
    };
    const onEnd = (): void => finish(new ConnectionClosed());
    const onError = (err: Error): void => finish(new ConnectionClosed(`the connection failed: ${err.message}`));
    socket.on('readable', attempt);
    socket.on('end', onEnd);
    socket.on('close', onEnd);
    socket.on('error', onError);
    attempt();
  });
}

/**
 * Ends the socket (a TLS close_notify, then FIN) and destroys it if the peer lingers. What the
 * peer still sends is read and dropped: a paused socket never sees the peer's FIN, and would
 * stay open, uncounted by the event loop, until the grace timer.
 */
export function closeGently(socket: net.Socket): void {
  if (socket.destroyed || socket.writableEnded) return;
  socket.resume();
  socket.end();
  setTimeout(() => socket.destroy(), CLOSE_GRACE_MS).unref();
}

function transmissionFlags(structuredReplies: boolean): number {
  // Reads are never fragmented, so "don't fragment" costs nothing once structured replies are on.
  const base = TransmissionFlag.HAS_FLAGS | TransmissionFlag.READ_ONLY | TransmissionFlag.SEND_CACHE |
    TransmissionFlag.CAN_MULTI_CONN;
  return structuredReplies ? base | TransmissionFlag.SEND_DF : base;
}

function blockSizeConstraints(logicalBlockSize: number): BlockSizeConstraints {
  const minimum = Math.min(logicalBlockSize, MAX_MINIMUM_BLOCK_SIZE);
  return { minimum, preferred: Math.max(MIN_PREFERRED_BLOCK_SIZE, minimum), maximum: MAX_PAYLOAD };
}

/**
 * Runs the handshake on an accepted socket: a Session, or null once the connection is closed.
 * Aborting `signal` (a timeout, the server closing) destroys the connection.
 */
export function negotiate(socket: net.Socket, settings: HandshakeSettings, signal: AbortSignal): Promise<Session | null> {
  return new Negotiation(socket, settings, signal).run();
}

type Step = 'continue' | 'abort' | Session;

interface OpenedExport {
  exported: Export;
  reader: ImageReader | null;
}

class Negotiation {
  private tlsActive = false;
  private structuredReplies = false;
  private noZeroes = false;
  private metaSelection: { exportName: string; contexts: MetaContext[] } | null = null;
  /** Set when the allow-list refused the client's certificate: what every option is answered. */
  private refusal: string | null = null;
  private optionsBeforeAdmission = 0;
  private readonly transport: net.Socket;
  private readonly logSocketError = (err: Error): void => this.settings.log.debug({ err: err.message }, 'socket error during handshake');

  constructor(private socket: net.Socket, private readonly settings: HandshakeSettings, private readonly signal: AbortSignal) {
    this.transport = socket;
    socket.on('error', this.logSocketError);
  }

  async run(): Promise<Session | null> {
    const { log } = this.settings;
    const raw = this.socket;
    const abort = (): void => {
      log.info({ reason: String(this.signal.reason) }, 'NBD handshake aborted');
      this.socket.destroy();
      raw.destroy();
    };
    if (this.signal.aborted) abort();
    else this.signal.addEventListener('abort', abort, { once: true });
    let session: Session | null = null;
    try {
      session = await this.negotiate();
      if (session !== null && (this.signal.aborted || session.socket.destroyed)) {
        const late = session;
        session = null;
        await late.reader?.close();
        throw new ConnectionClosed('the connection was closed as the handshake ended');
      }
      return session;
    } catch (err) {
      if (err instanceof ProtocolViolation) log.info({ reason: err.message }, 'NBD handshake refused: closing the connection');
      else if (err instanceof ConnectionClosed) log.debug({ reason: err.message }, 'client left during the handshake');
      else log.info({ err: (err as Error).message }, 'NBD handshake failed');
      return null;
    } finally {
      this.signal.removeEventListener('abort', abort);
      this.socket.off('error', this.logSocketError);
      if (session === null) {
        this.socket.on('error', () => { /* the socket is being closed */ });
        closeGently(this.socket);
      }
    }
  }

  private async negotiate(): Promise<Session | null> {
    this.socket.write(encodeGreeting());
    const clientFlags = (await readExactly(this.socket, CLIENT_FLAGS_LENGTH)).readUInt32BE(0);
    const known = ClientFlag.FIXED_NEWSTYLE | ClientFlag.NO_ZEROES;
    if ((clientFlags & ~known) !== 0) throw new ProtocolViolation(`unknown client flags 0x${clientFlags.toString(16)}`);
    if ((clientFlags & ClientFlag.FIXED_NEWSTYLE) === 0) {
      throw new ProtocolViolation('the client does not speak fixed newstyle negotiation');
    }
    this.noZeroes = (clientFlags & ClientFlag.NO_ZEROES) !== 0;

    for (;;) {
      if (this.socket.writableLength > MAX_UNREAD_OPTION_REPLIES) {
        throw new ProtocolViolation(`the client sends options without reading the replies (${this.socket.writableLength} bytes unread)`);
      }
      // Options already buffered would otherwise be answered back to back, starving every other connection.
      await nextTurn();
      const header = decodeOptionHeader(await readExactly(this.socket, OPTION_HEADER_LENGTH));
      if (header.magic !== OPTION_MAGIC) throw new ProtocolViolation(`bad option magic 0x${header.magic.toString(16)}`);
      if (header.length > MAX_OPTION_LENGTH) {
        throw new ProtocolViolation(`option ${header.option} claims ${header.length} bytes of data (at most ${MAX_OPTION_LENGTH})`);
      }
      const data = await readExactly(this.socket, header.length);
      this.settings.log.debug({ option: header.option, length: header.length }, 'NBD option');
      const step = await this.dispatch(header.option, data);
      if (step === 'abort') return null;
      if (step !== 'continue') return step;
    }
  }

  /** Past the allow-list, or no TLS to pass: a client is then free to haggle as it likes. */
  private get admitted(): boolean {
    return (this.settings.tls === null || this.tlsActive) && this.refusal === null;
  }

  private async dispatch(option: number, data: Buffer): Promise<Step> {
    if (!this.admitted && ++this.optionsBeforeAdmission > MAX_OPTIONS_BEFORE_ADMISSION) {
      throw new ProtocolViolation(`${MAX_OPTIONS_BEFORE_ADMISSION} options before the client was admitted: ${this.refusal ?? 'TLS is required'}`);
    }
    try {
      if (this.settings.tls !== null && !this.tlsActive) return await this.dispatchBeforeTls(option, data);
      if (this.refusal !== null) return this.dispatchRefused(option, this.refusal);
      switch (option) {
        case Option.EXPORT_NAME: return await this.exportName(data);
        case Option.ABORT: return this.abort();
        case Option.LIST: return this.list(data);
        case Option.STARTTLS: return await this.startTls(data);
        case Option.INFO: return await this.infoOrGo(option, data);
        case Option.GO: return await this.infoOrGo(option, data);
        case Option.STRUCTURED_REPLY: return this.structuredReply(data);
        case Option.LIST_META_CONTEXT: return this.listMetaContext(data);
        case Option.SET_META_CONTEXT: return this.setMetaContext(data);
        default:
          this.reply(option, OptionReply.ERR_UNSUP, `option ${option} is not supported`);
          return 'continue';
      }
    } catch (err) {
      if (!(err instanceof MalformedOption)) throw err;
      if (option === Option.EXPORT_NAME) throw new ProtocolViolation(`NBD_OPT_EXPORT_NAME: ${err.message}`);
      this.reply(option, OptionReply.ERR_INVALID, err.message);
      return 'continue';
    }
  }

  private async dispatchBeforeTls(option: number, data: Buffer): Promise<Step> {
    switch (option) {
      case Option.STARTTLS: return this.startTls(data);
      case Option.ABORT: return this.abort();
      case Option.EXPORT_NAME: throw new ProtocolViolation('NBD_OPT_EXPORT_NAME before STARTTLS, and TLS is required');
      default:
        this.reply(option, OptionReply.ERR_TLS_REQD, 'TLS is required: send NBD_OPT_STARTTLS first');
        return 'continue';
    }
  }

  private dispatchRefused(option: number, refusal: string): Step {
    switch (option) {
      case Option.ABORT: return this.abort();
      case Option.EXPORT_NAME: throw new ProtocolViolation(`NBD_OPT_EXPORT_NAME: ${refusal}`);
      default:
        this.reply(option, OptionReply.ERR_POLICY, refusal);
        return 'continue';
    }
  }

  private reply(option: number, replyType: number, message?: string): void {
    this.socket.write(message === undefined ? encodeOptionReply(option, replyType) : encodeOptionError(option, replyType, message));
  }

  private abort(): Step {
    this.reply(Option.ABORT, OptionReply.ACK);
    return 'abort';
  }

  private async startTls(data: Buffer): Promise<Step> {
    const { tls: material, log } = this.settings;
    if (data.length !== 0) throw new MalformedOption('NBD_OPT_STARTTLS takes no data');
    if (material === null) {
      this.reply(Option.STARTTLS, OptionReply.ERR_POLICY, 'TLS is turned off on this server');
      return 'continue';
    }
    if (this.tlsActive) {
      this.reply(Option.STARTTLS, OptionReply.ERR_INVALID, 'TLS is already active');
      return 'continue';
    }
    // TLS bytes must start right after our reply; anything the client sent earlier is not TLS.
    if (this.socket.readableLength > 0) throw new ProtocolViolation('data sent after NBD_OPT_STARTTLS before its reply');
    this.reply(Option.STARTTLS, OptionReply.ACK);
    const raw = this.socket;
    raw.off('error', this.logSocketError);
    // upgradeToTls destroys the raw socket when it fails; errors are reported through its promise.
    raw.on('error', () => { /* reported by the TLS socket */ });
    try {
      this.socket = await upgradeToTls(raw, material);
    } catch (err) {
      throw new ProtocolViolation((err as Error).message);
    }
    this.socket.on('error', this.logSocketError);
    this.tlsActive = true;
    // The protocol voids everything negotiated in plaintext.
    this.structuredReplies = false;
    this.metaSelection = null;
    const identity = clientIdentity(this.socket);
    if (!this.settings.allowList.admits(identity)) {
      this.refusal = notAllowedMessage(identity);
      log.warn({ client: identity }, 'NBD client certificate not in allowed_clients: refused');
      return 'continue';
    }
    log.debug({ client: identity?.subject, protocol: (this.socket as tls.TLSSocket).getProtocol() }, 'TLS established');
    return 'continue';
  }

  private list(data: Buffer): Step {
    if (data.length !== 0) throw new MalformedOption('NBD_OPT_LIST takes no data');
    for (const exported of this.settings.registry.list()) {
      this.socket.write(encodeOptionReply(Option.LIST, OptionReply.SERVER, encodeServerReply(exported.name, describe(exported))));
    }
    this.reply(Option.LIST, OptionReply.ACK);
    return 'continue';
  }

  private structuredReply(data: Buffer): Step {
    if (data.length !== 0) throw new MalformedOption('NBD_OPT_STRUCTURED_REPLY takes no data');
    this.structuredReplies = true;
    this.reply(Option.STRUCTURED_REPLY, OptionReply.ACK);
    return 'continue';
  }

  private listMetaContext(data: Buffer): Step {
    const request = decodeMetaContextRequest(data);
    const exported = this.settings.registry.get(request.name);
    if (exported === undefined) {
      this.reply(Option.LIST_META_CONTEXT, OptionReply.ERR_UNKNOWN, unknownExportMessage(request.name));
      return 'continue';
    }
    for (const context of listContexts(exported, request.queries)) {
      // The protocol reserves the id in list replies: zero.
      this.socket.write(encodeOptionReply(Option.LIST_META_CONTEXT, OptionReply.META_CONTEXT, encodeMetaContextReply(0, context.name)));
    }
    this.reply(Option.LIST_META_CONTEXT, OptionReply.ACK);
    return 'continue';
  }

  private setMetaContext(data: Buffer): Step {
    // A SET replaces the selection even when it fails.
    this.metaSelection = null;
    const request = decodeMetaContextRequest(data);
    if (!this.structuredReplies) throw new MalformedOption('negotiate NBD_OPT_STRUCTURED_REPLY before NBD_OPT_SET_META_CONTEXT');
    const exported = this.settings.registry.get(request.name);
    if (exported === undefined) {
      this.reply(Option.SET_META_CONTEXT, OptionReply.ERR_UNKNOWN, unknownExportMessage(request.name));
      return 'continue';
    }
    const contexts = selectContexts(exported, request.queries);
    contexts.forEach((context, index) => {
      this.socket.write(encodeOptionReply(Option.SET_META_CONTEXT, OptionReply.META_CONTEXT, encodeMetaContextReply(index + 1, context.name)));
    });
    this.metaSelection = { exportName: exported.name, contexts };
    this.reply(Option.SET_META_CONTEXT, OptionReply.ACK);
    return 'continue';
  }

  private async infoOrGo(option: typeof Option.INFO | typeof Option.GO, data: Buffer): Promise<Step> {
    const request = decodeInfoRequest(data);
    const opened = await this.open(request.name);
    if (opened === null) {
      this.reply(option, OptionReply.ERR_UNKNOWN, unknownExportMessage(request.name));
      return 'continue';
    }
    const { exported, reader } = opened;
    const flags = transmissionFlags(this.structuredReplies);
    const blockSize = blockSizeConstraints(reader?.logicalBlockSize ?? FALLBACK_LOGICAL_BLOCK_SIZE);
    if (option === Option.INFO) await reader?.close();

    const info = (payload: Buffer): void => {
      this.socket.write(encodeOptionReply(option, OptionReply.INFO, payload));
    };
    info(encodeInfoExport(exported.sizeBytes, flags));
    if (request.requests.includes(Info.NAME)) info(encodeInfoString(Info.NAME, exported.name));
    if (request.requests.includes(Info.DESCRIPTION)) info(encodeInfoString(Info.DESCRIPTION, describe(exported)));
    const blockSizeAgreed = request.requests.includes(Info.BLOCK_SIZE);
    if (blockSizeAgreed) info(encodeInfoBlockSize(blockSize));
    this.reply(option, OptionReply.ACK);
    if (option === Option.INFO) return 'continue';
    return this.session(exported, reader, flags, blockSize, blockSizeAgreed);
  }

  private async exportName(data: Buffer): Promise<Step> {
    const name = decodeExportName(data);
    const opened = await this.open(name);
    if (opened === null) throw new ProtocolViolation(`NBD_OPT_EXPORT_NAME: ${unknownExportMessage(name)}`);
    const flags = transmissionFlags(this.structuredReplies);
    const blockSize = blockSizeConstraints(opened.reader?.logicalBlockSize ?? FALLBACK_LOGICAL_BLOCK_SIZE);
    this.socket.write(encodeExportNameReply(opened.exported.sizeBytes, flags, this.noZeroes));
    return this.session(opened.exported, opened.reader, flags, blockSize, false);
  }

  private session(exported: Export, reader: ImageReader | null, flags: number, blockSize: BlockSizeConstraints,
    blockSizeAgreed: boolean): Session {
    const selection = this.metaSelection?.exportName === exported.name ? this.metaSelection.contexts : [];
    return {
      socket: this.socket,
      transport: this.transport,
      export: exported,
      reader,
      transmissionFlags: flags,
      structuredReplies: this.structuredReplies,
      contexts: selection.map((context, index) => ({ id: index + 1, context })),
      blockSize,
      blockSizeAgreed,
      tls: this.tlsActive,
    };
  }

  /**
   * The export and a reader of its image; null when there is no such export (or it went away
   * while opening). A failed export opens without a reader.
   */
  private async open(name: string): Promise<OpenedExport | null> {
    const { registry, log } = this.settings;
    if (registry.get(name) === undefined) return null;
    let reader: ImageReader | null = null;
    try {
      reader = await registry.open(name);
    } catch (err) {
      if (!isFailedSnapshot(err)) {
        log.warn({ export: name, err: (err as Error).message }, 'cannot open the export');
        return null;
      }
    }
    const exported = registry.get(name);
    if (exported === undefined) {
      await reader?.close();
      return null;
    }
    return { exported, reader };
  }
}

function describe(exported: Export): string {
  return exported.failure === null ? exported.description : `${exported.description} (FAILED: ${exported.failure})`;
}

function unknownExportMessage(name: string): string {
  return name === '' ? 'there is no default export: name one (NBD_OPT_LIST lists them)' : `no export named ${JSON.stringify(name)}`;
}
