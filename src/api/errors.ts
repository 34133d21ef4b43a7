// The one place where failures become HTTP statuses and the {error, details} body of the wire
// contract (agent-reference 1.2). Handlers throw; nothing else sets an error status.
import http from 'node:http';
import { isAgentError, type ErrorKind } from '../core/errors';

/** A refusal that only exists at the HTTP edge (oversized body, unsatisfiable range, unknown route...). */
export class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly label: string,
    details: string,
    readonly headers: Record<string, string> = {},
  ) {
    super(details);
    this.name = 'HttpError';
  }
}

/** The catch-all of the original agent, with its lower-case "found". */
export const routeNotFound = (): HttpError => new HttpError(404, 'Not found', 'Resource not found');

/** A path some route serves, asked with a method none of them takes (RFC 9110 15.5.6). */
export function methodNotAllowed(method: string, allowed: readonly string[]): HttpError {
  const list = allowed.join(', ');
  return new HttpError(405, 'Method Not Allowed', `${method} is not served here; this path takes ${list}`, { Allow: list });
}

export interface ErrorResponse {
  status: number;
  body: { error: string; details: string };
  headers: Record<string, string>;
  /** Unexpected failures are logged with their stack; refusals are not. */
  unexpected: boolean;
}

const AGENT_ERRORS: Record<ErrorKind, { status: number; label: string }> = {
  'not-found': { status: 404, label: 'Not Found' },
  conflict: { status: 409, label: 'Conflict' },
  invalid: { status: 400, label: 'Bad Request' },
  unavailable: { status: 503, label: 'Service Unavailable' },
  'insufficient-storage': { status: 507, label: 'Insufficient Storage' },
  // Only when nobody is left to read the answer (the client went away).
  cancelled: { status: 503, label: 'Service Unavailable' },
  internal: { status: 500, label: 'Server error' },
};

/** Koa's own errors (http-errors) that are safe to show, e.g. a malformed request line. */
function isExposedHttpError(err: unknown): err is Error & { status: number } {
  const { status, expose } = err as { status?: unknown; expose?: unknown };
  return err instanceof Error && typeof status === 'number' && status >= 400 && status < 500 && expose === true;
}

export function errorResponse(err: unknown): ErrorResponse {
  if (err instanceof HttpError) {
    return { status: err.status, body: { error: err.label, details: err.message }, headers: err.headers, unexpected: false };
  }
  if (isAgentError(err)) {
    const { status, label } = AGENT_ERRORS[err.kind];
    return { status, body: { error: label, details: err.message }, headers: {}, unexpected: status >= 500 };
  }
  if (isExposedHttpError(err)) {
    return { status: err.status, body: { error: http.STATUS_CODES[err.status] ?? 'Error', details: err.message }, headers: {}, unexpected: false };
  }
  // Raw internals (paths, errno text) stay in the log (agent-reference 11.13).
  return { status: 500, body: { error: 'Server error', details: 'internal error, see the agent log' }, headers: {}, unexpected: true };
}
