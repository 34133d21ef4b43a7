// Starts the real API (createApp + createApiServer) on an ephemeral port with test certificates,
// and a small https client that sends the client certificate.
import crypto from 'node:crypto';
import fs from 'node:fs';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import { createApp, type AppOptions } from '../../../src/api/app';
import type { HealthProbes } from '../../../src/api/health';
import { HEALTHY_PROBES } from './fake-service';
import { createApiServer, listenApiServer, type ApiServerTimeouts } from '../../../src/api/server';
import { silentLogger, type Logger } from '../../../src/core/log';
import { makeTestCerts, type TestCerts } from '../../helpers/certs';

export interface Response {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Buffer;
}

export interface ClientCredentials {
  cert?: string;
  key?: string;
}

export interface RequestOptions {
  method?: string;
  headers?: Record<string, string>;
  body?: string | Buffer;
  /** Defaults to the valid test client certificate; pass {} for none. */
  credentials?: ClientCredentials;
  agent?: https.Agent;
}

export interface TestServer {
  port: number;
  certs: TestCerts;
  ca: string;
  request(pathAndQuery: string, options?: RequestOptions): Promise<Response>;
  /** Sends `bytes` as they are; resolves with everything received once the server closes. */
  raw(bytes: string | Buffer): Promise<string>;
  close(): Promise<void>;
}

export function tempDir(prefix: string): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

/** A file of `size` pseudo-random bytes, so any misplaced byte shows. */
export function randomFile(dir: string, name: string, size: number): { file: string; data: Buffer } {
  const data = crypto.randomBytes(size);
  const file = path.join(dir, name);
  fs.writeFileSync(file, data);
  return { file, data };
}

let sharedCerts: TestCerts | undefined;

/** One CA and set of certificates per test process; openssl is slow enough to matter. */
export function testCerts(): TestCerts {
  if (sharedCerts === undefined) {
    const dir = tempDir('csa-api-certs-');
    process.once('exit', () => fs.rmSync(dir, { recursive: true, force: true }));
    sharedCerts = makeTestCerts(dir);
  }
  return sharedCerts;
}

export interface StartOptions extends Omit<AppOptions, 'log' | 'health'> {
  health?: HealthProbes;
  /** Silent unless given. */
  log?: Logger;
  allowedClients?: string[];
  timeouts?: Partial<ApiServerTimeouts>;
}

export async function startServer(options: StartOptions): Promise<TestServer> {
  const certs = testCerts();
  const read = (file: string): string => fs.readFileSync(file, 'utf8');
  const log = options.log ?? silentLogger();
  const app = createApp({ ...options, health: options.health ?? HEALTHY_PROBES, log });
  const server = createApiServer({
    tls: { certificate: read(certs.serverCert), key: read(certs.serverKey), caCertificate: read(certs.caCert) },
    allowedClients: options.allowedClients,
    handler: app.callback(),
    log,
    timeouts: options.timeouts,
  });
  await listenApiServer(server, 0, '127.0.0.1');
  const { port } = server.address() as AddressInfo;
  const ca = read(certs.caCert);
  const defaults: ClientCredentials = { cert: read(certs.clientCert), key: read(certs.clientKey) };
  return {
    port,
    certs,
    ca,
    request: (pathAndQuery, requestOptions = {}) => request(port, ca, pathAndQuery, { credentials: defaults, ...requestOptions }),
    raw: (bytes) => rawExchange(port, ca, defaults, bytes),
    close: () => closeApiServer(server, 100),
  };
}

export function request(port: number, ca: string, pathAndQuery: string, options: RequestOptions): Promise<Response> {
  return new Promise((resolve, reject) => {
    const req = https.request({
      host: '127.0.0.1',
      servername: 'localhost',
      port,
      path: pathAndQuery,
      method: options.method ?? 'GET',
      headers: options.headers,
      ca,
      ...options.credentials,
      agent: options.agent ?? false,
    }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(chunks) }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(options.body);
  });
}

/** For what an HTTP client library would refuse to send. Rejects if the server keeps the connection open 10 s. */
export function rawExchange(port: number, ca: string, credentials: ClientCredentials, bytes: string | Buffer): Promise<string> {
  return new Promise((resolve, reject) => {
    const received: Buffer[] = [];
    const socket = tls.connect({ host: '127.0.0.1', servername: 'localhost', port, ca, ...credentials }, () => socket.write(bytes));
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`the server kept the connection open; received ${JSON.stringify(Buffer.concat(received).toString())}`));
    }, 10_000);
    socket.on('data', (chunk: Buffer) => received.push(chunk));
    socket.on('error', () => undefined);
    socket.on('close', () => {
      clearTimeout(timer);
      resolve(Buffer.concat(received).toString('utf8'));
    });
  });
}

export function json(response: Response): unknown {
  return JSON.parse(response.body.toString('utf8'));
}

export type Send = (method: string, route: string, body?: string | Buffer, headers?: Record<string, string>) => Promise<Response>;

/**
 * Requests to a running agent's API (`apiUrl` ends in /api/v1; `route` follows it), with the
 * client certificate of `certsDir` (gen-certs names), bodies sent exactly as given.
 */
export function agentClient(apiUrl: string, certsDir: string, agent?: https.Agent): Send {
  const read = (name: string): string => fs.readFileSync(path.join(certsDir, name), 'utf8');
  const ca = read('ca-cert.pem');
  const credentials = { cert: read('client-cert.pem'), key: read('client-key.pem') };
  const { port, pathname } = new URL(apiUrl);
  return (method, route, body, headers) => request(Number(port), ca, `${pathname}${route}`, { method, credentials, body, headers, agent });
}

/**
 * Stops accepting, closes idle keep-alive connections, lets responses in progress finish for up
 * to `graceMs`, then cuts the rest (a download of a whole disk will not wait).
 */
export function closeApiServer(server: https.Server, graceMs = 5_000): Promise<void> {
  return new Promise((resolve) => {
    const force = setTimeout(() => server.closeAllConnections(), graceMs);
    server.close(() => {
      clearTimeout(force);
      resolve();
    });
    server.closeIdleConnections();
  });
}
