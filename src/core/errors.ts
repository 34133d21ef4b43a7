// Typed failures of the agent. Code below the edges throws these; the REST API and the NBD
// server map them to statuses and errors once, each in one place.

export type ErrorKind = 'not-found' | 'conflict' | 'invalid' | 'unavailable' | 'insufficient-storage' | 'internal';

export class AgentError extends Error {
  constructor(readonly kind: ErrorKind, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'AgentError';
  }
}

export const notFound = (message: string): AgentError => new AgentError('not-found', message);
export const conflict = (message: string): AgentError => new AgentError('conflict', message);
export const invalid = (message: string): AgentError => new AgentError('invalid', message);
export const unavailable = (message: string, cause?: unknown): AgentError => new AgentError('unavailable', message, { cause });
/** A snapstore location has no room; the message names the location, never a file in it. */
export const insufficientStorage = (message: string, cause?: unknown): AgentError => new AgentError('insufficient-storage', message, { cause });

export function isAgentError(err: unknown, kind?: ErrorKind): err is AgentError {
  return err instanceof AgentError && (kind === undefined || err.kind === kind);
}
