// GET /systeminfo (agent-reference section 8): the host inventory in the Go agent's shapes.
//
// Sources: core counts from systeminformation; memory, cpu_info, interfaces and os_info from
// host/system.ts, which reads /proc and /sys as the Go agent's library does (systeminformation
// has neither most meminfo keys nor a per-CPU list, and gives one address per family). Disks
// come from the service. agent_version and agent_commit are ours (the Go agent had neither):
// package.json's version and a release's commit (null in a development tree), as `version` prints.
import os from 'node:os';
import path from 'node:path';
import si from 'systeminformation';
import type { Logger } from '../core/log';
import { COMMIT, VERSION } from '../core/version';
import {
  applyMaxFrequency, exists, HOST_SOURCES, listInterfaces, parseCpuinfo, parseMeminfo, parseOsRelease, readProcFile, readText,
  type CpuInfo, type SystemInfoSources,
} from '../host/system';
import { diskToJSON, interfaceToJSON, type DiskJson, type InterfaceJson } from './json';
import type { AgentService } from './service';

export interface SystemInfoJson {
  memory: Record<string, number>;
  cpus: { physical_cores: number; logical_cores: number; cpu_info: CpuInfo[] };
  network_interfaces: InterfaceJson[];
  disks: DiskJson[];
  os_info: { platform: string; os_name: string; os_version: string };
  hostname: string;
  firmware_type: 'efi' | 'bios';
  agent_version: string;
  agent_commit: string | null;
}

export async function collectSystemInfo(service: AgentService, log: Logger, sources: SystemInfoSources = HOST_SOURCES): Promise<SystemInfoJson> {
  const [meminfo, cpuinfo, cpu, interfaces, disks, osRelease, efi] = await Promise.all([
    readProcFile(sources, 'meminfo'),
    readProcFile(sources, 'cpuinfo'),
    si.cpu(),
    listInterfaces(sources.sysRoot, os.networkInterfaces()),
    service.listDisks({ includeVirtual: false, includeSwap: false }),
    readText(sources.osReleaseFile),
    exists(path.join(sources.sysRoot, 'firmware/efi')),
  ]);
  const release = parseOsRelease(osRelease ?? '');
  if (osRelease === undefined) log.warn({ file: sources.osReleaseFile }, 'cannot read the OS release file: os_name and os_version are empty');
  const cpus = parseCpuinfo(cpuinfo);
  await applyMaxFrequency(cpus, sources.sysRoot);
  return {
    memory: parseMeminfo(meminfo),
    cpus: { physical_cores: cpu.physicalCores, logical_cores: cpu.cores, cpu_info: cpus },
    network_interfaces: interfaces.map(interfaceToJSON),
    disks: disks.map((entry) => diskToJSON(entry.disk, entry.trackingId ?? undefined)),
    os_info: { platform: 'linux', os_name: release.name, os_version: release.version },
    ...(service.engineInfo === undefined ? {} : { snapshot_engine: snakeEngine(service.engineInfo()) }),
    hostname: os.hostname(),
    firmware_type: efi ? 'efi' : 'bios',
    agent_version: VERSION,
    agent_commit: COMMIT,
  };
}

function snakeEngine(info: { engine: string; module: string | null; moduleVersion: string | null }) {
  return { engine: info.engine, module: info.module, module_version: info.moduleVersion };
}
