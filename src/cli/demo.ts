// `demo`: the agent's main job with no kernel module. It lays out a directory with
// certificates, disk files that carry a partition table and real content, a config for the
// simulated engine, starts the agent, and prints how to talk to it. Running it again on the
// same directory reuses what is there, so disks keep whatever the user wrote to them.
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { runAgent } from '../agent/run';
import type { RunningAgent } from '../agent/start';
import { CERTIFICATE_FILES, generateCertificates } from './gen-certs';
import { loadConfig, type Config } from '../config/config';
import { createLogger } from '../core/log';
import { UsageError } from './usage';

const MiB = 1024 * 1024;
const SECTOR = 512;

export const DEMO_USAGE = `usage: coriolis-snapshot-agent demo --dir DIR [--api-port N] [--nbd-port N] [--disks N] [--disk-size SIZE]
  --dir DIR          where certificates, disks, config, database and logs go (created if missing)
  --api-port N       HTTPS port (default 9999; 0 picks a free one)
  --nbd-port N       NBD port (default 10809; 0 picks a free one)
  --disks N          number of disk files (default 2)
  --disk-size SIZE   size of each disk, e.g. 256M or 1G (default 256M)
Prints how to use it, then one JSON line with the URLs and paths, on stdout. The log goes to
DIR/agent.log (JSON lines: read it with \`npx bunyan DIR/agent.log\`, or a release's
bin/bunyan). Stop with Ctrl-C.`;


/** "256M", "1G", "1048576": binary units, whole MiB at least. */
export function parseSize(text: string): number {
  const match = /^(\d+)([KMGT]?)(i?B)?$/i.exec(text.trim());
  if (match === null) throw new UsageError(`--disk-size ${JSON.stringify(text)} is not a size like 256M or 1G`);
  const power = ' KMGT'.indexOf((match[2] || ' ').toUpperCase());
  const bytes = Number(match[1]) * 1024 ** power;
  if (!Number.isSafeInteger(bytes) || bytes < 8 * MiB || bytes % MiB !== 0) {
    throw new UsageError(`--disk-size must be a whole number of MiB, at least 8M: got ${text}`);
  }
  return bytes;
}

function parsePort(name: string, text: string | undefined, fallback: number): number {
  if (text === undefined) return fallback;
  const port = Number(text);
  if (!/^\d+$/.test(text) || port > 65535) throw new UsageError(`--${name} must be a port number (0-65535), got ${text}`);
  return port;
}

/** Port 0: one the kernel says is free now, so that the config file holds the real port. */
async function choosePort(port: number): Promise<number> {
  if (port !== 0) return port;
  const server = net.createServer();
  await new Promise<void>((resolve, reject) => server.once('error', reject).listen(0, '127.0.0.1', resolve));
  const chosen = (server.address() as net.AddressInfo).port;
  await new Promise((resolve) => server.close(resolve));
  return chosen;
}

/**
 * A disk file with a DOS partition table (one Linux partition from 1 MiB to the end) and
 * recognisable content, so listings show partitions and snapshots have bytes worth comparing.
 */
export function writeDemoDisk(file: string, size: number, index: number): void {
  const fd = fs.openSync(file, 'wx', 0o644);
  try {
    fs.ftruncateSync(fd, size);
    const mbr = Buffer.alloc(SECTOR);
    mbr.writeUInt32LE(0x1000 + index, 440); // disk signature, the PTUUID blkid reports
    const entry = 446;
    mbr[entry + 4] = 0x83; // Linux
    mbr.writeUInt32LE(MiB / SECTOR, entry + 8);
    mbr.writeUInt32LE(size / SECTOR - MiB / SECTOR, entry + 12);
    mbr[510] = 0x55;
    mbr[511] = 0xaa;
    fs.writeSync(fd, mbr, 0, SECTOR, 0);
    // Text every 8 MiB inside the partition, and a block of varied bytes after each.
    for (let offset = MiB; offset < size; offset += 8 * MiB) {
      const text = Buffer.from(`demo disk ${index}, offset ${offset}: written when the demo was set up\n`);
      const block = Buffer.alloc(64 * 1024);
      for (let i = 0; i < block.length; i++) block[i] = (i * 31 + offset / MiB + index * 7) & 0xff;
      fs.writeSync(fd, text, 0, text.length, offset);
      fs.writeSync(fd, block, 0, block.length, offset + 4096);
    }
  } finally {
    fs.closeSync(fd);
  }
}

function demoConfig(dir: string, disks: string[], apiPort: number, nbdPort: number): string {
  const certs = path.join(dir, 'certs');
  const q = JSON.stringify;
  return `# Written by "coriolis-snapshot-agent demo": the simulated engine over disk files.
engine = "simulated"
log_file = ${q(path.join(dir, 'agent.log'))}
database_file = ${q(path.join(dir, 'agent.db'))}
snapstore_destinations = [${q(path.join(dir, 'snapstores'))}]
auto_init_physical_disks = true
snap_store_file_size = ${64 * MiB}
${disks.map((disk) => `
[[snapstore_mapping]]
device = ${q(path.basename(disk, '.img'))}
location = ${q(path.join(dir, 'snapstores'))}
`).join('')}
[api]
bind = "127.0.0.1"
port = ${apiPort}

[api.tls]
certificate = ${q(path.join(certs, CERTIFICATE_FILES.serverCert))}
key = ${q(path.join(certs, CERTIFICATE_FILES.serverKey))}
ca_certificate = ${q(path.join(certs, CERTIFICATE_FILES.caCert))}

[nbd]
port = ${nbdPort}

[simulated]
disks = [${disks.map((d) => q(d)).join(', ')}]
image_dir = ${q(path.join(dir, 'engine'))}
`;
}

export async function demoCommand(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      dir: { type: 'string' }, 'api-port': { type: 'string' }, 'nbd-port': { type: 'string' },
      disks: { type: 'string' }, 'disk-size': { type: 'string' },
    },
    strict: true,
  });
  if (values.dir === undefined) throw new UsageError('--dir is required');
  const count = Number(values.disks ?? '2');
  if (!Number.isInteger(count) || count < 1 || count > 16) throw new UsageError(`--disks must be between 1 and 16, got ${values.disks}`);
  const options = {
    dir: path.resolve(values.dir),
    apiPort: parsePort('api-port', values['api-port'], 9999),
    nbdPort: parsePort('nbd-port', values['nbd-port'], 10809),
    disks: count,
    diskSize: parseSize(values['disk-size'] ?? '256M'),
  };

  const { dir } = options;
  const certs = path.join(dir, 'certs');
  for (const sub of ['disks', 'snapstores']) fs.mkdirSync(path.join(dir, sub), { recursive: true });
  if (!fs.existsSync(path.join(certs, CERTIFICATE_FILES.caCert))) await generateCertificates({ outDir: certs });
  const disks = Array.from({ length: options.disks }, (_, index) => {
    const file = path.join(dir, 'disks', `disk${index}.img`);
    if (!fs.existsSync(file)) writeDemoDisk(file, options.diskSize, index);
    return file;
  });
  const configFile = path.join(dir, 'config.toml');
  fs.writeFileSync(configFile, demoConfig(dir, disks, await choosePort(options.apiPort), await choosePort(options.nbdPort)));

  const config = loadConfig(configFile);
  // The log goes to its file only: the terminal is for the instructions.
  const log = createLogger({ logFile: config.logFile, level: config.logLevel, echoToTerminal: false });
  return runAgent(config, log, (agent) => process.stdout.write(instructions(agent, config, certs, disks, configFile)));
}

/** How to read the log: a release has its own bunyan beside its command; a checkout has npx. */
function bunyanCommand(): string {
  // dist/src/cli/demo.js in a release's app/ folder -> the release's bin/bunyan.
  const release = path.resolve(__dirname, '../../../../bin/bunyan');
  return fs.existsSync(release) ? release : 'npx bunyan';
}

function instructions(agent: RunningAgent, config: Config, certs: string, disks: string[], configFile: string): string {
  const curl = `curl --cert ${certs}/client-cert.pem --key ${certs}/client-key.pem --cacert ${certs}/ca-cert.pem`;
  const firstDisk = path.basename(disks[0], '.img');
  return `
The demo agent is running (simulated engine; disks in ${path.dirname(disks[0])}).
Its log: ${config.logFile} (${bunyanCommand()} ${config.logFile}).
Try:
  ${curl} ${agent.apiUrl}/disks/
  ${curl} -X POST -H 'Content-Type: application/json' -d '{"tracked_disk_ids": ["${firstDisk}"]}' ${agent.apiUrl}/snapshots/
  ${curl} ${agent.apiUrl}/snapshots/
  ${curl} "${agent.apiUrl}/snapshots/SNAPSHOT_ID/changes/${firstDisk}/"
  ${curl} -o ${firstDisk}.snapshot ${agent.apiUrl}/snapshots/SNAPSHOT_ID/consume/${firstDisk}
  nbdinfo --list '${agent.nbdUrl}/?tls-certificates=${certs}'
  ${curl} -X DELETE ${agent.apiUrl}/snapshots/SNAPSHOT_ID
Stop with Ctrl-C.

${JSON.stringify({ api: agent.apiUrl, nbd: agent.nbdUrl, certs, config: configFile, disks })}
`;
}

