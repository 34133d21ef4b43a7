// Reading a request body: bounded in size, UTF-8, decoded as JSON or (where a route allows it)
// as a form. Like the Go agent, a body that is not a form is read as JSON whatever Content-Type
// says (the original README's own example sends "application-json"), except for what cannot
// be JSON text at all: compressed bodies, other charsets, multipart.
import type { Context } from 'koa';
import { invalid } from '../core/errors';
import { cancelled } from '../core/errors';
import { HttpError } from './errors';
import type { BodyFields } from './params';

export const DEFAULT_BODY_LIMIT = 64 * 1024;

const FORM_TYPE = 'application/x-www-form-urlencoded';
// ASCII is a subset of UTF-8.
const UTF8_CHARSETS = new Set(['utf-8', 'utf8', 'us-ascii']);
// Fatal: an invalid byte must not turn a disk id into a different string (U+FFFD) unnoticed.
// A leading byte order mark is dropped (RFC 8259 8.1 allows ignoring it).
const UTF8 = new TextDecoder('utf-8', { fatal: true });

function tooLarge(limit: number): HttpError {
  // The rest of the body is not read, so the connection cannot carry another request.
  return new HttpError(413, 'Payload Too Large', `the request body is larger than ${limit} bytes`, { Connection: 'close' });
}

async function readRaw(ctx: Context, limit: number): Promise<Buffer> {
  const declared = ctx.request.length;
  if (declared !== undefined && declared > limit) throw tooLarge(limit);
  const chunks: Buffer[] = [];
  let total = 0;
  try {
    for await (const chunk of ctx.req as AsyncIterable<Buffer>) {
      total += chunk.length;
      if (total > limit) throw tooLarge(limit);
      chunks.push(chunk);
    }
  } catch (err) {
    // The stream itself only fails when the connection went away or timed out mid-body.
    if (err instanceof HttpError) throw err;
    throw cancelled('the client closed the connection');
  }
  return Buffer.concat(chunks);
}

function decodeUtf8(raw: Buffer): string {
  try {
    return UTF8.decode(raw);
  } catch {
    throw invalid('the request body is not valid UTF-8');
  }
}

function unsupported(ctx: Context, what: string, accepted: string): HttpError {
  return new HttpError(415, 'Unsupported Media Type', `${ctx.method} ${ctx.path} takes ${accepted}, not ${what}`);
}

function decodeJson(text: string): BodyFields {
  if (text.trim() === '') throw invalid('the request body is empty: expected a JSON object');
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw invalid(`the request body is not valid JSON: ${(err as Error).message}`);
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) throw invalid('the request body must be a JSON object');
  return value as BodyFields;
}

/** Percent-decoding that refuses escapes which are not UTF-8 (URLSearchParams would put U+FFFD). */
function decodeFormPart(part: string): string {
  try {
    return decodeURIComponent(part.replace(/\+/g, ' '));
  } catch {
    throw invalid(`form field ${JSON.stringify(part)} is not valid percent-encoded UTF-8`);
  }
}

function decodeForm(text: string): BodyFields {
  const fields: BodyFields = {};
  for (const pair of text.split('&')) {
    if (pair === '') continue;
    const equals = pair.indexOf('=');
    const key = decodeFormPart(equals < 0 ? pair : pair.slice(0, equals));
    if (Object.hasOwn(fields, key)) throw invalid(`form field ${key} is given more than once`);
    fields[key] = equals < 0 ? '' : decodeFormPart(pair.slice(equals + 1));
  }
  return fields;
}

export interface BodyOptions {
  limit: number;
  /** Whether application/x-www-form-urlencoded is accepted besides JSON. */
  allowForm: boolean;
}

export async function readBody(ctx: Context, options: BodyOptions): Promise<BodyFields> {
  const accepted = options.allowForm ? `a JSON body or an ${FORM_TYPE} form` : 'a JSON body';
  const encoding = ctx.get('Content-Encoding').trim().toLowerCase();
  if (encoding !== '' && encoding !== 'identity') throw unsupported(ctx, `a body with Content-Encoding ${encoding}`, `${accepted}, uncompressed`);
  const charset = ctx.request.charset.toLowerCase();
  if (charset !== '' && !UTF8_CHARSETS.has(charset)) throw unsupported(ctx, `charset ${charset}`, `${accepted} in UTF-8`);
  const type = ctx.request.type.toLowerCase();
  if (type.startsWith('multipart/')) throw unsupported(ctx, type, accepted);
  const isForm = ctx.request.is(FORM_TYPE) === FORM_TYPE;
  if (isForm && !options.allowForm) throw unsupported(ctx, FORM_TYPE, accepted);
  const text = decodeUtf8(await readRaw(ctx, options.limit));
  return isForm ? decodeForm(text) : decodeJson(text);
}
