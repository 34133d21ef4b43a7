// The HTTPS server of the REST API: TLS 1.2 or newer, a client certificate from the configured
// CA required at the handshake, an optional allow-list of client identities, and timeouts so
// neither a silent peer nor a stalled download holds resources forever (agent-reference 2, 11.11,
// 11.12). Plain HTTP on the port fails the handshake and the socket is closed at once.
import http, { type IncomingMessage, type RequestListener, type ServerResponse } from 'node:http';
import https from 'node:https';
import type { Duplex } from 'node:stream';
import type { Socket } from 'node:net';
import type { Logger } from '../core/log';
import { ClientAllowList, clientIdentity, notAllowedMessage } from '../doors/allow-list';
import { serverTlsOptions, type TlsMaterial } from '../doors/tls';
import { errorResponse, HttpError, routeNotFound } from './errors';

export interface ApiServerTimeouts {
  /** Completing the TLS handshake. */
  handshakeMs: number;
  /** Receiving a request's headers. */
  headersMs: number;
  /** Receiving a whole request. */
  requestMs: number;
  /** An idle keep-alive connection is closed after this. */
  keepAliveMs: number;
  /** A connection with no traffic either way (e.g. a client that stopped reading) is destroyed. */
  idleSocketMs: number;
}

export const DEFAULT_TIMEOUTS: ApiServerTimeouts = {
  handshakeMs: 10_000,
  headersMs: 20_000,
  requestMs: 60_000,
  keepAliveMs: 30_000,
  idleSocketMs: 120_000,
};

export interface ApiServerOptions {
  tls: TlsMaterial;
  /** Subjects ("CN=client") or SHA-256 fingerprints; empty or absent admits every client the CA signed. */
  allowedClients?: readonly string[];
  /** Handles the authorised requests: `createApp(...).callback()`, which answers its own failures. */
  handler: (req: IncomingMessage, res: ServerResponse) => void | Promise<void>;
  log: Logger;
  timeouts?: Partial<ApiServerTimeouts>;
  /** Open connections at most; further ones are dropped. */
  maxConnections?: number;
}

const DEFAULT_MAX_CONNECTIONS = 256;

/** Status, headers and body of the JSON answer to `err`, as errors.ts words every refusal. */
function encodeError(err: HttpError): { status: number; headers: Record<string, string>; body: string } {
  const { status, body: fields, headers } = errorResponse(err);
  const body = JSON.stringify(fields);
  return {
    status,
    headers: { ...headers, 'Content-Type': 'application/json; charset=utf-8', 'Content-Length': String(Buffer.byteLength(body)), Connection: 'close' },
    body,
  };
}

function sendError(res: ServerResponse, err: HttpError): void {
  const { status, headers, body } = encodeError(err);
  res.writeHead(status, headers);
  res.end(body);
}

/** A whole response written straight to the socket, for the cases where Node has no ServerResponse. */
function sendRawError(socket: Duplex, err: HttpError): void {
  const { status, headers, body } = encodeError(err);
  const head = Object.entries(headers).map(([name, value]) => `${name}: ${value}\r\n`).join('');
  socket.end(`HTTP/1.1 ${status} ${http.STATUS_CODES[status] ?? err.label}\r\n${head}\r\n${body}`, () => socket.destroy());
}

/**
 * The refusal of a request Node could not take in (parse error, size, timeout); undefined for
 * failures below HTTP (TLS, resets), which get no answer.
 */
function clientErrorRefusal(err: NodeJS.ErrnoException & { reason?: string }): HttpError | undefined {
  switch (err.code) {
    case 'HPE_HEADER_OVERFLOW':
      return new HttpError(431, 'Request Header Fields Too Large', `the request line and headers are larger than ${http.maxHeaderSize} bytes`);
    case 'HPE_CHUNK_EXTENSIONS_OVERFLOW':
      return new HttpError(413, 'Payload Too Large', 'the chunk extensions of the request body are too large');
    case 'ERR_HTTP_REQUEST_TIMEOUT':
      return new HttpError(408, 'Request Timeout', 'the request did not arrive in time');
    default:
      return err.code?.startsWith('HPE_') === true ? new HttpError(400, 'Bad Request', `malformed HTTP request: ${err.reason ?? err.message}`) : undefined;
  }
}

/** Throws on a malformed allow-list entry, naming it. */
export function createApiServer(options: ApiServerOptions): https.Server {
  const timeouts = { ...DEFAULT_TIMEOUTS, ...options.timeouts };
  const allowList = new ClientAllowList(options.allowedClients ?? []);
  const admitted = new WeakMap<Socket, boolean>();
  const isAdmitted = (socket: Socket): boolean => {
    let verdict = admitted.get(socket);
    if (verdict === undefined) {
      const identity = clientIdentity(socket);
      verdict = allowList.admits(identity);
      if (!verdict) options.log.warn({ remote: socket.remoteAddress, client: identity }, 'client certificate not in api.tls.allowed_clients: refused');
      admitted.set(socket, verdict);
    }
    return verdict;
  };

  const handler: RequestListener = (req, res) => {
    if (!allowList.restricts || isAdmitted(req.socket)) {
      void options.handler(req, res);
      return;
    }
    sendError(res, new HttpError(403, 'Forbidden', notAllowedMessage(clientIdentity(req.socket))));
  };

  const server = https.createServer({
    ...serverTlsOptions(options.tls),
    handshakeTimeout: timeouts.handshakeMs,
    headersTimeout: timeouts.headersMs,
    requestTimeout: timeouts.requestMs,
    keepAliveTimeout: timeouts.keepAliveMs,
    // Node enforces the header and request timeouts on this tick (30 s unless set).
    connectionsCheckingInterval: Math.min(1000, timeouts.headersMs / 2),
    // An HTTP/1.1 request without Host is refused by the app, with a JSON body (app.ts).
    requireHostHeader: false,
    // A client may shut down its sending side once its request is out (curl does not, scripts
    // and some libraries do). By default Node then ends the connection at once and an answer
    // still being prepared is lost: the client sees a dropped connection.
    allowHalfOpen: true,
  }, handler);
  // Node answers these itself with an empty body, or (CONNECT) drops the connection: give them
  // the {error, details} body of every other refusal.
  server.on('clientError', (err: NodeJS.ErrnoException, socket: Duplex) => {
    // Bytes after a request that asked to close the connection are no request (RFC 9112 9.6):
    // that request's answer still goes out, then Node closes. (Node only reports them after
    // Expect: 100-continue.)
    if (err.code === 'HPE_CLOSED_CONNECTION') return;
    // Node's own rule: once a response has started on this socket, nothing else may be written.
    const inFlight = (socket as Duplex & { _httpMessage?: ServerResponse | null })._httpMessage;
    const refusal = clientErrorRefusal(err);
    if (refusal === undefined || !socket.writable || inFlight?.headersSent === true) {
      socket.destroy();
      return;
    }
    options.log.info({ remote: (socket as Socket).remoteAddress, status: refusal.status, err: err.code ?? err.message }, 'malformed or incomplete request refused');
    sendRawError(socket, refusal);
  });
  server.on('checkExpectation', (req: IncomingMessage, res: ServerResponse) => {
    sendError(res, new HttpError(417, 'Expectation Failed', `only "Expect: 100-continue" is supported, got ${JSON.stringify(req.headers.expect)}`));
  });
  // No route takes CONNECT: the same 404 as any other method a route does not serve.
  server.on('connect', (_req: IncomingMessage, socket: Duplex) => sendRawError(socket, routeNotFound()));
  // With allowHalfOpen above: HTTP closes a half-closed connection after its answer (Node's own
  // switch, undocumented but what its HTTP server checks).
  (server as https.Server & { httpAllowHalfOpen: boolean }).httpAllowHalfOpen = true;
  server.setTimeout(timeouts.idleSocketMs);
  server.maxConnections = options.maxConnections ?? DEFAULT_MAX_CONNECTIONS;
  server.on('tlsClientError', (err, socket) => {
    options.log.info({ remote: socket.remoteAddress, err: err.message }, 'TLS handshake refused');
  });
  return server;
}

/** Resolves once listening; rejects on EADDRINUSE and the like. */
export function listenApiServer(server: https.Server, port: number, host: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (err: Error): void => reject(err);
    server.once('error', onError);
    server.listen(port, host, () => {
      server.off('error', onError);
      resolve();
    });
  });
}
