// Reading a request body: bounded in size, decoded as JSON or (where a route allows it) as a
// form. Like the Go agent, a body that is not a form is read as JSON whatever Content-Type says
// (the original README's own example sends "application-json").
import type { Context } from 'koa';
import { invalid } from '../errors';
import { HttpError } from './errors';
import type { BodyFields } from './params';

export const DEFAULT_BODY_LIMIT = 64 * 1024;

const FORM_TYPE = 'application/x-www-form-urlencoded';

function tooLarge(limit: number): HttpError {
  // The rest of the body is not read, so the connection cannot carry another request.
  return new HttpError(413, 'Payload Too Large', `the request body is larger than ${limit} bytes`, { Connection: 'close' });
}

async function readRaw(ctx: Context, limit: number): Promise<Buffer> {
  const declared = ctx.request.length;
  if (declared !== undefined && declared > limit) throw tooLarge(limit);
  const chunks: Buffer[] = [];
  let total = 0;
  for await (const chunk of ctx.req as AsyncIterable<Buffer>) {
    total += chunk.length;
    if (total > limit) throw tooLarge(limit);
    chunks.push(chunk);
  }
  return Buffer.concat(chunks);
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

function decodeForm(text: string): BodyFields {
  const fields: BodyFields = {};
  for (const [key, value] of new URLSearchParams(text)) {
    if (Object.hasOwn(fields, key)) throw invalid(`form field ${key} is given more than once`);
    fields[key] = value;
  }
  return fields;
}

export interface BodyOptions {
  limit: number;
  /** Whether application/x-www-form-urlencoded is accepted besides JSON. */
  allowForm: boolean;
}

export async function readBody(ctx: Context, options: BodyOptions): Promise<BodyFields> {
  const isForm = ctx.request.is(FORM_TYPE) === FORM_TYPE;
  if (isForm && !options.allowForm) {
    throw new HttpError(415, 'Unsupported Media Type', `${ctx.method} ${ctx.path} takes a JSON body, not ${FORM_TYPE}`);
  }
  const text = (await readRaw(ctx, options.limit)).toString('utf8');
  return isForm ? decodeForm(text) : decodeJson(text);
}
