// A whole agent (simulated engine, REST API) whose state and snapstore location outlive it, so
// that it can be stopped and started again as a service restart does, with the location on a
// file system the test chooses (a small real one, to fill up).
import fs from 'node:fs';
import https from 'node:https';
import path from 'node:path';
import { startAgent, type RunningAgent } from '../../../src/agent/start';
import { generateCertificates } from '../../../src/cli/gen-certs';
import { parseConfig } from '../../../src/config/config';
import { writeDemoDisk } from '../../../src/cli/demo';
import { silentLogger } from '../../../src/core/log';
import { request as httpsRequest, type Response } from '../../api/helpers/server';
import { simulatedAgentToml } from '../../helpers/agent-config';

export const MiB = 1024 * 1024;

export interface SnapstoreAgentOptions {
  /** Holds the certificates, disks, database and engine state. */
  dir: string;
  /** The snapstore location (created if missing). */
  location: string;
  diskSize: number;
  snapStoreFileSize: number;
}

export interface SnapstoreAgent {
  disks: string[];
  /** Starts the agent (again); the previous one must be stopped. */
  start(): Promise<void>;
  stop(): Promise<void>;
  request(method: string, route: string, body?: unknown): Promise<Response>;
  /** The JSON body of a 200 answer; anything else throws with the status and body. */
  json<T>(method: string, route: string, body?: unknown): Promise<T>;
}

export async function snapstoreAgent(options: SnapstoreAgentOptions): Promise<SnapstoreAgent> {
  const { dir, location } = options;
  const certs = path.join(dir, 'certs');
  if (!fs.existsSync(certs)) await generateCertificates({ outDir: certs });
  fs.mkdirSync(location, { recursive: true });
  const disks = ['disk0', 'disk1'].map((name, index) => {
    const file = path.join(dir, `${name}.img`);
    if (!fs.existsSync(file)) writeDemoDisk(file, options.diskSize, index);
    return file;
  });
  const configText = simulatedAgentToml({ dir, disks, certs, location, snapStoreFileSize: options.snapStoreFileSize, apiPort: 1 });
  const read = (name: string): string => fs.readFileSync(path.join(certs, name), 'utf8');
  const ca = read('ca-cert.pem');
  const credentials = { cert: read('client-cert.pem'), key: read('client-key.pem') };
  let running: { agent: RunningAgent; port: number; base: string; httpsAgent: https.Agent } | null = null;

  const request: SnapstoreAgent['request'] = (method, route, body) => {
    if (running === null) throw new Error('the agent is not running');
    const payload = body === undefined ? undefined : JSON.stringify(body);
    return httpsRequest(running.port, ca, `${running.base}${route}`, {
      method, credentials, agent: running.httpsAgent, body: payload,
      headers: payload === undefined ? {} : { 'content-type': 'application/json' },
    });
  };
  return {
    disks,
    async start() {
      const config = parseConfig(configText, path.join(dir, 'config.toml'));
      config.api.port = 0;
      config.nbd.port = 0;
      const agent = await startAgent(config, silentLogger());
      const url = new URL(agent.apiUrl);
      running = { agent, port: Number(url.port), base: url.pathname, httpsAgent: new https.Agent({ ca, ...credentials, keepAlive: true }) };
    },
    async stop() {
      if (running === null) return;
      running.httpsAgent.destroy();
      await running.agent.stop();
      running = null;
    },
    request,
    async json<T>(method: string, route: string, body?: unknown): Promise<T> {
      const res = await request(method, route, body);
      if (res.status !== 200) throw new Error(`${method} ${route}: ${res.status} ${res.body.toString()}`);
      return (res.body.length > 0 ? JSON.parse(res.body.toString()) : undefined) as T;
    },
  };
}

/** Writes `length` bytes of a pattern that differs from what the disk holds, then syncs. */
export function writeDisk(file: string, offset: number, length: number, seed: number): void {
  const data = Buffer.alloc(length);
  for (let i = 0; i < length; i += 4) data.writeUInt32LE(((i / 4) * 2654435761 + seed * 40503 + 1) >>> 0, i);
  const fd = fs.openSync(file, 'r+');
  try {
    fs.writeSync(fd, data, 0, length, offset);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/** Bytes the file system really holds for the files under `dir` (what "du" counts). */
export function allocatedOnDisk(dir: string): number {
  let total = 0;
  for (const entry of fs.readdirSync(dir, { recursive: true, withFileTypes: true })) {
    if (entry.isFile()) total += fs.statSync(path.join(entry.parentPath ?? entry.path, entry.name)).blocks * 512;
  }
  return total;
}
