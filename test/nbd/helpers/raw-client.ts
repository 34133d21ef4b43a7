// A byte-level NBD client for the tests: it sends exactly what a test says, well-formed or not,
// and decodes the server's replies without trying to make sense of them.
import net from 'node:net';
import tls from 'node:tls';
import type { TestCerts } from '../../helpers/certs';
import fs from 'node:fs';
import {
  ClientFlag, isOptionError, NBD_MAGIC, Option, OPTION_MAGIC, OPTION_REPLY_MAGIC, OptionReply, REQUEST_MAGIC,
  SIMPLE_REPLY_MAGIC, STRUCTURED_REPLY_MAGIC, ReplyFlag,
} from '../../../src/nbd/wire';

export interface OptionReplyMessage {
  option: number;
  type: number;
  data: Buffer;
}

export interface StructuredChunk {
  flags: number;
  type: number;
  cookie: bigint;
  payload: Buffer;
}

export interface SimpleReply {
  error: number;
  cookie: bigint;
}

export interface RequestSpec {
  type: number;
  flags?: number;
  cookie?: bigint;
  offset?: number | bigint;
  length?: number;
  /** Bytes sent after the header (a write's payload). */
  payload?: Buffer;
}

export class RawClient {
  /** Received and not yet read, in arrival order (a list: concatenating on every chunk is quadratic). */
  private chunks: Buffer[] = [];
  private bufferedLength = 0;
  private wake: (() => void) | null = null;
  private ended = false;

  private constructor(public socket: net.Socket) {
    this.attach(socket);
  }

  static connect(target: number | string): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const socket = typeof target === 'number' ? net.connect(target, '127.0.0.1') : net.connect(target);
      socket.once('connect', () => {
        socket.off('error', reject);
        resolve(new RawClient(socket));
      });
      socket.once('error', reject);
    });
  }

  private attach(socket: net.Socket): void {
    socket.on('data', this.onData);
    socket.on('end', this.onEnd);
    socket.on('close', this.onEnd);
    socket.on('error', this.onEnd);
  }

  private detach(socket: net.Socket): void {
    socket.off('data', this.onData);
    socket.off('end', this.onEnd);
    socket.off('close', this.onEnd);
    socket.off('error', this.onEnd);
  }

  private readonly onData = (chunk: Buffer): void => {
    this.chunks.push(chunk);
    this.bufferedLength += chunk.length;
    this.wake?.();
  };

  private take(length: number): Buffer {
    const joined = this.chunks.length === 1 ? this.chunks[0] : Buffer.concat(this.chunks);
    const rest = joined.subarray(length);
    this.chunks = rest.length > 0 ? [rest] : [];
    this.bufferedLength = rest.length;
    return joined.subarray(0, length);
  }

  private readonly onEnd = (): void => {
    this.ended = true;
    this.wake?.();
  };

  /** Exactly `length` bytes; rejects if the server closes first. */
  async read(length: number): Promise<Buffer> {
    while (this.bufferedLength < length) {
      if (this.ended) throw new Error(`the server closed the connection (${this.bufferedLength} of ${length} bytes read)`);
      await new Promise<void>((resolve) => { this.wake = resolve; });
      this.wake = null;
    }
    return this.take(length);
  }

  /** Resolves with the bytes received until the server closed the connection. */
  async untilClosed(): Promise<Buffer> {
    while (!this.ended) {
      await new Promise<void>((resolve) => { this.wake = resolve; });
      this.wake = null;
    }
    return this.take(this.bufferedLength);
  }

  get isClosed(): boolean {
    return this.ended;
  }

  write(data: Buffer): void {
    this.socket.write(data);
  }

  /** From now on takes what arrives at `bytesPerSecond` at most, steadily, as a slow consumer does. */
  throttle(bytesPerSecond: number): void {
    const socket = this.socket;
    const started = Date.now();
    let taken = 0;
    socket.on('data', (chunk: Buffer) => {
      taken += chunk.length;
      const wait = started + (taken / bytesPerSecond) * 1000 - Date.now();
      if (wait <= 0) return;
      socket.pause();
      setTimeout(() => socket.resume(), wait);
    });
  }

  /** Takes nothing more of what arrives, as a consumer that hung does. */
  stopReading(): void {
    this.socket.pause();
  }

  destroy(): void {
    this.socket.destroy();
  }

  /** Reads the greeting and checks it is fixed newstyle; returns the handshake flags. */
  async readGreeting(): Promise<{ magic: bigint; optionMagic: bigint; flags: number }> {
    const greeting = await this.read(18);
    return { magic: greeting.readBigUInt64BE(0), optionMagic: greeting.readBigUInt64BE(8), flags: greeting.readUInt16BE(16) };
  }

  sendClientFlags(flags: number = ClientFlag.FIXED_NEWSTYLE | ClientFlag.NO_ZEROES): void {
    const buffer = Buffer.alloc(4);
    buffer.writeUInt32BE(flags >>> 0, 0);
    this.write(buffer);
  }

  /** Greeting read and flags sent: ready for options. */
  async start(flags?: number): Promise<void> {
    const greeting = await this.readGreeting();
    if (greeting.magic !== NBD_MAGIC || greeting.optionMagic !== OPTION_MAGIC) throw new Error('not a newstyle server');
    this.sendClientFlags(flags);
  }

  sendOption(option: number, data: Buffer = Buffer.alloc(0), options: { length?: number; magic?: bigint } = {}): void {
    const header = Buffer.alloc(16);
    header.writeBigUInt64BE(options.magic ?? OPTION_MAGIC, 0);
    header.writeUInt32BE(option >>> 0, 8);
    header.writeUInt32BE(options.length ?? data.length, 12);
    this.write(Buffer.concat([header, data]));
  }

  async readOptionReply(): Promise<OptionReplyMessage> {
    const header = await this.read(20);
    if (header.readBigUInt64BE(0) !== OPTION_REPLY_MAGIC) throw new Error(`bad option reply magic ${header.toString('hex')}`);
    const length = header.readUInt32BE(16);
    return { option: header.readUInt32BE(8), type: header.readUInt32BE(12), data: await this.read(length) };
  }

  /** Sends an option and reads its replies up to the final one (ACK or an error). */
  async option(option: number, data: Buffer = Buffer.alloc(0)): Promise<OptionReplyMessage[]> {
    this.sendOption(option, data);
    const replies: OptionReplyMessage[] = [];
    for (;;) {
      const reply = await this.readOptionReply();
      replies.push(reply);
      if (reply.type === OptionReply.ACK || isOptionError(reply.type)) return replies;
    }
  }

  /** NBD_OPT_STARTTLS and the TLS handshake with the given client identity. */
  async startTls(certs: TestCerts, identity: { cert?: string; key?: string; ca?: string } = {}): Promise<void> {
    const [reply] = await this.option(Option.STARTTLS);
    if (reply.type !== OptionReply.ACK) throw new Error(`STARTTLS refused: ${reply.type}`);
    await this.upgrade(certs, identity);
  }

  /** The client side of the TLS handshake, right now. */
  upgrade(certs: TestCerts, identity: { cert?: string; key?: string; ca?: string } = {}): Promise<void> {
    const raw = this.socket;
    this.detach(raw);
    const secure = tls.connect({
      socket: raw,
      servername: 'localhost',
      ca: fs.readFileSync(identity.ca ?? certs.caCert),
      cert: identity.cert === '' ? undefined : fs.readFileSync(identity.cert ?? certs.clientCert),
      key: identity.key === '' ? undefined : fs.readFileSync(identity.key ?? certs.clientKey),
    });
    this.socket = secure;
    this.attach(secure);
    return new Promise((resolve, reject) => {
      secure.once('secureConnect', () => resolve());
      secure.once('error', reject);
      secure.once('close', () => reject(new Error('closed during the TLS handshake')));
    });
  }

  sendRequest(spec: RequestSpec): void {
    this.write(encodeRequest(spec));
  }

  /** Several requests in one write, so the server sees them as one burst. */
  sendRequests(specs: RequestSpec[]): void {
    this.write(Buffer.concat(specs.map(encodeRequest)));
  }

  async readSimpleReply(): Promise<SimpleReply> {
    const header = await this.read(16);
    if (header.readUInt32BE(0) !== SIMPLE_REPLY_MAGIC) throw new Error(`not a simple reply: ${header.toString('hex')}`);
    return { error: header.readUInt32BE(4), cookie: header.readBigUInt64BE(8) };
  }

  async readChunk(): Promise<StructuredChunk> {
    const header = await this.read(20);
    if (header.readUInt32BE(0) !== STRUCTURED_REPLY_MAGIC) throw new Error(`not a structured reply: ${header.toString('hex')}`);
    return {
      flags: header.readUInt16BE(4),
      type: header.readUInt16BE(6),
      cookie: header.readBigUInt64BE(8),
      payload: await this.read(header.readUInt32BE(16)),
    };
  }

  /** Chunks of one structured reply, up to the one flagged DONE. */
  async readStructuredReply(): Promise<StructuredChunk[]> {
    const chunks: StructuredChunk[] = [];
    for (;;) {
      const chunk = await this.readChunk();
      chunks.push(chunk);
      if ((chunk.flags & ReplyFlag.DONE) !== 0) return chunks;
    }
  }
}

export function encodeRequest(spec: RequestSpec): Buffer {
  const header = Buffer.alloc(28);
  header.writeUInt32BE(REQUEST_MAGIC, 0);
  header.writeUInt16BE(spec.flags ?? 0, 4);
  header.writeUInt16BE(spec.type, 6);
  header.writeBigUInt64BE(spec.cookie ?? 1n, 8);
  header.writeBigUInt64BE(BigInt(spec.offset ?? 0), 16);
  header.writeUInt32BE(spec.length ?? 0, 24);
  return spec.payload === undefined ? header : Buffer.concat([header, spec.payload]);
}

export function encodeInfoRequest(name: string, infos: number[] = []): Buffer {
  const nameBytes = Buffer.from(name, 'utf8');
  const data = Buffer.alloc(4 + nameBytes.length + 2 + 2 * infos.length);
  data.writeUInt32BE(nameBytes.length, 0);
  nameBytes.copy(data, 4);
  data.writeUInt16BE(infos.length, 4 + nameBytes.length);
  infos.forEach((info, i) => data.writeUInt16BE(info, 6 + nameBytes.length + 2 * i));
  return data;
}

export function encodeMetaContextQuery(name: string, queries: string[]): Buffer {
  const parts: Buffer[] = [];
  const nameBytes = Buffer.from(name, 'utf8');
  const head = Buffer.alloc(4);
  head.writeUInt32BE(nameBytes.length, 0);
  parts.push(head, nameBytes);
  const count = Buffer.alloc(4);
  count.writeUInt32BE(queries.length, 0);
  parts.push(count);
  for (const query of queries) {
    const bytes = Buffer.from(query, 'utf8');
    const length = Buffer.alloc(4);
    length.writeUInt32BE(bytes.length, 0);
    parts.push(length, bytes);
  }
  return Buffer.concat(parts);
}

/** The error message of an option error reply, or of an error chunk. */
export function errorChunkOf(chunk: StructuredChunk): { error: number; message: string } {
  const length = chunk.payload.readUInt16BE(4);
  return { error: chunk.payload.readUInt32BE(0), message: chunk.payload.subarray(6, 6 + length).toString('utf8') };
}

export function decodeExtents(payload: Buffer): { contextId: number; extents: Array<{ length: number; flags: number }> } {
  const extents: Array<{ length: number; flags: number }> = [];
  for (let at = 4; at < payload.length; at += 8) extents.push({ length: payload.readUInt32BE(at), flags: payload.readUInt32BE(at + 4) });
  return { contextId: payload.readUInt32BE(0), extents };
}
