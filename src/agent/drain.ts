// A stop that lets work in progress finish: both doors stop accepting at once, downloads and
// NBD connections get a grace period, and what is still going when it ends is cut.
import type { ServerResponse } from 'node:http';
import type { Server as HttpsServer } from 'node:https';
import type { Logger } from '../core/log';
import type { NbdServer } from '../nbd/server';

export interface DrainOptions {
  /** How long downloads and NBD connections in progress may take to finish. */
  graceMs: number;
  /** Aborting it cuts them at once (a second signal). */
  cut?: AbortSignal;
}

/** What a drain had to cut when its grace ran out. */
export interface DrainReport {
  httpResponses: number;
  nbdConnections: number;
}

/** The API's responses being written, so that a stop can let them finish. */
export class ResponseTracker {
  readonly inFlight = new Set<ServerResponse>();
  private draining = false;
  private waiters: Array<() => void> = [];

  constructor(server: HttpsServer) {
    server.on('request', (_req, res: ServerResponse) => {
      // While draining, keep-alive connections end with the answer they carry.
      if (this.draining && !res.headersSent) res.setHeader('Connection', 'close');
      this.inFlight.add(res);
      res.once('close', () => {
        this.inFlight.delete(res);
        if (this.inFlight.size === 0) this.waiters.splice(0).forEach((wake) => wake());
      });
    });
  }

  /** Resolves when no response is in flight. */
  drained(): Promise<void> {
    this.draining = true;
    if (this.inFlight.size === 0) return Promise.resolve();
    return new Promise((resolve) => this.waiters.push(resolve));
  }
}

/** Stops accepting at once, waits for what is in flight until the grace ends, then cuts the rest. */
export async function drainServers(api: HttpsServer, responses: ResponseTracker, nbd: NbdServer, drain: DrainOptions, log: Logger): Promise<DrainReport> {
  // Called back (with ERR_SERVER_NOT_RUNNING) even when the start failed before listening.
  const apiClosed = new Promise<void>((resolve) => api.close(() => resolve()));
  const nbdDrained = nbd.drain(drain.graceMs, drain.cut);
  if (drain.graceMs > 0) {
    log.info({ httpResponses: responses.inFlight.size, nbdConnections: nbd.connectionCount, graceMs: drain.graceMs },
      'no longer accepting connections: waiting for those in progress');
  }
  let timer: NodeJS.Timeout | undefined;
  const graceOver = new Promise<void>((resolve) => {
    timer = setTimeout(resolve, drain.graceMs);
    if (drain.cut?.aborted === true) resolve();
    drain.cut?.addEventListener('abort', () => resolve(), { once: true });
  });
  await Promise.race([responses.drained(), graceOver]);
  const nbdConnections = await nbdDrained;
  clearTimeout(timer);
  const httpResponses = responses.inFlight.size;
  // Idle keep-alive connections, and whatever did not finish in time.
  api.closeAllConnections();
  await apiClosed;
  return { httpResponses, nbdConnections };
}
