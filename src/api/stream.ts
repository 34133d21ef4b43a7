// What both streaming routes (consume, digests) do with the socket: wait for it to take more,
// and say so when the client went away meanwhile.
import type { ServerResponse } from 'node:http';
import { cancelled, type AgentError } from '../core/errors';

/** The client went away while we were sending. */
export const clientGone = (): AgentError => cancelled('the client closed the connection');

/** Resolves when `res` can take more; rejects (clientGone) when the connection closes first. */
export function drained(res: ServerResponse): Promise<void> {
  return new Promise((resolve, reject) => {
    const settle = (gone: boolean): void => {
      res.off('drain', onDrain);
      res.off('close', onClose);
      if (gone) reject(clientGone());
      else resolve();
    };
    const onDrain = (): void => settle(false);
    const onClose = (): void => settle(true);
    res.on('drain', onDrain);
    res.on('close', onClose);
  });
}
