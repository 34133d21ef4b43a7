// The NBD codecs byte for byte, and the option payload decoders on every malformed form.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  decodeExportName, decodeInfoRequest, decodeMetaContextRequest, decodeOptionHeader, decodeRequest, encodeBlockStatusChunk,
  encodeErrorChunk, encodeExportNameReply, encodeGreeting, encodeInfoBlockSize, encodeInfoExport, encodeInfoString,
  encodeMetaContextReply, encodeNoneChunk, encodeOffsetDataHeader, encodeOptionError, encodeOptionReply, encodeServerReply,
  encodeSimpleReply, encodeString, Info, MalformedOption, MAX_STRING_LENGTH, OptionReply, ReplyFlag, ReplyType,
} from '../../src/nbd/wire';
import { encodeInfoRequest, encodeMetaContextQuery } from './helpers/raw-client';

const hex = (buffer: Buffer): string => buffer.toString('hex');

describe('NBD wire codecs', () => {
  it('greets in fixed newstyle with NO_ZEROES', () => {
    assert.equal(hex(encodeGreeting()), '4e42444d41474943' + '49484156454f5054' + '0003');
  });

  it('encodes option replies with the reply magic', () => {
    assert.equal(hex(encodeOptionReply(7, OptionReply.ACK)), '0003e889045565a9' + '00000007' + '00000001' + '00000000');
    const error = encodeOptionError(6, OptionReply.ERR_UNKNOWN, 'no');
    assert.equal(hex(error), '0003e889045565a9' + '00000006' + '80000006' + '00000002' + '6e6f');
  });

  it('decodes option headers', () => {
    const header = Buffer.from('49484156454f5054' + '00000007' + '00000010', 'hex');
    assert.deepEqual(decodeOptionHeader(header), { magic: 0x49484156454f5054n, option: 7, length: 16 });
  });

  it('encodes the information replies', () => {
    assert.equal(hex(encodeInfoExport(2 ** 40 + 5, 0x0503)), '0000' + '0000010000000005' + '0503');
    assert.equal(hex(encodeInfoString(Info.NAME, 'a/b')), '0001' + '612f62');
    assert.equal(hex(encodeInfoString(Info.DESCRIPTION, '')), '0002');
    assert.equal(hex(encodeInfoBlockSize({ minimum: 512, preferred: 4096, maximum: 32 << 20 })), '0003' + '00000200' + '00001000' + '02000000');
    assert.equal(hex(encodeServerReply('x', 'desc')), '00000001' + '78' + '64657363');
    assert.equal(hex(encodeMetaContextReply(3, 'base:allocation')), '00000003' + Buffer.from('base:allocation').toString('hex'));
  });

  it('ends NBD_OPT_EXPORT_NAME with 124 zeroes unless the client declined them', () => {
    const full = encodeExportNameReply(4096, 0x0103, false);
    assert.equal(full.length, 134);
    assert.equal(hex(full.subarray(0, 10)), '0000000000001000' + '0103');
    assert.ok(full.subarray(10).every((byte) => byte === 0));
    assert.equal(encodeExportNameReply(4096, 0x0103, true).length, 10);
  });

  it('cuts strings at the protocol limit on a character boundary', () => {
    assert.equal(encodeString('é'.repeat(3000)).length, MAX_STRING_LENGTH);
    assert.equal(encodeString('a' + 'é'.repeat(3000)).length, MAX_STRING_LENGTH - 1);
  });

  it('decodes requests, offsets up to 2^64 - 1 included', () => {
    const request = Buffer.from('25609513' + '0004' + '0000' + '0102030405060708' + 'ffffffffffffffff' + '00001000', 'hex');
    const decoded = decodeRequest(Buffer.concat([Buffer.alloc(3), request]), 3);
    assert.equal(decoded.magic, 0x25609513);
    assert.equal(decoded.flags, 4);
    assert.equal(decoded.type, 0);
    assert.equal(decoded.cookie, 0x0102030405060708n);
    assert.ok(decoded.offset >= 2 ** 64 - 2 ** 12, 'a huge offset stays huge');
    assert.equal(decoded.length, 4096);
    const exact = Buffer.from(request);
    exact.writeBigUInt64BE(2n ** 52n + 3n, 16);
    assert.equal(decodeRequest(exact, 0).offset, 2 ** 52 + 3);
  });

  it('encodes simple replies and structured chunks', () => {
    assert.equal(hex(encodeSimpleReply(9n, 22)), '67446698' + '00000016' + '0000000000000009');
    assert.equal(hex(encodeNoneChunk(9n)), '668e33ef' + '0001' + '0000' + '0000000000000009' + '00000000');
    assert.equal(hex(encodeOffsetDataHeader(9n, ReplyFlag.DONE, 512, 1024)),
      '668e33ef' + '0001' + '0001' + '0000000000000009' + '00000408' + '0000000000000200');
    assert.equal(hex(encodeErrorChunk(9n, 5, 'bad')),
      '668e33ef' + '0001' + '8001' + '0000000000000009' + '00000009' + '00000005' + '0003' + '626164');
    assert.equal(hex(encodeBlockStatusChunk(9n, 0, 2, [{ length: 4096, flags: 1 }, { length: 512, flags: 0 }])),
      '668e33ef' + '0000' + '0005' + '0000000000000009' + '00000014' + '00000002' + '00001000' + '00000001' + '00000200' + '00000000');
    assert.equal(ReplyType.BLOCK_STATUS, 5);
  });

  it('refuses extents a descriptor cannot hold', () => {
    assert.throws(() => encodeBlockStatusChunk(1n, 0, 1, [{ length: 0, flags: 0 }]), RangeError);
    assert.throws(() => encodeBlockStatusChunk(1n, 0, 1, [{ length: 2 ** 32, flags: 0 }]), RangeError);
  });
});

describe('NBD option payload decoders', () => {
  it('reads export names and refuses NUL, bad UTF-8 and overlong names', () => {
    assert.equal(decodeExportName(Buffer.from('12/vda')), '12/vda');
    assert.equal(decodeExportName(Buffer.alloc(0)), '');
    assert.throws(() => decodeExportName(Buffer.from([0x61, 0x00])), MalformedOption);
    assert.throws(() => decodeExportName(Buffer.from([0xc3, 0x28])), /UTF-8/);
    assert.throws(() => decodeExportName(Buffer.alloc(MAX_STRING_LENGTH + 1, 0x61)), /longer/);
  });

  it('reads NBD_OPT_INFO/GO payloads', () => {
    assert.deepEqual(decodeInfoRequest(encodeInfoRequest('1/vda', [Info.BLOCK_SIZE, 77])), { name: '1/vda', requests: [3, 77] });
    assert.deepEqual(decodeInfoRequest(encodeInfoRequest('', [])), { name: '', requests: [] });
  });

  it('refuses malformed NBD_OPT_INFO/GO payloads', () => {
    const good = encodeInfoRequest('1/vda', [Info.NAME]);
    assert.throws(() => decodeInfoRequest(Buffer.alloc(5)), /shorter/);
    const overrun = Buffer.from(good);
    overrun.writeUInt32BE(100, 0);
    assert.throws(() => decodeInfoRequest(overrun), /overruns/);
    assert.throws(() => decodeInfoRequest(good.subarray(0, good.length - 1)), /need a payload/);
    assert.throws(() => decodeInfoRequest(Buffer.concat([good, Buffer.alloc(2)])), /need a payload/);
    assert.throws(() => decodeInfoRequest(encodeInfoRequest('x', [Info.NAME, Info.NAME])), /repeated/);
  });

  it('reads LIST/SET_META_CONTEXT payloads', () => {
    assert.deepEqual(decodeMetaContextRequest(encodeMetaContextQuery('1/vda', ['base:allocation', 'qemu:'])),
      { name: '1/vda', queries: ['base:allocation', 'qemu:'] });
    assert.deepEqual(decodeMetaContextRequest(encodeMetaContextQuery('1/vda', [])), { name: '1/vda', queries: [] });
  });

  it('refuses malformed LIST/SET_META_CONTEXT payloads', () => {
    const good = encodeMetaContextQuery('1/vda', ['base:allocation']);
    assert.throws(() => decodeMetaContextRequest(Buffer.alloc(7)), /shorter/);
    const nameOverrun = Buffer.from(good);
    nameOverrun.writeUInt32BE(1000, 0);
    assert.throws(() => decodeMetaContextRequest(nameOverrun), /overruns/);
    const missingQuery = Buffer.from(good);
    missingQuery.writeUInt32BE(2, 4 + 5);
    assert.throws(() => decodeMetaContextRequest(missingQuery), /missing/);
    const queryOverrun = Buffer.from(good);
    queryOverrun.writeUInt32BE(1000, 4 + 5 + 4);
    assert.throws(() => decodeMetaContextRequest(queryOverrun), /overruns/);
    assert.throws(() => decodeMetaContextRequest(Buffer.concat([good, Buffer.alloc(1)])), /follow the last query/);
    assert.throws(() => decodeMetaContextRequest(encodeMetaContextQuery('1/vda', ['nocolon'])), /namespace/);
    assert.throws(() => decodeMetaContextRequest(encodeMetaContextQuery('1/vda', ['base:\u0000'])), /NUL/);
  });
});
