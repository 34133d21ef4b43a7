// What GET /systeminfo reports of the host, read from /proc and /sys the way the Go agent's
// library (gopsutil) reads them: memory from /proc/meminfo, one entry per logical CPU from
// /proc/cpuinfo, interfaces from sysfs in kernel order with the Go agent's type rules, and the
// OS from /etc/os-release (ID and VERSION_ID, quotes stripped, which the Go agent forgot for
// ID). The roots are parameters so that tests can point them at fixtures.
import fs from 'node:fs/promises';
import type os from 'node:os';
import path from 'node:path';

export interface SystemInfoSources {
  procRoot: string;
  sysRoot: string;
  osReleaseFile: string;
}

export const HOST_SOURCES: SystemInfoSources = { procRoot: '/proc', sysRoot: '/sys', osReleaseFile: '/etc/os-release' };

// gopsutil's VirtualMemoryStat keys, in its order, with the /proc/meminfo line they come from.
const MEMINFO_KEYS: Array<[json: string, meminfo: string | null]> = [
  ['total', 'MemTotal'], ['available', 'MemAvailable'], ['used', null], ['usedPercent', null], ['free', 'MemFree'],
  ['active', 'Active'], ['inactive', 'Inactive'], ['wired', null], ['laundry', null], ['buffers', 'Buffers'],
  ['cached', 'Cached'], ['writeBack', 'Writeback'], ['dirty', 'Dirty'], ['writeBackTmp', 'WritebackTmp'],
  ['shared', 'Shmem'], ['slab', 'Slab'], ['sreclaimable', 'SReclaimable'], ['sunreclaim', 'SUnreclaim'],
  ['pageTables', 'PageTables'], ['swapCached', 'SwapCached'], ['commitLimit', 'CommitLimit'],
  ['committedAS', 'Committed_AS'], ['highTotal', 'HighTotal'], ['highFree', 'HighFree'], ['lowTotal', 'LowTotal'],
  ['lowFree', 'LowFree'], ['swapTotal', 'SwapTotal'], ['swapFree', 'SwapFree'], ['mapped', 'Mapped'],
  ['vmallocTotal', 'VmallocTotal'], ['vmallocUsed', 'VmallocUsed'], ['vmallocChunk', 'VmallocChunk'],
  ['hugePagesTotal', 'HugePages_Total'], ['hugePagesFree', 'HugePages_Free'], ['hugePageSize', 'Hugepagesize'],
];

/** Bytes for "kB" lines, plain counts otherwise (HugePages_*), as gopsutil reports them. */
export function parseMeminfo(text: string): Record<string, number> {
  const values = new Map<string, number>();
  for (const line of text.split('\n')) {
    const match = /^(\S+):\s+(\d+)(\s+kB)?/.exec(line);
    if (match !== null) values.set(match[1], Number(match[2]) * (match[3] === undefined ? 1 : 1024));
  }
  const memory: Record<string, number> = {};
  for (const [json, key] of MEMINFO_KEYS) memory[json] = key === null ? 0 : values.get(key) ?? 0;
  // gopsutil v3 counts reclaimable slab as cache and derives used from it.
  memory.cached += memory.sreclaimable;
  memory.used = memory.total - memory.free - memory.buffers - memory.cached;
  memory.usedPercent = memory.total === 0 ? 0 : (memory.used / memory.total) * 100;
  return memory;
}

export interface CpuInfo {
  cpu: number;
  vendorId: string;
  family: string;
  model: string;
  stepping: number;
  physicalId: string;
  coreId: string;
  cores: number;
  modelName: string;
  mhz: number;
  cacheSize: number;
  flags: string[];
  microcode: string;
}

/** One entry per logical CPU, as gopsutil's cpu.Info() (cores is 1 per logical CPU there). */
export function parseCpuinfo(text: string): CpuInfo[] {
  const cpus: CpuInfo[] = [];
  for (const block of text.split(/\n\s*\n/)) {
    const fields = new Map<string, string>();
    for (const line of block.split('\n')) {
      const colon = line.indexOf(':');
      if (colon > 0) fields.set(line.slice(0, colon).trim(), line.slice(colon + 1).trim());
    }
    const processor = fields.get('processor');
    if (processor === undefined || !/^\d+$/.test(processor)) continue;
    cpus.push({
      cpu: Number(processor),
      vendorId: fields.get('vendor_id') ?? '',
      family: fields.get('cpu family') ?? '',
      model: fields.get('model') ?? '',
      stepping: Number.parseInt(fields.get('stepping') ?? '0', 10) || 0,
      physicalId: fields.get('physical id') ?? '',
      coreId: fields.get('core id') ?? '',
      cores: 1,
      modelName: fields.get('model name') ?? '',
      mhz: Number.parseFloat(fields.get('cpu MHz') ?? '0') || 0,
      cacheSize: Number.parseInt(fields.get('cache size') ?? '0', 10) || 0,
      flags: (fields.get('flags') ?? '').split(/\s+/).filter((flag) => flag !== ''),
      microcode: fields.get('microcode') ?? '',
    });
  }
  return cpus;
}

/** Max frequency from cpufreq when the kernel exposes it, as gopsutil prefers it over cpuinfo's. */
export async function applyMaxFrequency(cpus: CpuInfo[], sysRoot: string): Promise<void> {
  await Promise.all(cpus.map(async (cpu) => {
    const khz = await readText(path.join(sysRoot, `devices/system/cpu/cpu${cpu.cpu}/cpufreq/cpuinfo_max_freq`));
    if (khz !== undefined && /^\d+$/.test(khz)) cpu.mhz = Number(khz) / 1000;
  }));
}

/** A file of /proc (meminfo, cpuinfo): failing to read it is an error, unlike the optional files below. */
export function readProcFile(sources: SystemInfoSources, name: string): Promise<string> {
  return fs.readFile(path.join(sources.procRoot, name), 'utf8');
}

export async function readText(file: string): Promise<string | undefined> {
  try {
    return (await fs.readFile(file, 'utf8')).trim();
  } catch {
    return undefined;
  }
}

export async function exists(file: string): Promise<boolean> {
  return fs.access(file).then(() => true, () => false);
}

/** A network interface as the Go agent lists it (agent-reference section 8). */
export interface NetworkInterface {
  type: string;
  macAddress: string;
  /** CIDR notation. */
  ipAddresses: string[];
  name: string;
  /** A bridge's ports, null for a port that is not listed itself. */
  slaves?: Array<NetworkInterface | null>;
}

const ARPHRD_NONE = '65534';
const IFF_LOOPBACK = 0x8;

/** The Go agent's rules, first match wins (agent-reference section 8). */
async function interfaceType(netDir: string, realDir: string, sysRoot: string): Promise<string> {
  if ((await readText(path.join(netDir, 'type'))) === ARPHRD_NONE) return 'tunnel_interface';
  if (await exists(path.join(netDir, 'device'))) return 'physical_interface';
  if (await exists(path.join(netDir, 'bridge'))) return 'bridge_interface';
  if (await exists(path.join(netDir, 'bonding'))) return 'bond_interface';
  if (realDir.startsWith(path.join(sysRoot, 'devices/virtual/net') + path.sep)) return 'virtual_interface';
  return 'unsupported_interface';
}

export async function listInterfaces(sysRoot: string, addresses: NodeJS.Dict<os.NetworkInterfaceInfo[]>): Promise<NetworkInterface[]> {
  const classDir = path.join(sysRoot, 'class/net');
  const entries: Array<{ index: number; json: NetworkInterface; bridgePorts: string[] }> = [];
  for (const name of await fs.readdir(classDir).catch(() => [] as string[])) {
    const netDir = path.join(classDir, name);
    const realDir = await fs.realpath(netDir).catch(() => undefined);
    if (realDir === undefined) continue;
    const flags = Number.parseInt((await readText(path.join(netDir, 'flags'))) ?? '0', 16);
    if ((flags & IFF_LOOPBACK) !== 0) continue;
    const json: NetworkInterface = {
      type: await interfaceType(netDir, realDir, sysRoot),
      macAddress: (await readText(path.join(netDir, 'address'))) ?? '',
      ipAddresses: (addresses[name] ?? []).map((address) => address.cidr ?? `${address.address}`),
      name,
    };
    const bridgePorts = json.type === 'bridge_interface' ? await fs.readdir(path.join(netDir, 'brif')).catch(() => []) : [];
    entries.push({ index: Number((await readText(path.join(netDir, 'ifindex'))) ?? 0), json, bridgePorts });
  }
  entries.sort((a, b) => a.index - b.index);
  const byName = new Map(entries.map(({ json }) => [json.name, json]));
  return entries.map(({ json, bridgePorts }) => {
    if (bridgePorts.length === 0) return json;
    return { ...json, slaves: bridgePorts.map((port) => byName.get(port) ?? null) };
  });
}

export function parseOsRelease(text: string): { name: string; version: string } {
  const values = new Map<string, string>();
  for (const line of text.split('\n')) {
    const match = /^([A-Z_]+)=(.*)$/.exec(line.trim());
    if (match !== null) values.set(match[1], match[2].replace(/^(["'])(.*)\1$/, '$2'));
  }
  return { name: values.get('ID') ?? '', version: values.get('VERSION_ID') ?? '' };
}
