// The pull's HTTPS client of one agent: mutual TLS with gen-certs' client certificate, a few
// kept-alive connections, and retries with back-off where a second attempt can succeed
// (network errors, 5xx). Other answers become AgentErrors carrying the agent's own
// {error, details}: 404 not-found, 409 conflict (a failed snapshot), the rest internal.
import https from 'node:https';
import type { IncomingMessage } from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';
import { AgentError, cancelled, type ErrorKind } from '../core/errors';
import { API_PREFIX } from '../exports/types';

export interface Credentials {
  ca: string;
  cert: string;
  key: string;
}

export interface RetryPolicy {
  /** Attempts in all, the first included. */
  attempts: number;
  /** The wait before the second attempt; it doubles for each next one (with jitter), up to maxDelayMs. */
  baseDelayMs: number;
  maxDelayMs: number;
}

export const DEFAULT_RETRY: RetryPolicy = { attempts: 6, baseDelayMs: 500, maxDelayMs: 15_000 };

/** A connection that sends nothing for this long is given up (and the request retried). */
const IDLE_TIMEOUT_MS = 60_000;

export interface Answer {
  status: number;
  headers: IncomingMessage['headers'];
  body: Buffer;
}

/** Failures a new attempt may cure: the connection broke, or the agent is in trouble for now. */
const RETRIED_CODES = new Set(['ECONNRESET', 'ECONNREFUSED', 'EPIPE', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'EAI_AGAIN',
  'ERR_STREAM_PREMATURE_CLOSE', 'ECONNABORTED']);

class RetryableError extends Error {}

function statusKind(status: number): ErrorKind {
  if (status === 404) return 'not-found';
  if (status === 409) return 'conflict';
  if (status >= 500) return 'unavailable';
  return 'internal';
}

/** The agent's {error, details} answer as one line. */
function answerError(what: string, answer: Answer): AgentError {
  let text = answer.body.toString('utf8').slice(0, 500);
  try {
    const body = JSON.parse(text) as { error?: unknown; details?: unknown };
    if (typeof body.error === 'string') text = typeof body.details === 'string' && body.details !== '' ? `${body.error}: ${body.details}` : body.error;
  } catch {
    // Not JSON: the text as it came.
  }
  return new AgentError(statusKind(answer.status), `${what}: HTTP ${answer.status}${text === '' ? '' : ` ${text}`}`);
}

export class AgentClient {
  /** The agent's API root, ending in /api/v1. */
  readonly base: URL;
  private readonly agent: https.Agent;

  constructor(url: string, credentials: Credentials, private readonly options: { connections: number; retry: RetryPolicy; signal?: AbortSignal | undefined }) {
    this.base = apiBase(url);
    this.agent = new https.Agent({ ...credentials, keepAlive: true, maxSockets: options.connections });
  }

  close(): void {
    this.agent.destroy();
  }

  /** One attempt; rejects with RetryableError on what another attempt may cure. */
  private once(method: string, route: string, headers: Record<string, string>, body: string | undefined): Promise<Answer> {
    return new Promise((resolve, reject) => {
      const url = new URL(`${this.base.pathname}${route}`, this.base);
      const req = https.request(url, {
        method, agent: this.agent, signal: this.options.signal, timeout: IDLE_TIMEOUT_MS,
        headers: { ...headers, ...(body === undefined ? {} : { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(body)) }) },
      }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (chunk: Buffer) => chunks.push(chunk));
        // A connection cut mid-body (the agent does so after a late read error) is an error, never a short answer.
        res.on('aborted', () => reject(new RetryableError(`${method} ${route}: the connection was cut mid-answer`)));
        res.on('error', (err) => reject(fail(err)));
        res.on('end', () => {
          if (!res.complete) return reject(new RetryableError(`${method} ${route}: the connection was cut mid-answer`));
          resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) });
        });
      });
      const fail = (err: Error): Error => {
        if (this.options.signal?.aborted === true) return cancelled('the pull was interrupted');
        const code = (err as { code?: string }).code ?? '';
        const message = `${method} ${url.href}: ${err.message}`;
        return RETRIED_CODES.has(code) ? new RetryableError(message) : new AgentError('unavailable', message, { code, cause: err });
      };
      req.on('timeout', () => req.destroy(Object.assign(new Error(`no answer for ${IDLE_TIMEOUT_MS / 1000} s`), { code: 'ETIMEDOUT' })));
      req.on('error', (err) => reject(fail(err)));
      req.end(body);
    });
  }

  /**
   * `method route` until an answer that is not 5xx, at most retry.attempts times; `idempotent`
   * false sends it once (a snapshot created twice would be worse than a failed pull).
   */
  async request(method: string, route: string, options: { headers?: Record<string, string>; body?: unknown; idempotent?: boolean } = {}): Promise<Answer> {
    const { retry } = this.options;
    const attempts = options.idempotent === false ? 1 : retry.attempts;
    const body = options.body === undefined ? undefined : JSON.stringify(options.body);
    for (let attempt = 1; ; attempt++) {
      try {
        const answer = await this.once(method, route, options.headers ?? {}, body);
        if (answer.status < 500) return answer;
        if (attempt >= attempts) return answer;
      } catch (err) {
        if (!(err instanceof RetryableError)) throw err;
        if (attempt >= attempts) throw new AgentError('unavailable', `${err.message} (after ${attempt} attempts)`, { cause: err });
      }
      const delay = Math.min(retry.maxDelayMs, retry.baseDelayMs * 2 ** (attempt - 1)) * (0.5 + Math.random() / 2);
      try {
        await sleep(delay, undefined, { signal: this.options.signal });
      } catch {
        throw cancelled('the pull was interrupted');
      }
    }
  }

  /** The JSON of a 200 answer; any other status is an AgentError. */
  async json<T>(method: string, route: string, body?: unknown, idempotent = true): Promise<T> {
    const answer = await this.request(method, route, { body, idempotent, headers: { accept: 'application/json' } });
    if (answer.status !== 200) throw answerError(`${method} ${route}`, answer);
    return (answer.body.length === 0 ? undefined : JSON.parse(answer.body.toString('utf8'))) as T;
  }

  /** Bytes [start, end) of the snapshot image, checked against Content-Range and length. */
  async readImage(snapshotId: string, disk: string, start: number, end: number): Promise<Buffer> {
    const route = `/snapshots/${encodeURIComponent(snapshotId)}/consume/${encodeURIComponent(disk)}`;
    const answer = await this.request('GET', route, { headers: { range: `bytes=${start}-${end - 1}` } });
    if (answer.status !== 206) throw answerError(`GET ${route} bytes ${start}-${end - 1}`, answer);
    const contentRange = String(answer.headers['content-range'] ?? '');
    if (!contentRange.startsWith(`bytes ${start}-${end - 1}/`) || answer.body.length !== end - start) {
      throw new AgentError('internal', `GET ${route}: asked for bytes ${start}-${end - 1}, got "${contentRange}" and ${answer.body.length} bytes`);
    }
    return answer.body;
  }

  /** A non-200 answer as the pull reports it. */
  static error(what: string, answer: Answer): AgentError {
    return answerError(what, answer);
  }
}

/** The API root of an agent given as https://host:port, with or without /api/v1. */
export function apiBase(url: string): URL {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new AgentError('invalid', `--agent ${JSON.stringify(url)} is not a URL (https://HOST:PORT)`);
  }
  if (parsed.protocol !== 'https:') throw new AgentError('invalid', `--agent ${JSON.stringify(url)}: the agent speaks https only`);
  if (parsed.search !== '' || parsed.hash !== '') throw new AgentError('invalid', `--agent ${JSON.stringify(url)}: no query or fragment`);
  const path = parsed.pathname.replace(/\/+$/, '');
  parsed.pathname = path.endsWith(API_PREFIX) ? path : `${path}${API_PREFIX}`;
  return parsed;
}
