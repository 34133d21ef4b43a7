// The NBD wire format (doc/proto.md of NetworkBlockDevice/nbd): every constant and every byte
// layout the server reads or writes. Nothing else in the agent spells out a magic, an option
// number or an offset into a message.

// ---------------------------------------------------------------------------------------------
// Magics

/** 'NBDMAGIC': the first 8 bytes from the server, oldstyle and newstyle alike. */
export const NBD_MAGIC = 0x4e42444d41474943n;
/** 'IHAVEOPT': newstyle greeting, and the magic of every option the client sends. */
export const OPTION_MAGIC = 0x49484156454f5054n;
/** What an oldstyle server sends where a newstyle one sends IHAVEOPT. */
export const OLDSTYLE_MAGIC = 0x00420281861253n;
export const OPTION_REPLY_MAGIC = 0x3e889045565a9n;
export const REQUEST_MAGIC = 0x25609513;
export const SIMPLE_REPLY_MAGIC = 0x67446698;
export const STRUCTURED_REPLY_MAGIC = 0x668e33ef;

// ---------------------------------------------------------------------------------------------
// Handshake

export const HandshakeFlag = {
  FIXED_NEWSTYLE: 1 << 0,
  NO_ZEROES: 1 << 1,
} as const;

export const ClientFlag = {
  FIXED_NEWSTYLE: 1 << 0,
  NO_ZEROES: 1 << 1,
} as const;

export const TransmissionFlag = {
  HAS_FLAGS: 1 << 0,
  READ_ONLY: 1 << 1,
  SEND_FLUSH: 1 << 2,
  SEND_FUA: 1 << 3,
  ROTATIONAL: 1 << 4,
  SEND_TRIM: 1 << 5,
  SEND_WRITE_ZEROES: 1 << 6,
  SEND_DF: 1 << 7,
  CAN_MULTI_CONN: 1 << 8,
  SEND_CACHE: 1 << 10,
} as const;

export const Option = {
  EXPORT_NAME: 1,
  ABORT: 2,
  LIST: 3,
  STARTTLS: 5,
  INFO: 6,
  GO: 7,
  STRUCTURED_REPLY: 8,
  LIST_META_CONTEXT: 9,
  SET_META_CONTEXT: 10,
} as const;

const REPLY_ERROR_BIT = 2 ** 31;

export const OptionReply = {
  ACK: 1,
  SERVER: 2,
  INFO: 3,
  META_CONTEXT: 4,
  ERR_UNSUP: REPLY_ERROR_BIT + 1,
  ERR_POLICY: REPLY_ERROR_BIT + 2,
  ERR_INVALID: REPLY_ERROR_BIT + 3,
  ERR_PLATFORM: REPLY_ERROR_BIT + 4,
  ERR_TLS_REQD: REPLY_ERROR_BIT + 5,
  ERR_UNKNOWN: REPLY_ERROR_BIT + 6,
  ERR_SHUTDOWN: REPLY_ERROR_BIT + 7,
  ERR_BLOCK_SIZE_REQD: REPLY_ERROR_BIT + 8,
  ERR_TOO_BIG: REPLY_ERROR_BIT + 9,
} as const;

export function isOptionError(replyType: number): boolean {
  return replyType >= REPLY_ERROR_BIT;
}

export const Info = {
  EXPORT: 0,
  NAME: 1,
  DESCRIPTION: 2,
  BLOCK_SIZE: 3,
} as const;

// ---------------------------------------------------------------------------------------------
// Transmission

export const Command = {
  READ: 0,
  WRITE: 1,
  DISC: 2,
  FLUSH: 3,
  TRIM: 4,
  CACHE: 5,
  WRITE_ZEROES: 6,
  BLOCK_STATUS: 7,
} as const;

export const CommandFlag = {
  FUA: 1 << 0,
  NO_HOLE: 1 << 1,
  DF: 1 << 2,
  REQ_ONE: 1 << 3,
  FAST_ZERO: 1 << 4,
} as const;

export const ReplyFlag = {
  DONE: 1 << 0,
} as const;

export const ReplyType = {
  NONE: 0,
  OFFSET_DATA: 1,
  OFFSET_HOLE: 2,
  BLOCK_STATUS: 5,
  ERROR: 2 ** 15 + 1,
  ERROR_OFFSET: 2 ** 15 + 2,
} as const;

export const NbdError = {
  EPERM: 1,
  EIO: 5,
  ENOMEM: 12,
  EINVAL: 22,
  ENOSPC: 28,
  EOVERFLOW: 75,
  ENOTSUP: 95,
  ESHUTDOWN: 108,
} as const;

// ---------------------------------------------------------------------------------------------
// Metadata contexts

export const BASE_ALLOCATION_CONTEXT = 'base:allocation';
export const BASE_NAMESPACE = 'base:';
export const QEMU_NAMESPACE = 'qemu:';
/** qemu's namespace for dirty bitmaps: `qemu:dirty-bitmap:<bitmap name>`. */
export const QEMU_DIRTY_BITMAP_PREFIX = 'qemu:dirty-bitmap:';

/** base:allocation flags. */
export const AllocationState = {
  HOLE: 1 << 0,
  ZERO: 1 << 1,
} as const;

/** qemu:dirty-bitmap flags. */
export const DirtyState = {
  DIRTY: 1 << 0,
} as const;

// ---------------------------------------------------------------------------------------------
// Sizes and limits

export const GREETING_LENGTH = 18;
export const CLIENT_FLAGS_LENGTH = 4;
export const OPTION_HEADER_LENGTH = 16;
export const EXPORT_NAME_ZEROES = 124;
export const REQUEST_LENGTH = 28;
export const SIMPLE_REPLY_LENGTH = 16;
export const STRUCTURED_HEADER_LENGTH = 20;
/** Structured header plus the 64-bit offset that starts an OFFSET_DATA payload. */
export const OFFSET_DATA_HEADER_LENGTH = STRUCTURED_HEADER_LENGTH + 8;
export const BLOCK_DESCRIPTOR_LENGTH = 8;

/** Strings (export names, queries, messages) may not be longer than this. */
export const MAX_STRING_LENGTH = 4096;
/** Largest option payload accepted: the longest legitimate one (a query list) is far smaller. */
export const MAX_OPTION_LENGTH = 64 * 1024;
/** Largest read served and the maximum payload advertised in NBD_INFO_BLOCK_SIZE. */
export const MAX_PAYLOAD = 32 * 1024 * 1024;
export const MIN_PREFERRED_BLOCK_SIZE = 4096;
/** The protocol's ceiling for an advertised minimum block size. */
export const MAX_MINIMUM_BLOCK_SIZE = 65536;
/** Descriptors in one block status chunk at most (the protocol's recommendation). */
export const MAX_EXTENTS_PER_CHUNK = 2 ** 20;
const MAX_UINT32 = 0xffffffff;

// ---------------------------------------------------------------------------------------------
// Errors of the client's bytes

/** An option whose payload does not parse: answered with NBD_REP_ERR_INVALID. */
export class MalformedOption extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'MalformedOption';
  }
}

// ---------------------------------------------------------------------------------------------
// Handshake codecs

export function encodeGreeting(): Buffer {
  const buffer = Buffer.alloc(GREETING_LENGTH);
  buffer.writeBigUInt64BE(NBD_MAGIC, 0);
  buffer.writeBigUInt64BE(OPTION_MAGIC, 8);
  buffer.writeUInt16BE(HandshakeFlag.FIXED_NEWSTYLE | HandshakeFlag.NO_ZEROES, 16);
  return buffer;
}

export interface OptionHeader {
  magic: bigint;
  option: number;
  length: number;
}

export function decodeOptionHeader(buffer: Buffer): OptionHeader {
  return {
    magic: buffer.readBigUInt64BE(0),
    option: buffer.readUInt32BE(8),
    length: buffer.readUInt32BE(12),
  };
}

export function encodeOptionReply(option: number, replyType: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const header = Buffer.alloc(20);
  header.writeBigUInt64BE(OPTION_REPLY_MAGIC, 0);
  header.writeUInt32BE(option, 8);
  header.writeUInt32BE(replyType, 12);
  header.writeUInt32BE(data.length, 16);
  return Buffer.concat([header, data]);
}

/** An error reply whose payload is a message for a person. */
export function encodeOptionError(option: number, replyType: number, message: string): Buffer {
  return encodeOptionReply(option, replyType, encodeString(message));
}

/** UTF-8, cut (on a character boundary) to the protocol's string limit. */
export function encodeString(text: string): Buffer {
  const bytes = Buffer.from(text, 'utf8');
  if (bytes.length <= MAX_STRING_LENGTH) return bytes;
  let end = MAX_STRING_LENGTH;
  while (end > 0 && (bytes[end] & 0xc0) === 0x80) end--;
  return bytes.subarray(0, end);
}

export function encodeServerReply(name: string, description: string): Buffer {
  const nameBytes = encodeString(name);
  const data = Buffer.alloc(4 + nameBytes.length);
  data.writeUInt32BE(nameBytes.length, 0);
  nameBytes.copy(data, 4);
  return Buffer.concat([data, encodeString(description)]);
}

export function encodeInfoExport(size: number, transmissionFlags: number): Buffer {
  const data = Buffer.alloc(12);
  data.writeUInt16BE(Info.EXPORT, 0);
  data.writeBigUInt64BE(BigInt(size), 2);
  data.writeUInt16BE(transmissionFlags, 10);
  return data;
}

export function encodeInfoString(type: typeof Info.NAME | typeof Info.DESCRIPTION, text: string): Buffer {
  const data = Buffer.alloc(2);
  data.writeUInt16BE(type, 0);
  return Buffer.concat([data, encodeString(text)]);
}

export interface BlockSizeConstraints {
  minimum: number;
  preferred: number;
  maximum: number;
}

export function encodeInfoBlockSize(constraints: BlockSizeConstraints): Buffer {
  const data = Buffer.alloc(14);
  data.writeUInt16BE(Info.BLOCK_SIZE, 0);
  data.writeUInt32BE(constraints.minimum, 2);
  data.writeUInt32BE(constraints.preferred, 6);
  data.writeUInt32BE(constraints.maximum, 10);
  return data;
}

export function encodeMetaContextReply(id: number, name: string): Buffer {
  const data = Buffer.alloc(4);
  data.writeUInt32BE(id, 0);
  return Buffer.concat([data, encodeString(name)]);
}

/** The reply that ends NBD_OPT_EXPORT_NAME: size, flags, and the zeroes unless the client declined them. */
export function encodeExportNameReply(size: number, transmissionFlags: number, noZeroes: boolean): Buffer {
  const data = Buffer.alloc(10 + (noZeroes ? 0 : EXPORT_NAME_ZEROES));
  data.writeBigUInt64BE(BigInt(size), 0);
  data.writeUInt16BE(transmissionFlags, 8);
  return data;
}

/** A protocol string: valid UTF-8, no NUL, within the length limit. */
function decodeString(bytes: Buffer, what: string): string {
  if (bytes.length > MAX_STRING_LENGTH) throw new MalformedOption(`${what} is longer than ${MAX_STRING_LENGTH} bytes`);
  if (bytes.includes(0)) throw new MalformedOption(`${what} contains a NUL byte`);
  const text = bytes.toString('utf8');
  if (!Buffer.from(text, 'utf8').equals(bytes)) throw new MalformedOption(`${what} is not valid UTF-8`);
  return text;
}

/** The whole payload of NBD_OPT_EXPORT_NAME is the name. */
export function decodeExportName(data: Buffer): string {
  return decodeString(data, 'export name');
}

export interface InfoRequest {
  name: string;
  /** NBD_INFO_* types asked for, in the client's order; unknown ones included. */
  requests: number[];
}

/** NBD_OPT_INFO / NBD_OPT_GO: u32 name length, name, u16 count, count × u16 info types. */
export function decodeInfoRequest(data: Buffer): InfoRequest {
  if (data.length < 6) throw new MalformedOption(`payload of ${data.length} bytes is shorter than the 6 it needs`);
  const nameLength = data.readUInt32BE(0);
  if (nameLength > data.length - 6) throw new MalformedOption(`name length ${nameLength} overruns the payload`);
  const name = decodeString(data.subarray(4, 4 + nameLength), 'export name');
  const count = data.readUInt16BE(4 + nameLength);
  const expected = 6 + nameLength + 2 * count;
  if (data.length !== expected) {
    throw new MalformedOption(`${count} information requests need a payload of ${expected} bytes, not ${data.length}`);
  }
  const requests: number[] = [];
  for (let i = 0; i < count; i++) requests.push(data.readUInt16BE(6 + nameLength + 2 * i));
  if (new Set(requests).size !== requests.length) throw new MalformedOption('an information request is repeated');
  return { name, requests };
}

export interface MetaContextRequest {
  name: string;
  queries: string[];
}

/** LIST/SET_META_CONTEXT: u32 name length, name, u32 count, count × (u32 length, query). */
export function decodeMetaContextRequest(data: Buffer): MetaContextRequest {
  if (data.length < 8) throw new MalformedOption(`payload of ${data.length} bytes is shorter than the 8 it needs`);
  const nameLength = data.readUInt32BE(0);
  if (nameLength > data.length - 8) throw new MalformedOption(`name length ${nameLength} overruns the payload`);
  const name = decodeString(data.subarray(4, 4 + nameLength), 'export name');
  let at = 4 + nameLength;
  const count = data.readUInt32BE(at);
  at += 4;
  const queries: string[] = [];
  for (let i = 0; i < count; i++) {
    if (at + 4 > data.length) throw new MalformedOption(`query ${i + 1} of ${count} is missing`);
    const length = data.readUInt32BE(at);
    at += 4;
    if (length > data.length - at) throw new MalformedOption(`query ${i + 1} length ${length} overruns the payload`);
    const query = decodeString(data.subarray(at, at + length), `query ${i + 1}`);
    if (!query.includes(':')) throw new MalformedOption(`query ${JSON.stringify(query)} has no namespace (no colon)`);
    queries.push(query);
    at += length;
  }
  if (at !== data.length) throw new MalformedOption(`${data.length - at} bytes follow the last query`);
  return { name, queries };
}

// ---------------------------------------------------------------------------------------------
// Transmission codecs

export interface Request {
  magic: number;
  flags: number;
  type: number;
  cookie: bigint;
  /** Exact below 2^53; anything larger is past every export and is refused as such. */
  offset: number;
  length: number;
}

export function decodeRequest(buffer: Buffer, at: number): Request {
  return {
    magic: buffer.readUInt32BE(at),
    flags: buffer.readUInt16BE(at + 4),
    type: buffer.readUInt16BE(at + 6),
    cookie: buffer.readBigUInt64BE(at + 8),
    offset: buffer.readUInt32BE(at + 16) * 2 ** 32 + buffer.readUInt32BE(at + 20),
    length: buffer.readUInt32BE(at + 24),
  };
}

export function encodeSimpleReply(cookie: bigint, error: number): Buffer {
  const buffer = Buffer.allocUnsafe(SIMPLE_REPLY_LENGTH);
  buffer.writeUInt32BE(SIMPLE_REPLY_MAGIC, 0);
  buffer.writeUInt32BE(error, 4);
  buffer.writeBigUInt64BE(cookie, 8);
  return buffer;
}

function writeStructuredHeader(buffer: Buffer, cookie: bigint, flags: number, type: number, length: number): void {
  buffer.writeUInt32BE(STRUCTURED_REPLY_MAGIC, 0);
  buffer.writeUInt16BE(flags, 4);
  buffer.writeUInt16BE(type, 6);
  buffer.writeBigUInt64BE(cookie, 8);
  buffer.writeUInt32BE(length, 16);
}

export function encodeNoneChunk(cookie: bigint): Buffer {
  const buffer = Buffer.allocUnsafe(STRUCTURED_HEADER_LENGTH);
  writeStructuredHeader(buffer, cookie, ReplyFlag.DONE, ReplyType.NONE, 0);
  return buffer;
}

/** The header of an OFFSET_DATA chunk; the data itself follows it on the wire unchanged. */
export function encodeOffsetDataHeader(cookie: bigint, flags: number, offset: number, dataLength: number): Buffer {
  const buffer = Buffer.allocUnsafe(OFFSET_DATA_HEADER_LENGTH);
  writeStructuredHeader(buffer, cookie, flags, ReplyType.OFFSET_DATA, 8 + dataLength);
  buffer.writeBigUInt64BE(BigInt(offset), STRUCTURED_HEADER_LENGTH);
  return buffer;
}

export function encodeErrorChunk(cookie: bigint, error: number, message: string): Buffer {
  const text = encodeString(message);
  const buffer = Buffer.allocUnsafe(STRUCTURED_HEADER_LENGTH + 6 + text.length);
  writeStructuredHeader(buffer, cookie, ReplyFlag.DONE, ReplyType.ERROR, 6 + text.length);
  buffer.writeUInt32BE(error, STRUCTURED_HEADER_LENGTH);
  buffer.writeUInt16BE(text.length, STRUCTURED_HEADER_LENGTH + 4);
  text.copy(buffer, STRUCTURED_HEADER_LENGTH + 6);
  return buffer;
}

export interface Extent {
  length: number;
  flags: number;
}

export function encodeBlockStatusChunk(cookie: bigint, flags: number, contextId: number, extents: readonly Extent[]): Buffer {
  const payload = 4 + BLOCK_DESCRIPTOR_LENGTH * extents.length;
  const buffer = Buffer.allocUnsafe(STRUCTURED_HEADER_LENGTH + payload);
  writeStructuredHeader(buffer, cookie, flags, ReplyType.BLOCK_STATUS, payload);
  buffer.writeUInt32BE(contextId, STRUCTURED_HEADER_LENGTH);
  let at = STRUCTURED_HEADER_LENGTH + 4;
  for (const extent of extents) {
    if (extent.length <= 0 || extent.length > MAX_UINT32) throw new RangeError(`extent length ${extent.length} does not fit a descriptor`);
    buffer.writeUInt32BE(extent.length, at);
    buffer.writeUInt32BE(extent.flags, at + 4);
    at += BLOCK_DESCRIPTOR_LENGTH;
  }
  return buffer;
}
