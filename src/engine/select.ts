// Which kernel engine runs: the one the config names, or with engine = "auto" the snapshot
// module that is loaded (or that modprobe can load). Both modules at once would both intercept
// the same disks, so auto refuses that; none at all stops the agent with the module that fits
// this kernel.
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { BLKSNAP_FILTER_MODULE, BLKSNAP_MODULE } from '../native/blksnap';
import { unavailable } from '../core/errors';

export type KernelEngineKind = 'veeamsnap' | 'blksnap';

export interface EngineModule {
  engine: KernelEngineKind;
  /** The kernel module's name, as in /sys/module. */
  module: string;
  /** /sys/module/<module>/version, or null when the module does not say. */
  version: string | null;
}

export interface ModuleHost {
  /** /sys/module. */
  sysModuleDir: string;
  /** `uname -r`. */
  kernelRelease: string;
  /** Loads a module and its dependencies; resolves false when it cannot. */
  modprobe(module: string): Promise<boolean>;
}

export const HOST: ModuleHost = {
  sysModuleDir: '/sys/module',
  kernelRelease: os.release(),
  modprobe: (module) => new Promise((resolve) => {
    execFile('modprobe', ['-q', module], { timeout: 60_000 }, (err) => resolve(err === null));
  }),
};

const MODULES: Record<KernelEngineKind, string> = { veeamsnap: 'veeamsnap', blksnap: BLKSNAP_MODULE };


/** Which module fits a kernel release: veeamsnap up to 6.7, blksnap from 5.10 to 6.13. */
export function modulesForKernel(release: string): KernelEngineKind[] {
  const match = /^(\d+)\.(\d+)/.exec(release);
  if (match === null) return ['veeamsnap', 'blksnap'];
  const version = Number(match[1]) * 1000 + Number(match[2]);
  const fits: KernelEngineKind[] = [];
  if (version <= 6007) fits.push('veeamsnap');
  if (version >= 5010 && version <= 6013) fits.push('blksnap');
  return fits;
}

function hint(release: string): string {
  const fits = modulesForKernel(release);
  if (fits.length === 0) return `no snapshot module supports kernel ${release} (veeamsnap: up to 6.7; blksnap: 5.10 to 6.13)`;
  const how: Record<KernelEngineKind, string> = {
    veeamsnap: 'veeamsnap (modprobe veeamsnap)',
    blksnap: `blksnap (${BLKSNAP_FILTER_MODULE}.ko and ${BLKSNAP_MODULE}.ko; modprobe ${BLKSNAP_MODULE})`,
  };
  return `for kernel ${release} install and load ${fits.map((f) => how[f]).join(' or ')}; see the README, "Kernel module"`;
}

function loaded(host: ModuleHost, engine: KernelEngineKind): EngineModule | null {
  const dir = path.join(host.sysModuleDir, MODULES[engine]);
  if (!fs.existsSync(dir)) return null;
  let version: string | null = null;
  try {
    version = fs.readFileSync(path.join(dir, 'version'), 'utf8').trim() || null;
  } catch {
    // Built without MODULE_VERSION.
  }
  return { engine, module: MODULES[engine], version };
}

/**
 * The engine to run for `choice`. An explicit engine must have its module loaded (or loadable);
 * "auto" takes the one loaded module, else loads the first that fits the kernel.
 */
export async function selectEngine(choice: KernelEngineKind | 'auto', host: ModuleHost = HOST): Promise<EngineModule> {
  const candidates: KernelEngineKind[] = choice === 'auto' ? ['veeamsnap', 'blksnap'] : [choice];
  const present = candidates.map((engine) => loaded(host, engine)).filter((m): m is EngineModule => m !== null);
  if (present.length > 1) {
    throw unavailable('engine = "auto", but both veeamsnap and veeamblksnap are loaded: both would intercept the same disks. ' +
      'Unload one (rmmod) or set engine = "veeamsnap" or "blksnap"');
  }
  if (present.length === 1) return present[0];
  const fits = modulesForKernel(host.kernelRelease);
  for (const engine of candidates.filter((c) => choice !== 'auto' || fits.includes(c))) {
    if (await host.modprobe(MODULES[engine])) {
      const module = loaded(host, engine);
      if (module !== null) return module;
    }
  }
  const what = choice === 'auto' ? 'no snapshot module is loaded' : `engine = "${choice}", but ${MODULES[choice]} is not loaded`;
  throw unavailable(`${what} and modprobe could not load one: ${hint(host.kernelRelease)}`);
}

/** The other module, when it is loaded too: worth a warning with an explicit engine. */
export function otherModuleLoaded(engine: KernelEngineKind, host: ModuleHost = HOST): string | null {
  const other: KernelEngineKind = engine === 'veeamsnap' ? 'blksnap' : 'veeamsnap';
  return loaded(host, other)?.module ?? null;
}
