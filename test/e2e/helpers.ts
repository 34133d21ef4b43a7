// A whole agent on the simulated engine in a temporary directory, and an HTTPS client with the
// client certificate: what the end-to-end tests drive.
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';
import { startAgent, type RunningAgent } from '../../src/agent/start';
import { generateCertificates } from '../../src/cli/gen-certs';
import { parseConfig, type Config } from '../../src/config/config';
import { writeDemoDisk } from '../../src/cli/demo';
import { silentLogger } from '../../src/core/log';
import { request as httpsRequest, type Response } from '../api/helpers/server';
import { simulatedAgentToml } from '../helpers/agent-config';

const MiB = 1024 * 1024;

export interface E2eAgent {
  dir: string;
  agent: RunningAgent;
  disks: string[];
  certs: string;
  request(method: string, route: string, options?: { body?: unknown; headers?: Record<string, string> }): Promise<Response>;
  json<T = unknown>(method: string, route: string, body?: unknown): Promise<T>;
  stop(): Promise<void>;
}

/** certsDir: certificates in gen-certs' file names to use instead of a new set; allowedClients: [api.tls] allowed_clients. */
export async function startE2eAgent(options: { disks?: number; diskSize?: number; certsDir?: string; allowedClients?: string[]; configure?: (config: Config) => void } = {}): Promise<E2eAgent> {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'csa-e2e-'));
  const certs = options.certsDir ?? path.join(dir, 'certs');
  if (options.certsDir === undefined) await generateCertificates({ outDir: certs });
  fs.mkdirSync(path.join(dir, 'snapstores'));
  const disks = Array.from({ length: options.disks ?? 2 }, (_, i) => {
    const file = path.join(dir, `disk${i}.img`);
    writeDemoDisk(file, options.diskSize ?? 64 * MiB, i);
    return file;
  });
  const config = parseConfig(simulatedAgentToml({
    dir, disks, certs, snapStoreFileSize: 16 * MiB, apiPort: 1, allowedClients: options.allowedClients,
  }), path.join(dir, 'config.toml'));
  // Free ports, chosen by the kernel.
  config.api.port = 0;
  config.nbd.port = 0;
  options.configure?.(config);
  const agent = await startAgent(config, silentLogger());
  const read = (name: string): string => fs.readFileSync(path.join(certs, name), 'utf8');
  const ca = read('ca-cert.pem');
  const credentials = { cert: read('client-cert.pem'), key: read('client-key.pem') };
  const httpsAgent = new https.Agent({ ca, ...credentials, keepAlive: true, maxSockets: 8 });
  const { port, pathname } = new URL(agent.apiUrl);
  const request: E2eAgent['request'] = (method, route, opts = {}) => {
    const payload = opts.body === undefined ? undefined : JSON.stringify(opts.body);
    return httpsRequest(Number(port), ca, `${pathname}${route}`, {
      method, credentials, agent: httpsAgent, body: payload,
      headers: { ...(payload ? { 'content-type': 'application/json' } : {}), ...opts.headers },
    });
  };
  return {
    dir, agent, disks, certs, request,
    async json(method, route, body) {
      const res = await request(method, route, { body });
      if (res.status !== 200) throw new Error(`${method} ${route}: ${res.status} ${res.body.toString()}`);
      return (res.body.length > 0 ? JSON.parse(res.body.toString()) : undefined) as never;
    },
    async stop() {
      httpsAgent.destroy();
      await agent.stop();
      await fsp.rm(dir, { recursive: true, force: true });
    },
  };
}
