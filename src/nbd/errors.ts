// The one place where failures become NBD errors, as api/errors.ts makes them HTTP statuses:
// the errno name an agent, engine or native error carries picks the wire's error, and the
// agent's verdict decides when there is none.
import { errorCode, isAgentError } from '../core/errors';
import { NbdError } from './wire';

const BY_CODE: Readonly<Record<string, number>> = {
  EPERM: NbdError.EPERM,
  EACCES: NbdError.EPERM,
  EIO: NbdError.EIO,
  ENOMEM: NbdError.ENOMEM,
  EINVAL: NbdError.EINVAL,
  ENOSPC: NbdError.ENOSPC,
  EOVERFLOW: NbdError.EOVERFLOW,
  ENOTSUP: NbdError.ENOTSUP,
  EOPNOTSUPP: NbdError.ENOTSUP,
  // A reader closed under a read, or a read cancelled for a client that went away: the
  // export or the connection is shutting down.
  ESHUTDOWN: NbdError.ESHUTDOWN,
  ECANCELED: NbdError.ESHUTDOWN,
};

/** The NBD error for a failed request; EIO for anything without a better answer. */
export function nbdErrorOf(err: unknown): number {
  const byCode = BY_CODE[errorCode(err) ?? ''];
  if (byCode !== undefined) return byCode;
  if (isAgentError(err, 'invalid')) return NbdError.EINVAL;
  return NbdError.EIO;
}

/** The export's snapshot has failed: it stays listed, its reads answer EIO (exports/types.ts). */
export function isFailedSnapshot(err: unknown): boolean {
  return isAgentError(err, 'conflict') && err.code === 'EIO';
}
