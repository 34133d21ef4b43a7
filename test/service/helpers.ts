// A scratch installation for the service tests: certificates, a disk file, a config for the
// simulated engine on free loopback ports, and the agent's command line as a child process.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { generateCertificates } from '../../src/cli/gen-certs';
import { writeDemoDisk } from '../../src/cli/demo';
import { simulatedAgentToml } from '../helpers/agent-config';
import { freePort } from '../helpers/ports';

export const MAIN = path.resolve(__dirname, '../../src/main.js');
const MiB = 1024 * 1024;

export interface Scratch {
  dir: string;
  certs: string;
  configFile: string;
  disks: string[];
  apiPort: number;
  nbdPort: number;
  remove(): void;
}

export interface ScratchOptions {
  /** TOML lines added at the top level. */
  top?: string;
  /** TOML lines added to [nbd]. */
  nbd?: string;
  diskSize?: number;
  snapStoreFileSize?: number;
  groupId?: number;
}

export async function scratch(options: ScratchOptions = {}): Promise<Scratch> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'csa-service-'));
  const certs = path.join(dir, 'certs');
  await generateCertificates({ outDir: certs, groupId: options.groupId });
  fs.mkdirSync(path.join(dir, 'snapstores'));
  const disks = [0, 1].map((index) => {
    const file = path.join(dir, `disk${index}.img`);
    writeDemoDisk(file, options.diskSize ?? 32 * MiB, index);
    return file;
  });
  const apiPort = await freePort();
  const nbdPort = await freePort();
  const configFile = path.join(dir, 'config.toml');
  fs.writeFileSync(configFile, simulatedAgentToml({
    dir, disks, certs, snapStoreFileSize: options.snapStoreFileSize ?? 8 * MiB, apiPort, nbdPort, top: options.top, nbd: options.nbd,
    databaseFile: path.join(dir, 'state', 'agent.db'), engineDir: path.join(dir, 'state', 'engine'),
  }));
  return { dir, certs, configFile, disks, apiPort, nbdPort, remove: () => fs.rmSync(dir, { recursive: true, force: true }) };
}

export function cli(args: string[], env: NodeJS.ProcessEnv = {}): { status: number | null; stdout: string; stderr: string } {
  const result = spawnSync(process.execPath, [MAIN, ...args], { encoding: 'utf8', timeout: 60_000, env: { ...process.env, ...env } });
  return { status: result.status, stdout: result.stdout, stderr: result.stderr };
}

/** A running `serve`, with its stdout and stderr collected. */
export interface Served {
  child: ChildProcess;
  output(): string;
  /** Resolves with the exit status once it exits. */
  exited: Promise<number | null>;
  /** Resolves when the output contains `text`. */
  waitFor(text: string | RegExp): Promise<void>;
}

export function serve(configFile: string, env: NodeJS.ProcessEnv = {}): Served {
  const child = spawn(process.execPath, [MAIN, 'serve', '--config', configFile], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let text = '';
  const waiters: Array<() => void> = [];
  const collect = (chunk: Buffer): void => {
    text += chunk.toString('utf8');
    waiters.splice(0).forEach((check) => check());
  };
  child.stdout.on('data', collect);
  child.stderr.on('data', collect);
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  return {
    child,
    output: () => text,
    exited,
    waitFor(pattern) {
      const matches = (): boolean => (typeof pattern === 'string' ? text.includes(pattern) : pattern.test(text));
      return new Promise((resolve, reject) => {
        const check = (): void => {
          if (matches()) resolve();
          else waiters.push(check);
        };
        void exited.then((code) => {
          if (!matches()) reject(new Error(`serve exited (${code}) before printing ${String(pattern)}:\n${text}`));
        });
        check();
      });
    },
  };
}

/** Log records (bunyan JSON lines) among the output. */
export function records(text: string): Array<Record<string, unknown>> {
  return text.split('\n').filter((line) => line.startsWith('{')).map((line) => JSON.parse(line) as Record<string, unknown>);
}
