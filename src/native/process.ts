// Typed facade over the addon's process-level syscalls: flock(2) and sd_notify's datagram.
import { binding } from './binding';
import { checkPath } from './validate';

/**
 * flock(fd, LOCK_EX | LOCK_NB): true when the lock is now held by this process (until the fd
 * is closed or the process dies), false when another open file description holds it.
 */
export function tryLockExclusive(fd: number): boolean {
  if (!Number.isInteger(fd) || fd < 0) throw new TypeError(`fd must be a non-negative integer, got ${String(fd)}`);
  return binding.tryLockExclusive(fd);
}

/** Sends `message` as one datagram to the AF_UNIX socket `path` ('@name': abstract namespace). */
export function notifySocket(path: string, message: string): void {
  checkPath(path);
  binding.notifySocket(path, message);
}
