// Engine failures carry the errno name of what the kernel (or its model) answered, so callers
// decide on `code` and both engines fail the same way for the same mistake.
import os from 'node:os';

export class EngineError extends Error {
  readonly errno: number;

  constructor(readonly code: string, readonly operation: string, detail?: string) {
    super(`${operation}: ${detail ?? code} (${code})`);
    this.name = 'EngineError';
    this.errno = (os.constants.errno as Record<string, number>)[code] ?? 0;
  }
}

/** The errno name of an engine or native failure, or undefined for anything else. */
export function errorCode(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : undefined;
}
