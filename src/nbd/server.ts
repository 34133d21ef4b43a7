// The NBD server: a TCP listener (and optionally a Unix socket for local consumers) serving the
// exports of the export registry (exports/), read-only. Each connection runs the handshake (handshake.ts),
// then the transmission phase (transmission.ts) until the client disconnects, the export is
// removed or the server closes.
//
// Connections still in the handshake have not shown a certificate the allow-list admits: they
// get a deadline and a few slots of their own, and a new connection takes the slot of the oldest
// one, so clients that never finish a handshake cannot keep authenticated ones out.
import fs from 'node:fs';
import net from 'node:net';
import { ClientAllowList } from '../doors/allow-list';
import type { ExportSource } from '../exports/types';
import type { Logger } from '../core/log';
import type { ReadLimits } from '../doors/limits';
import { closeGently, negotiate } from './handshake';
import { checkTlsMaterial, isLoopbackAddress, type TlsMaterial } from '../doors/tls';
import { DEFAULT_STALL_TIMEOUT_MS, Transmission } from './transmission';

export const DEFAULT_HANDSHAKE_TIMEOUT_MS = 10_000;
/** Handshakes at once; the oldest gives way to a new connection. Honest ones last milliseconds. */
export const DEFAULT_MAX_HANDSHAKES = 16;
/** TCP keep-alive finds peers that vanished; an idle timeout is off by default because an attached kernel client may stay idle for days. */
const KEEPALIVE_DELAY_MS = 30_000;

export type NbdTlsOptions = { mode: 'off' } | ({ mode: 'require' } & TlsMaterial);

export interface NbdServerOptions {
  registry: ExportSource;
  log: Logger;
  /** 'require': client certificates signed by caCertificate; 'off': plaintext, loopback binds only. */
  tls: NbdTlsOptions;
  bind: string;
  /** 0 picks a free port; listen() tells which. */
  port: number;
  /** Path of a Unix socket to listen on as well (same TLS mode). */
  unixSocket?: string | null;
  /** Client certificate subjects or fingerprints (doors/allow-list.ts); empty or absent admits every certificate the CA signed. */
  allowedClients?: readonly string[];
  /** Connections at once, both listeners together; beyond it a new one takes the oldest handshake's slot, or is closed at once. */
  maxConnections: number;
  /** Connections in the handshake at once (at most maxConnections); DEFAULT_MAX_HANDSHAKES unless given. */
  maxHandshakes?: number;
  handshakeTimeoutMs?: number;
  /** A client that takes none of its pending replies for this long is disconnected. */
  stallTimeoutMs?: number;
  /** Close connections with nothing in flight and no traffic for this long; 0 (default) = never. */
  idleTimeoutMs?: number;
  /** Read-rate limits shared with the REST API. */
  limits?: ReadLimits;
}

export interface NbdServer {
  /** Resolves once listening; rejects on EADDRINUSE and the like. */
  listen(): Promise<{ port: number }>;
  /** Stops listening and closes every connection (pending requests get ESHUTDOWN first). */
  close(): Promise<void>;
  /**
   * Stops listening at once, lets the open connections finish for up to `graceMs` (less if
   * `cut` aborts), then closes the rest as close() does; resolves with how many it closed.
   */
  drain(graceMs: number, cut?: AbortSignal): Promise<number>;
  /** Connections accepted and not yet closed. */
  readonly connectionCount: number;
}

interface Connection {
  controller: AbortController;
  exportName: string | null;
  transmission: Transmission | null;
}

export function createNbdServer(options: NbdServerOptions): NbdServer {
  return new Server(options);
}

function listenOn(server: net.Server, target: net.ListenOptions): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(target, () => {
      server.off('error', reject);
      resolve();
    });
  });
}

function closeListener(server: net.Server | null): Promise<void> {
  return new Promise((resolve) => {
    if (server === null || !server.listening) resolve();
    else server.close(() => resolve());
  });
}

/** A socket file left by an earlier agent is replaced; any other file is not ours to remove. */
function removeStaleSocket(file: string): void {
  let stat: fs.Stats;
  try {
    stat = fs.lstatSync(file);
  } catch {
    return;
  }
  if (!stat.isSocket()) throw new Error(`${file} exists and is not a socket: refusing to replace it with the NBD socket`);
  fs.unlinkSync(file);
}

class Server implements NbdServer {
  private readonly connections = new Set<Connection>();
  /** The connections still in the handshake, oldest first. */
  private readonly handshakes = new Set<Connection>();
  private readonly finished = new Set<Promise<void>>();
  private readonly tlsMaterial: TlsMaterial | null;
  private readonly allowList: ClientAllowList;
  private readonly maxHandshakes: number;
  private readonly handshakeTimeoutMs: number;
  private readonly stallTimeoutMs: number;
  private readonly idleTimeoutMs: number;
  private tcp: net.Server | null = null;
  private unix: net.Server | null = null;
  private closing: Promise<void> | null = null;
  private nextConnectionId = 1;

  constructor(private readonly options: NbdServerOptions) {
    if (!Number.isInteger(options.maxConnections) || options.maxConnections < 1) {
      throw new RangeError(`maxConnections must be a positive integer, got ${options.maxConnections}`);
    }
    if (options.tls.mode === 'off' && !isLoopbackAddress(options.bind)) {
      throw new Error(`NBD TLS may be off only on a loopback address, not ${options.bind}`);
    }
    this.allowList = new ClientAllowList(options.allowedClients ?? []);
    if (options.tls.mode === 'off' && this.allowList.restricts) {
      throw new Error('an allow-list of client certificates needs TLS: NBD TLS may not be off');
    }
    this.maxHandshakes = Math.min(options.maxHandshakes ?? DEFAULT_MAX_HANDSHAKES, options.maxConnections);
    if (!Number.isInteger(this.maxHandshakes) || this.maxHandshakes < 1) {
      throw new RangeError(`maxHandshakes must be a positive integer, got ${options.maxHandshakes}`);
    }
    if (options.tls.mode === 'require') {
      const { certificate, key, caCertificate } = options.tls;
      this.tlsMaterial = { certificate, key, caCertificate };
      checkTlsMaterial(this.tlsMaterial);
    } else {
      this.tlsMaterial = null;
    }
    this.handshakeTimeoutMs = options.handshakeTimeoutMs ?? DEFAULT_HANDSHAKE_TIMEOUT_MS;
    this.stallTimeoutMs = options.stallTimeoutMs ?? DEFAULT_STALL_TIMEOUT_MS;
    this.idleTimeoutMs = options.idleTimeoutMs ?? 0;
    options.registry.on('removed', this.onRemoved);
    options.registry.on('failed', this.onFailed);
  }

  get connectionCount(): number {
    return this.connections.size;
  }

  async listen(): Promise<{ port: number }> {
    const { bind, port, unixSocket, log, tls, maxConnections } = this.options;
    this.tcp = net.createServer({ allowHalfOpen: true, noDelay: true, keepAlive: true, keepAliveInitialDelay: KEEPALIVE_DELAY_MS },
      (socket) => this.accept(socket, `${socket.remoteAddress}:${socket.remotePort}`));
    await listenOn(this.tcp, { host: bind, port });
    const address = this.tcp.address() as net.AddressInfo;
    if (unixSocket) {
      removeStaleSocket(unixSocket);
      this.unix = net.createServer({ allowHalfOpen: true }, (socket) => this.accept(socket, 'unix'));
      await listenOn(this.unix, { path: unixSocket });
      fs.chmodSync(unixSocket, 0o600);
    }
    log.info({ bind, port: address.port, unixSocket: unixSocket ?? undefined, tls: tls.mode, maxConnections }, 'NBD server listening');
    if (tls.mode === 'off') {
      log.warn({ bind, unixSocket: unixSocket ?? undefined }, 'NBD TLS is off: exports are served in plaintext without client authentication (loopback and Unix socket only)');
    }
    return { port: address.port };
  }

  close(): Promise<void> {
    this.closing ??= this.shutDown();
    return this.closing;
  }

  async drain(graceMs: number, cut?: AbortSignal): Promise<number> {
    // Resolves once the last connection ends; close() waits for it later.
    void closeListener(this.tcp);
    void closeListener(this.unix);
    let timer: NodeJS.Timeout | undefined;
    const graceOver = new Promise<void>((resolve) => {
      timer = setTimeout(resolve, graceMs);
      if (cut?.aborted === true) resolve();
      cut?.addEventListener('abort', () => resolve(), { once: true });
    });
    const finished = (async (): Promise<void> => {
      while (this.finished.size > 0) await Promise.all(this.finished);
    })();
    await Promise.race([finished, graceOver]);
    clearTimeout(timer);
    const remaining = this.connections.size;
    await this.close();
    return remaining;
  }

  private async shutDown(): Promise<void> {
    const { registry, unixSocket, log } = this.options;
    registry.off('removed', this.onRemoved);
    registry.off('failed', this.onFailed);
    const listenersClosed = Promise.all([closeListener(this.tcp), closeListener(this.unix)]);
    for (const connection of this.connections) {
      if (connection.transmission !== null) connection.transmission.shutDown('the server is shutting down');
      else connection.controller.abort(new Error('the server is shutting down'));
    }
    await Promise.all(this.finished);
    await listenersClosed;
    if (unixSocket && this.unix !== null) {
      try {
        fs.unlinkSync(unixSocket);
      } catch {
        // already removed by the listener
      }
    }
    log.info('NBD server closed');
  }

  private accept(socket: net.Socket, remote: string): void {
    const { log, maxConnections } = this.options;
    socket.on('error', (err) => log.debug({ remote, err: err.message }, 'NBD socket error'));
    if (this.closing !== null) {
      socket.destroy();
      return;
    }
    if (this.connections.size >= maxConnections || this.handshakes.size >= this.maxHandshakes) {
      const oldest = this.handshakes.values().next().value;
      if (oldest === undefined) {
        log.warn({ remote, maxConnections }, 'NBD connection refused: too many connections');
        closeGently(socket);
        return;
      }
      // It leaves both sets now: its slot is the new connection's, whenever its socket is gone.
      this.handshakes.delete(oldest);
      this.connections.delete(oldest);
      oldest.controller.abort(new Error('a newer connection took its handshake slot'));
    }
    const connection: Connection = { controller: new AbortController(), exportName: null, transmission: null };
    this.connections.add(connection);
    this.handshakes.add(connection);
    const connectionLog = log.child({ nbdConnection: this.nextConnectionId++, remote });
    const finished = this.serve(socket, connection, connectionLog)
      .catch((err: unknown) => connectionLog.error({ err }, 'NBD connection failed'))
      .finally(() => {
        this.connections.delete(connection);
        this.handshakes.delete(connection);
        this.finished.delete(finished);
      });
    this.finished.add(finished);
  }

  private async serve(socket: net.Socket, connection: Connection, log: Logger): Promise<void> {
    const { registry } = this.options;
    const timer = setTimeout(() => connection.controller.abort(new Error('the handshake timed out')), this.handshakeTimeoutMs);
    let session;
    try {
      session = await negotiate(socket, { registry, log, tls: this.tlsMaterial, allowList: this.allowList }, connection.controller.signal);
    } finally {
      clearTimeout(timer);
      this.handshakes.delete(connection);
    }
    if (session === null) return;

    const name = session.export.name;
    const sessionLog = log.child({ export: name });
    const transmission = new Transmission(session, { log: sessionLog, idleTimeoutMs: this.idleTimeoutMs, stallTimeoutMs: this.stallTimeoutMs,
      limits: this.options.limits });
    connection.exportName = name;
    connection.transmission = transmission;
    sessionLog.info({ tls: session.tls, structuredReplies: session.structuredReplies,
      contexts: session.contexts.map(({ context }) => context.name), failed: session.reader === null }, 'NBD export attached');
    // Either may have happened while the handshake finished.
    if (this.closing !== null) transmission.shutDown('the server is shutting down');
    else if (registry.get(name) === undefined) transmission.shutDown('the export was removed');
    try {
      await transmission.done;
    } finally {
      // The connection is gone; its reader closes once the reads still running finish.
      this.connections.delete(connection);
      await session.reader?.close();
    }
  }

  private readonly onRemoved = (name: string): void => {
    for (const connection of this.connections) {
      if (connection.exportName === name) connection.transmission?.shutDown('the export was removed');
    }
  };

  private readonly onFailed = (name: string, reason: string): void => {
    for (const connection of this.connections) {
      if (connection.exportName === name) connection.transmission?.exportFailed(reason);
    }
  };
}
