// The configuration of an agent on the simulated engine, as the tests that run a whole agent
// write it: disk files mapped to one snapstore location, generated certificates, loopback ports.
import path from 'node:path';

export interface SimulatedAgentConfig {
  /** Holds the database and the engine's files, unless set otherwise. */
  dir: string;
  /** Disk files; each is mapped by its base name without .img (disk0.img is disk0). */
  disks: readonly string[];
  /** A folder holding gen-certs' files. */
  certs: string;
  /** The snapstore location: DIR/snapstores unless set. */
  location?: string;
  databaseFile?: string;
  /** The simulated engine's state folder: DIR/engine unless set. */
  engineDir?: string | null;
  snapStoreFileSize: number;
  apiPort: number;
  /** Left out, the NBD server takes its default port. */
  nbdPort?: number;
  allowedClients?: readonly string[];
  /** TOML lines added at the top level and to [nbd]. */
  top?: string;
  nbd?: string;
}

/** The disk id a disk file gets: its base name without .img. */
export const diskId = (file: string): string => path.basename(file, '.img');

export function simulatedAgentToml(options: SimulatedAgentConfig): string {
  const q = JSON.stringify;
  const location = options.location ?? path.join(options.dir, 'snapstores');
  const engineDir = options.engineDir === undefined ? path.join(options.dir, 'engine') : options.engineDir;
  return `engine = "simulated"
database_file = ${q(options.databaseFile ?? path.join(options.dir, 'agent.db'))}
snapstore_destinations = [${q(location)}]
auto_init_physical_disks = true
snap_store_file_size = ${options.snapStoreFileSize}
${options.top ?? ''}
${options.disks.map((d) => `[[snapstore_mapping]]\ndevice = ${q(diskId(d))}\nlocation = ${q(location)}\n`).join('')}
[api]
bind = "127.0.0.1"
port = ${options.apiPort}
[api.tls]
certificate = ${q(path.join(options.certs, 'server-cert.pem'))}
key = ${q(path.join(options.certs, 'server-key.pem'))}
ca_certificate = ${q(path.join(options.certs, 'ca-cert.pem'))}
${options.allowedClients === undefined ? '' : `allowed_clients = ${q(options.allowedClients)}`}
[nbd]
${options.nbdPort === undefined ? '' : `port = ${options.nbdPort}`}
${options.nbd ?? ''}
[simulated]
disks = [${options.disks.map((d) => q(d)).join(', ')}]
${engineDir === null ? '' : `image_dir = ${q(engineDir)}`}
`;
}
