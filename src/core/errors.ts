// The agent's one error: a kind (the agent's verdict), an optional errno name (what the kernel,
// its model or a syscall answered) and a cause. Code below the edges throws these; each edge
// maps them once: api/errors.ts to HTTP statuses, nbd/errors.ts to NBD errors, main.ts to exit
// statuses. Native calls reject with plain errors carrying `code` (an errno name) and
// `syscall`; errorCode() reads the code of either.
import os from 'node:os';

export type ErrorKind =
  | 'not-found'
  | 'conflict'
  | 'invalid'
  | 'unavailable'
  | 'insufficient-storage'
  /** The client went away, or the read was cancelled for it: nobody is left to answer. */
  | 'cancelled'
  | 'internal';

export class AgentError extends Error {
  /** An errno name (EIO, EBUSY...) when the failure came from the kernel, its model or a syscall. */
  readonly code: string | undefined;

  constructor(readonly kind: ErrorKind, message: string, options: { code?: string | undefined; cause?: unknown } = {}) {
    super(message, { cause: options.cause });
    this.name = 'AgentError';
    this.code = options.code;
  }

  /** The errno number of `code`, or 0. */
  get errno(): number {
    return this.code === undefined ? 0 : errnoNumber(this.code);
  }
}

export const notFound = (message: string): AgentError => new AgentError('not-found', message);
export const conflict = (message: string): AgentError => new AgentError('conflict', message);
export const invalid = (message: string, cause?: unknown): AgentError => new AgentError('invalid', message, { cause });
export const unavailable = (message: string, cause?: unknown): AgentError => new AgentError('unavailable', message, { cause });
/** A snapstore location has no room; the message names the location, never a file in it. */
export const insufficientStorage = (message: string, cause?: unknown): AgentError => new AgentError('insufficient-storage', message, { cause });
export const cancelled = (message: string): AgentError => new AgentError('cancelled', message, { code: 'ECANCELED' });

/**
 * What the kernel (or the model of it) answered to an engine operation: `code` is the errno
 * name, so both engines fail the same way for the same mistake.
 */
export function kernelError(code: string, operation: string, detail?: string): AgentError {
  return new AgentError('internal', `${operation}: ${detail ?? code} (${code})`, { code });
}

export function isAgentError(err: unknown, kind?: ErrorKind): err is AgentError {
  return err instanceof AgentError && (kind === undefined || err.kind === kind);
}

/** The errno name of an agent, engine or native failure, or undefined for anything else. */
export function errorCode(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : undefined;
}

export function errnoNumber(code: string): number {
  return (os.constants.errno as Record<string, number>)[code] ?? 0;
}

export function errnoName(errno: number): string {
  const entry = Object.entries(os.constants.errno as Record<string, number>).find(([, value]) => value === errno);
  return entry?.[0] ?? `E${errno}`;
}
